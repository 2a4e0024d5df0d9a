"""Who may import whom: adapters stay free of web and model code; the engine knows no HTTP; torch
stays in clipgate/backends/. Checked on each module's imports and on what they import in turn."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import adapters

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted(p.name for p in (ROOT / "clipgate").glob("*.py"))
ADAPTERS = sorted(p.name for p in (ROOT / "adapters").glob("*.py"))
TENSOR_LIBRARIES = ("torch", "transformers", "onnxruntime", "openvino")


def _module_level(tree: ast.Module) -> list[ast.AST]:
    """The statements that run on import: not function bodies (which import on demand)."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        found.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(path: Path, *, on_import_only: bool = False) -> set[str]:
    """The modules `path` imports anywhere, or with `on_import_only`, those it imports when imported."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in _module_level(tree) if on_import_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_file(name: str) -> Path | None:
    """The file of one of this repo's modules (`clipgate.x`, `adapters.y`), else None."""
    parts = name.split(".")
    if parts[0] not in ("clipgate", "adapters"):
        return None
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


@cache
def reachable(path: Path, *, on_import_only: bool = False) -> frozenset[str]:
    """Every module `path` imports, directly or through this repo's modules it imports."""
    seen: set[str] = set()
    stack = [path]
    visited: set[Path] = set()
    while stack:
        current = stack.pop()
        if current in visited:
            continue
        visited.add(current)
        for name in imported_modules(current, on_import_only=on_import_only):
            seen.add(name)
            found = module_file(name)
            if found is not None:
                stack.append(found)
    return frozenset(seen)


def test_adapters_package_is_this_repos() -> None:
    # `adapters` is also the name of an unrelated PyPI package; a shadowing install would land here.
    assert Path(adapters.__file__).resolve().parent == ROOT / "adapters"


def test_every_core_module_is_checked() -> None:
    # A new module must be placed in the lists below (or they are wrong about it).
    assert set(CORE) == set(NO_HTTP) | set(HTTP)


@pytest.mark.parametrize("module", ADAPTERS)
def test_adapters_import_only_the_contract(module: str) -> None:
    allowed = {"clipgate.adapter", "clipgate.canonical", "clipgate.errors", "adapters"}
    stdlib = ("__future__", "collections", "typing", "re", "dataclasses", "importlib", "functools", "math")
    # Wire encodings (base64 float32 vectors, response ids) and reading a data file that a
    # dependency ships (openai: the cl100k_base table, gzipped, checked by its SHA-256).
    stdlib += ("base64", "uuid", "gzip", "hashlib", "pathlib")
    for name in imported_modules(ROOT / "adapters" / module):
        top = name.split(".")[0]
        if top in ("clipgate", "adapters"):
            assert name in allowed or name.rsplit(".", 1)[0] in allowed, f"{module} imports {name}"
        else:
            assert top in stdlib, f"{module} imports {name}"


# Core modules that know no HTTP and no vendor; the rest (HTTP) are the web layer and the host.
NO_HTTP = [
    "__init__.py",
    "adapter.py",
    "batcher.py",
    "budget.py",
    "canonical.py",
    "config.py",
    "cpu_turns.py",
    "engine.py",
    "errors.py",
    "faults.py",
    "images.py",
    "logs.py",
    "metrics.py",
    "multipart.py",
    "openapi.py",
    "random_checkpoint.py",
    "service.py",
    "state.py",
    "urls.py",
]
HTTP = [
    "admin.py",
    "app.py",
    "cli.py",
    "docs.py",
    "http.py",
    "injection.py",
    "probes.py",
    "ray.py",
    "runtime.py",
    "testing.py",
]
# The optional extras' host: the only module that may import ray (pip install 'clipgate[ray]').
RAY_MODULES = ["ray.py"]


@pytest.mark.parametrize("module", NO_HTTP)
def test_core_modules_know_no_http_nor_vendor(module: str) -> None:
    for name in reachable(ROOT / "clipgate" / module):
        assert not name.startswith(("starlette", "uvicorn", "adapters")), f"{module} reaches {name}"


@pytest.mark.parametrize("module", [*CORE, *(f"../adapters/{m}" for m in ADAPTERS)])
def test_no_tensor_library_outside_the_backends(module: str) -> None:
    # Loading a checkpoint may import one on demand (inside a function); importing a module may not.
    for name in reachable((ROOT / "clipgate" / module).resolve(), on_import_only=True):
        assert not name.startswith(TENSOR_LIBRARIES), f"{module} reaches {name}"
        assert not name.startswith("clipgate.backends"), f"{module} reaches {name} (load backends by name)"


@pytest.mark.parametrize("module", [*CORE, *(f"../adapters/{m}" for m in ADAPTERS)])
def test_ray_stays_in_its_module(module: str) -> None:
    # Plain `clipgate serve` runs without the ray extra: nothing else reaches ray, even on demand.
    if module in RAY_MODULES:
        return
    for name in reachable((ROOT / "clipgate" / module).resolve()):
        assert name.split(".")[0] != "ray" and name != "clipgate.ray", f"{module} reaches {name}"


def test_only_the_app_imports_the_adapter_registry() -> None:
    for module in CORE:
        direct = {n for n in imported_modules(ROOT / "clipgate" / module) if n.split(".")[0] == "adapters"}
        assert module == "app.py" or not direct, f"{module} imports {direct}"


def test_importing_the_app_loads_no_torch() -> None:
    """In a fresh interpreter: the app, every adapter, the HTTP layer and the service, and not torch."""
    code = (
        "import json, sys; import clipgate.app, clipgate.cli, clipgate.runtime; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{(*TENSOR_LIBRARIES, 'ray')!r} or m.startswith(('adapters', 'clipgate')))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert not [m for m in loaded if m.split(".")[0] in (*TENSOR_LIBRARIES, "ray")], loaded
    assert "clipgate.ray" not in loaded
    for needed in (
        "adapters.roboflow",
        "adapters.azureml",
        "adapters.sambastudio",
        "adapters.openai",
        "adapters.cohere",
        "clipgate.http",
        "clipgate.service",
    ):
        assert needed in loaded
