"""Every knob of the bot in one pydantic-settings class, read from the environment and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from limits import parse_many
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GOOGLE_BASE_URL = "https://generativelanguage.googleapis.com"
PROVIDER_BASE_URL = "https://www.anyfast.ai"


class SettingsError(Exception):
    """The environment does not describe a runnable bot; the message names each bad variable."""


class Settings(BaseSettings):
    """The bot's configuration. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=False,
    )

    # Gemini
    gemini_api_key: SecretStr
    gemini_base_url: str = PROVIDER_BASE_URL
    gemini_model: str = "gemini-3.1-flash-image"
    gemini_timeout_seconds: float = Field(default=120.0, gt=0, le=900)
    gemini_key_in: Literal["query", "header"] = "query"
    gemini_max_retries: int = Field(default=3, ge=0, le=10)
    gemini_max_retry_wait_seconds: float = Field(default=60.0, ge=0, le=600)

    # Discord
    discord_token: SecretStr | None = None
    dev_guild_id: int | None = None
    discord_api_base_url: str | None = None
    discord_gateway_url: str | None = None

    # Limits
    user_rate_limit: str = "5/minute"
    max_concurrent_jobs: int = Field(default=4, ge=1, le=256)
    max_pending_per_user: int = Field(default=2, ge=1, le=100)

    # Quotas and budgets (UTC days)
    user_daily_quota: int | None = Field(default=25, ge=0)
    guild_daily_budget_usd: float | None = Field(default=None, ge=0)
    price_per_million_image_tokens_usd: float = Field(default=60.0, ge=0)

    # Storage, scale and operations
    data_dir: Path = Path("data")
    redis_url: str | None = None
    shard_count: int | None = Field(default=None, ge=1)
    shard_ids: list[int] | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("gemini_base_url", "discord_api_base_url", "discord_gateway_url")
    @classmethod
    def _is_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        scheme, sep, rest = value.partition("://")
        if not sep or not rest or scheme not in {"http", "https", "ws", "wss"}:
            raise ValueError("must be an http(s) or ws(s) URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _is_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # pydantic-settings tries JSON first: "0,2" stays text, but "5" arrives as the number 5.
        if isinstance(value, int):
            return [value]
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _shards_fit(self) -> Settings:
        if self.shard_ids is not None:
            if self.shard_count is None:
                raise ValueError("SHARD_IDS needs SHARD_COUNT")
            if any(not 0 <= shard < self.shard_count for shard in self.shard_ids):
                raise ValueError("SHARD_IDS must lie in 0..SHARD_COUNT-1")
        return self

    @field_validator("gemini_model")
    @classmethod
    def _is_model_id(cls, value: str) -> str:
        value = value.strip()
        if not value or any(c in value for c in "/?#: "):
            raise ValueError("must be a bare model id such as gemini-3.1-flash-image")
        return value

    @field_validator("user_rate_limit")
    @classmethod
    def _is_limit(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError:
            raise ValueError("must use `limits` notation, e.g. 5/minute;50/day") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Build the settings or raise `SettingsError` naming each bad variable (never its value)."""
    try:
        return Settings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper()
            reason = "is required" if error["type"] == "missing" else error["msg"]
            problems.append(f"{name} {reason.removeprefix('Value error, ')}".strip())
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
