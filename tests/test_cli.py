"""The operator CLI, run as a real process against the loopback fake Gemini."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from tests.fakes.gemini import FakeGemini, fake_png, finish_refusal, google_error, prompt_blocked

KEY = "AIzaSy-cli-secret-key-0123456789"


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def cli_env(base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "DISCORD_"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.update(
        GEMINI_API_KEY=KEY,
        GEMINI_BASE_URL=base_url,
        GEMINI_MAX_RETRIES="0",
        **extra,
    )
    return env


@pytest.fixture
async def gemini() -> AsyncIterator[FakeGemini]:
    async with FakeGemini(api_key=KEY) as fake:
        yield fake


async def test_generate_writes_the_image_and_prints_the_caption(
    gemini: FakeGemini, tmp_path: Path
) -> None:
    code, out, err = await run_cli(
        "generate", "a red fox", "--size", "2K", "--aspect-ratio", "16:9",
        "--output", "fox.png", env=cli_env(gemini.base_url), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert "wrote fox.png" in out
    assert "caption:" in out
    with Image.open(tmp_path / "fox.png") as image:
        assert image.format == "PNG"
        assert max(image.size) == 2048
    sent = gemini.requests[-1].json["generationConfig"]["imageConfig"]
    assert sent == {"aspectRatio": "16:9", "imageSize": "2K"}


async def test_generate_with_reference_sends_it_and_converts_to_the_asked_format(
    gemini: FakeGemini, tmp_path: Path
) -> None:
    (tmp_path / "ref.png").write_bytes(fake_png(64, 48))
    code, _, err = await run_cli(
        "generate", "make it blue", "--image", "ref.png", "--output", "out.jpg",
        env=cli_env(gemini.base_url, GEMINI_KEY_IN="header"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    with Image.open(tmp_path / "out.jpg") as image:
        assert image.format == "JPEG"
    parts = gemini.requests[-1].json["contents"][0]["parts"]
    assert any("inline_data" in p or "inlineData" in p for p in parts)
    assert "key" not in gemini.requests[-1].query


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (prompt_blocked("SAFETY"), "SAFETY"),
        (finish_refusal("IMAGE_SAFETY", "unsafe content"), "IMAGE_SAFETY"),
        (google_error(503, "UNAVAILABLE", "overloaded"), "503"),
    ],
)
async def test_api_and_content_failures_exit_1_with_one_line(
    gemini: FakeGemini, tmp_path: Path, reply: object, expected: str
) -> None:
    gemini.enqueue(reply)  # type: ignore[arg-type]
    code, out, err = await run_cli("generate", "x", env=cli_env(gemini.base_url), cwd=tmp_path)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert "Traceback" not in err
    assert KEY not in out + err


async def test_a_wrong_key_exits_1_without_echoing_it(tmp_path: Path) -> None:
    async with FakeGemini(api_key="the-right-key") as fake:
        code, out, err = await run_cli("generate", "x", env=cli_env(fake.base_url), cwd=tmp_path)
    assert code == 1
    assert KEY not in out + err
    assert "Traceback" not in err


async def test_missing_key_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = cli_env("http://127.0.0.1:9")
    del env["GEMINI_API_KEY"]
    code, _, err = await run_cli("generate", "x", env=env, cwd=tmp_path)
    assert code == 2
    assert "GEMINI_API_KEY" in err and "Traceback" not in err


async def test_bad_settings_are_all_named(tmp_path: Path) -> None:
    env = cli_env("ftp://nowhere", GEMINI_TIMEOUT_SECONDS="-1")
    code, _, err = await run_cli("generate", "x", env=env, cwd=tmp_path)
    assert code == 2
    assert "GEMINI_BASE_URL" in err and "GEMINI_TIMEOUT_SECONDS" in err


async def test_running_the_bot_without_a_token_exits_2(tmp_path: Path) -> None:
    code, _, err = await run_cli(env=cli_env("http://127.0.0.1:9"), cwd=tmp_path)
    assert code == 2
    assert "DISCORD_TOKEN" in err


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "x", "--size", "1k"],
        ["generate", "x", "--aspect-ratio", "7:3"],
        ["generate", "x", "--image", "missing.png"],
        ["generate", "x", "--image", "notes.txt"],
        ["generate", "   "],
    ],
)
async def test_usage_errors_exit_2_without_an_api_call(
    gemini: FakeGemini, tmp_path: Path, args: list[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    code, _, err = await run_cli(*args, env=cli_env(gemini.base_url), cwd=tmp_path)
    assert code == 2, err
    assert "Traceback" not in err
    assert gemini.requests == []
