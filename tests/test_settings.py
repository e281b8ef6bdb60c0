"""Settings: defaults, validation messages that name variables, and secrets kept out of them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.logs import redact
from bot.settings import PROVIDER_BASE_URL, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("GEMINI_", "DISCORD_", "USER_", "MAX_", "LOG_", "DEV_")):
            monkeypatch.delenv(name)


def test_defaults_follow_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    settings = load_settings(env_file=None)
    assert settings.gemini_base_url == PROVIDER_BASE_URL
    assert settings.gemini_model == "gemini-3.1-flash-image"
    assert settings.gemini_key_in == "query"
    assert settings.user_rate_limit == "5/minute"
    assert (settings.max_concurrent_jobs, settings.max_pending_per_user) == (4, 2)


def test_env_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "GEMINI_API_KEY=from-file\nGEMINI_BASE_URL=https://generativelanguage.googleapis.com/\n"
    )
    settings = load_settings(env_file=env)
    assert settings.gemini_api_key.get_secret_value() == "from-file"
    assert settings.gemini_base_url == "https://generativelanguage.googleapis.com"


def test_every_bad_variable_is_named_and_no_value_is_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEMINI_BASE_URL", "not-a-url-secretish")
    monkeypatch.setenv("USER_RATE_LIMIT", "lots")
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "0")
    monkeypatch.setenv("DISCORD_TOKEN", "tok-should-not-appear")
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    for name in ("GEMINI_API_KEY", "GEMINI_BASE_URL", "USER_RATE_LIMIT", "MAX_CONCURRENT_JOBS"):
        assert name in message
    assert "not-a-url-secretish" not in message
    assert "tok-should-not-appear" not in message


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-very-secret")
    monkeypatch.setenv("DISCORD_TOKEN", "discord-very-secret")
    settings = load_settings(env_file=None)
    assert "very-secret" not in repr(settings) + str(settings)


def test_redact_scrubs_known_secrets_and_key_parameters() -> None:
    text = "POST https://x/v1beta/models/m:generateContent?key=AIzaUNKNOWN&alt=json token abc123"
    cleaned = redact(text, ["abc123"])
    assert "AIzaUNKNOWN" not in cleaned and "abc123" not in cleaned
    assert "alt=json" in cleaned


@pytest.mark.parametrize("document", ["README.md", ".env.example"])
def test_every_setting_is_documented(document: str) -> None:
    from bot.settings import Settings

    text = (Path(__file__).resolve().parents[1] / document).read_text()
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in text]
    assert missing == []
