"""Composition root and CLI: `python -m bot` runs the Discord bot, `generate` makes one image."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bot import images
from bot.gemini import (
    ASPECT_RATIOS,
    IMAGE_SIZES,
    GeminiClient,
    GeminiError,
    ImageRequest,
    InputImage,
    InvalidRequest,
    validate_request,
)
from bot.logs import setup_logging
from bot.settings import Settings, SettingsError, load_settings

EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Discord image bot backed by Gemini. With no command, runs the bot.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run the Discord bot (the default)")
    generate = commands.add_parser(
        "generate", help="make one image from the terminal to check the key and settings"
    )
    generate.add_argument("prompt", help="what to draw, or how to change the --image files")
    generate.add_argument(
        "--image",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a reference image (repeatable, up to 14)",
    )
    generate.add_argument("--aspect-ratio", choices=ASPECT_RATIOS, metavar="R")
    generate.add_argument("--size", choices=IMAGE_SIZES, metavar="S")
    generate.add_argument(
        "--output", type=Path, metavar="FILE", help="where to write the image (default: ./)"
    )
    return parser


def _read_reference(path: Path) -> InputImage:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        prepared = images.prepare_input(data)
    except images.ImageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return InputImage(prepared.data, prepared.mime_type)


def _output_paths(output: Path | None, extension: str, count: int) -> list[Path]:
    base = output if output is not None else Path(f"banana-{int(time.time())}")
    if not base.suffix:
        base = base.with_suffix(f".{extension}")
    if count == 1:
        return [base]
    return [base.with_stem(f"{base.stem}-{n}") for n in range(1, count + 1)]


async def _generate(settings: Settings, args: argparse.Namespace) -> int:
    references = tuple(
        await asyncio.gather(*(asyncio.to_thread(_read_reference, p) for p in args.image))
    )
    request = ImageRequest(
        prompt=args.prompt,
        images=references,
        aspect_ratio=args.aspect_ratio,
        image_size=args.size,
    )
    try:
        validate_request(request)
    except InvalidRequest as exc:
        raise UsageError(str(exc)) from None
    async with aiohttp.ClientSession() as session:
        client = GeminiClient.from_settings(session, settings)
        try:
            result = await client.generate(request)
        except GeminiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    for image, path in zip(
        result.images,
        _output_paths(args.output, result.images[0].extension, len(result.images)),
        strict=True,
    ):
        await asyncio.to_thread(images.save_as, image.data, path)
        print(f"wrote {path}")
    if result.caption:
        print(f"caption: {result.caption}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build the settings and run the chosen command."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command in (None, "run") and settings.discord_token is None:
            raise SettingsError("invalid settings: DISCORD_TOKEN is required to run the bot")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    secrets = [settings.gemini_api_key.get_secret_value()]
    if settings.discord_token is not None:
        secrets.append(settings.discord_token.get_secret_value())
    # The CLI's own output is its report; routine log lines would only clutter it.
    quiet = args.command == "generate" and settings.log_level != "DEBUG"
    setup_logging("WARNING" if quiet else settings.log_level, secrets)
    try:
        if args.command == "generate":
            return asyncio.run(_generate(settings, args))
        from bot.app import run_bot

        return run_bot(settings)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
