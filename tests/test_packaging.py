"""What a non-editable install (pip install ., the container images) ships: every package folder."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_for_setuptools() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("clipgate", "adapters")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert folders <= listed, f"not installed by pip install .: {sorted(folders - listed)}"
