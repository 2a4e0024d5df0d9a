"""The README's "Adding a protocol" example, taken from the README as written, installed the way it
says (one module in adapters/, one line in the registry) in a copy of the adapters package, and
driven on a live server: served with its key, refused without, its error shape on a bad body."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import requests

from clipgate.bench.servers import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1]
    return section.split("\n## ", 1)[0]


def python_blocks(section: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def install_example(into: Path) -> None:
    """What the README says to do, done in a copy of the package at `into`/adapters."""
    module, registry_line = python_blocks(readme_section("Adding a protocol"))
    package = into / "adapters"
    shutil.copytree(ROOT / "adapters", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "toy.py").write_text(module)
    init = (package / "__init__.py").read_text()
    head, tail = init.split("PROTOCOLS = (\n", 1)
    entries, rest = tail.split("\n)", 1)
    (package / "__init__.py").write_text(f"{head}PROTOCOLS = (\n{entries}\n{registry_line.rstrip()}\n){rest}")


def test_the_readme_example_protocol_works_as_written(cache_dir: Path, tiny_dir: Path, tmp_path: Path) -> None:
    install_example(tmp_path)
    port = free_port()
    # The console script `make serve` runs; unlike `python -m`, it does not put the working folder
    # (this repo) first on sys.path, so PYTHONPATH's copy of `adapters` is the one imported.
    clipgate = str(Path(sys.executable).parent / "clipgate")
    argv = [clipgate, "serve", "--model", "random:tiny", "--port", str(port)]
    env = {"CLIPGATE_TOY_KEYS": "secret", "CLIPGATE_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(tmp_path)}
    with ServerProcess("toy", argv, port, tmp_path / "server.log", env=env):
        url = f"http://127.0.0.1:{port}/toy/embed"
        served = requests.post(url, json={"text": "a cat"}, headers={"x-toy-token": "secret"}, timeout=30)
        assert served.status_code == 200, served.text
        assert len(served.json()["vector"]) == 512
        refused = requests.post(url, json={"text": "a cat"}, timeout=30)
        assert refused.status_code == 401
        assert refused.json() == {"toy_error": {"code": 401, "reason": "A credential is required."}}
        wrong = requests.post(url, json={"text": "a cat"}, headers={"x-toy-token": "guess"}, timeout=30)
        assert wrong.status_code == 401 and wrong.json()["toy_error"]["reason"] == "The credential is not valid."
        bad = requests.post(url, json={"txt": "a cat"}, headers={"x-toy-token": "secret"}, timeout=30)
        assert bad.status_code == 400
        assert bad.json() == {"toy_error": {"code": 400, "reason": 'The body must be {"text": "..."}.'}}
        # The other protocols are still there, and a path under none of them is a neutral 404.
        other = requests.post(f"http://127.0.0.1:{port}/clip/embed_text", json={"text": "a cat"}, timeout=30)
        assert other.status_code == 200
