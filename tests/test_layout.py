"""Who may import whom: adapters stay free of web and model code; the engine knows no HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import adapters

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_adapters_package_is_this_repos() -> None:
    # `adapters` is also the name of an unrelated PyPI package; a shadowing install would land here.
    assert Path(adapters.__file__).resolve().parent == ROOT / "adapters"


@pytest.mark.parametrize("module", sorted((ROOT / "adapters").glob("*.py")), ids=lambda p: p.name)
def test_adapters_import_only_the_contract(module: Path) -> None:
    allowed = {"clipgate.adapter", "clipgate.canonical", "clipgate.errors", "adapters"}
    for name in imported_modules(module):
        top = name.split(".")[0]
        if top in ("clipgate", "adapters"):
            assert name in allowed, f"{module.name} imports {name}"
        else:
            assert top in ("__future__", "collections", "typing", "re", "dataclasses"), f"{module.name} imports {name}"


@pytest.mark.parametrize("module", ["engine.py", "batcher.py", "images.py", "service.py", "emulator.py"])
def test_core_modules_know_no_http(module: str) -> None:
    for name in imported_modules(ROOT / "clipgate" / module):
        assert not name.startswith(("starlette", "uvicorn", "adapters")), f"{module} imports {name}"


@pytest.mark.parametrize(
    "module",
    ["canonical.py", "errors.py", "adapter.py", "http.py", "images.py", "service.py", "batcher.py", "config.py"],
)
def test_torch_stays_in_the_engine(module: str) -> None:
    for name in imported_modules(ROOT / "clipgate" / module):
        assert not name.startswith(("torch", "transformers")), f"{module} imports {name}"
