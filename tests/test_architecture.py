"""Dependencies point inward: the core never imports the Discord surface or, where pure, discord."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_under(*parts: str) -> list[Path]:
    base = ROOT.joinpath(*parts)
    return sorted(base.rglob("*.py")) if base.is_dir() else [base]


@pytest.mark.parametrize("path", modules_under("bot"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_imports_cogs(path: Path) -> None:
    assert not {m for m in imported_modules(path) if m.split(".")[0] == "cogs"}


@pytest.mark.parametrize(
    "path",
    [*modules_under("bot", "gemini"), ROOT / "bot" / "images.py", ROOT / "bot" / "download.py"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_api_client_and_image_code_never_import_discord(path: Path) -> None:
    assert not {m for m in imported_modules(path) if m.split(".")[0] == "discord"}


def test_the_api_client_loads_no_image_library() -> None:
    # It streams answers of tens of MB; Pillow and libvips would add their weight to every
    # process that only talks to the API, such as the API-leg benchmark.
    code = "import sys, bot.gemini; print(sorted({'PIL', 'pyvips'} & set(sys.modules)))"
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == "[]"
