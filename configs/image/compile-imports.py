"""Run by the image build: load and warm random:tiny as `clipgate serve` does, so that Python
writes bytecode for the modules serving imports and for nothing else (the build installs with
pip --no-compile; the image runs with PYTHONDONTWRITEBYTECODE). Then compile clipgate and adapters whole."""

import compileall
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

SERVING = (
    "clipgate.cli",
    "clipgate.app",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.lifespan.on",
)

cache = tempfile.mkdtemp(prefix="clipgate-compile-")
os.environ["CLIPGATE_CACHE_DIR"] = cache
for name in SERVING:
    importlib.import_module(name)
from clipgate.config import ModelConfig  # noqa: E402
from clipgate.engine import load_model  # noqa: E402

load_model(ModelConfig(id="random:tiny", device="cpu")).encoder.warmup()
shutil.rmtree(cache)
for package in ("clipgate", "adapters"):
    folder = Path(importlib.import_module(package).__file__ or ".").parent
    if not compileall.compile_dir(str(folder), quiet=1):
        sys.exit(f"cannot compile {folder}")
