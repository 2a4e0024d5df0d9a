"""The ONNX backend (model.backend = "onnx") against the torch backend and the reference pipeline,
on every picture and text the torch suite uses; its export cache; int8; providers; the CLI.

The export is made from random:tiny in the session's cache, once, by the first load."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.backends import onnx as onnx_backend
from clipgate.config import ConfigError, ImagesConfig, ModelConfig
from clipgate.engine import Checkpoint, Model, ModelLoadError, load_model
from clipgate.images import decode_image
from tests import imagegen
from tests.conftest import make_config
from tests.parity import DIM, MAX_TOKENS, TEXTS, VARIANT_PARAMS, VARIANTS, Reference, load_reference, reference_input

ROOT = Path(__file__).resolve().parent.parent

# Against the torch backend (same weights, same inputs): only float32 summation order differs.
TORCH_MIN_COSINE = 0.99999
TORCH_MAX_ABS = 1e-4
# Against the hand-written transformers pipeline (its own preprocessing): as the torch suite's images.
REFERENCE_MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def onnx_model(tiny_dir: Path) -> Model:
    return load_model(ModelConfig(id="random:tiny", backend="onnx", device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def truncating_onnx_model(onnx_model: Model) -> Model:
    return load_model(ModelConfig(id="random:tiny", backend="onnx", device="cpu", truncate_text=True))


@pytest.fixture(scope="module")
def ref(tiny_dir: Path) -> Reference:
    return load_reference(tiny_dir)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_matches_torch(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    assert float(cosines(got, want).min()) >= TORCH_MIN_COSINE
    assert float(np.abs(got - want).max()) <= TORCH_MAX_ABS


def pixels_of(model: Model, data: bytes, **decode: Any) -> np.ndarray:
    return model.preprocessor.preprocess(decode_image(data, ImagesConfig(), **decode))


# --- parity: images ----------------------------------------------------------------------------


def test_the_onnx_model_says_what_it_is(onnx_model: Model, model: Model) -> None:
    assert onnx_model.card.device == "cpu" and onnx_model.card.dtype == "float32"
    assert onnx_model.card == dataclasses.replace(model.card, dtype="float32")


@pytest.mark.parametrize("name", VARIANT_PARAMS)
def test_image_vectors_match_torch_and_reference(onnx_model: Model, model: Model, ref: Reference, name: str) -> None:
    pixels = pixels_of(onnx_model, VARIANTS[name])
    got = onnx_model.embed_images([pixels])
    assert_matches_torch(got, model.embed_images([pixels]))
    assert float(cosines(got, ref.embed_image(reference_input(VARIANTS[name]))[None])[0]) >= REFERENCE_MIN_COSINE


def test_png_16bit_and_animated_gif_match_torch(onnx_model: Model, model: Model) -> None:
    pixels = [pixels_of(onnx_model, imagegen.png_16bit_gray()[0]), pixels_of(onnx_model, imagegen.animated_gif())]
    assert_matches_torch(onnx_model.embed_images(pixels), model.embed_images(pixels))


@pytest.mark.parametrize("size", [(1024, 768), (3000, 2000), (700, 1500)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_reduced_jpeg_decode_matches_torch_and_reference(
    onnx_model: Model, model: Model, ref: Reference, size: tuple[int, int]
) -> None:
    from clipgate.service import REDUCED_DECODE_MARGIN

    data = imagegen.jpeg(seed=11, width=size[0], height=size[1])
    pixels = pixels_of(onnx_model, data, reduce_to=math.ceil(REDUCED_DECODE_MARGIN * onnx_model.card.image_size))
    got = onnx_model.embed_images([pixels])
    assert_matches_torch(got, model.embed_images([pixels]))
    assert float(cosines(got, ref.embed_image(reference_input(data))[None])[0]) >= REFERENCE_MIN_COSINE


def test_an_image_batch_matches_torch_and_each_image_alone(onnx_model: Model, model: Model) -> None:
    pixels = [pixels_of(onnx_model, VARIANTS[n]) for n in ("jpeg", "png-gray", "tiny-1x1", "wide-2000x20")]
    batch = onnx_model.embed_images(pixels)
    assert_matches_torch(batch, model.embed_images(pixels))
    for i, one in enumerate(pixels):
        assert_matches_torch(batch[i : i + 1], onnx_model.embed_images([one]))


# --- parity: texts -----------------------------------------------------------------------------


def test_text_vectors_match_torch_and_reference(onnx_model: Model, model: Model, ref: Reference) -> None:
    rows = onnx_model.preprocessor.tokenize(TEXTS)
    assert rows == model.preprocessor.tokenize(TEXTS)
    got = onnx_model.embed_texts(rows)
    assert got.shape == (len(TEXTS), DIM)
    assert_matches_torch(got, model.embed_texts(rows))
    assert float(cosines(got, ref.embed_texts(TEXTS)).min()) >= REFERENCE_MIN_COSINE
    for i, row in enumerate(rows):  # padded in a batch or alone: the same vector
        assert_matches_torch(got[i : i + 1], onnx_model.embed_texts([row]))


def test_texts_of_77_tokens_and_truncated_ones_match_torch(
    truncating_onnx_model: Model, model: Model, ref: Reference
) -> None:
    long_text = "a very long caption about many things " * 20
    rows = truncating_onnx_model.preprocessor.tokenize([long_text, "short", "word " * (MAX_TOKENS - 2)])
    assert [len(r) for r in rows[::2]] == [MAX_TOKENS, MAX_TOKENS]
    got = truncating_onnx_model.embed_texts(rows)
    assert_matches_torch(got, model.embed_texts(rows))
    want = ref.embed_texts([long_text], truncation=True, max_length=MAX_TOKENS)
    assert float(cosines(got[:1], want)[0]) >= REFERENCE_MIN_COSINE


def test_outputs_are_unnormalized_and_deterministic(onnx_model: Model) -> None:
    rows = onnx_model.preprocessor.tokenize(["a dog", "a cat", ""])
    pixels = [pixels_of(onnx_model, VARIANTS[n]) for n in ("jpeg", "bmp")]
    for out in (onnx_model.embed_texts(rows), onnx_model.embed_images(pixels)):
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        assert np.all(np.abs(np.linalg.norm(out, axis=1) - 1.0) > 0.1)
    assert np.array_equal(onnx_model.embed_texts(rows), onnx_model.embed_texts(rows))
    assert np.array_equal(onnx_model.embed_images(pixels), onnx_model.embed_images(pixels))


def test_the_app_serves_the_onnx_backend(onnx_model: Model) -> None:
    config = make_config(model={"backend": "onnx"})
    with TestClient(create_app(config, onnx_model)) as client:
        answer = client.post("/clip/embed_text", json={"text": "a photo of a cat"})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["embeddings"][0]) == DIM
        metrics = client.get("/metrics").text
    assert 'backend="onnx"' in metrics and 'dtype="float32"' in metrics


# --- the cache ---------------------------------------------------------------------------------


def test_a_cached_export_loads_without_torch(onnx_model: Model, cache_dir: Path) -> None:
    """In a fresh interpreter, with the export made: no torch, no transformers, the same vectors."""
    code = (
        "import json, sys; from clipgate.config import ModelConfig; from clipgate.engine import load_model; "
        "m = load_model(ModelConfig(id='random:tiny', backend='onnx', device='cpu')); "
        "v = m.embed_texts(m.preprocessor.tokenize(['a photo of a cat'])); "
        "print(json.dumps({'loaded': sorted(n for n in sys.modules if n.split('.')[0] in "
        "('torch', 'transformers', 'onnx')), 'vector': v[0].tolist()}))"
    )
    env = {**os.environ, "CLIPGATE_CACHE_DIR": str(cache_dir)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["loaded"] == []
    want = onnx_model.embed_texts(onnx_model.preprocessor.tokenize(["a photo of a cat"]))
    np.testing.assert_allclose(np.array([out["vector"]], dtype=np.float32), want, rtol=0, atol=1e-6)


def test_a_second_load_uses_the_cache(onnx_model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_backend, "_make", no_export)
    again = load_model(ModelConfig(id="random:tiny", backend="onnx", device="cpu"))
    assert again.encoder.export == onnx_model.encoder.export  # type: ignore[attr-defined]


def test_the_export_is_kept_in_the_checkpoint_folder(onnx_model: Model, tiny_dir: Path) -> None:
    export = onnx_model.encoder.export  # type: ignore[attr-defined]
    assert export.folder == tiny_dir / "onnx" / onnx_backend.export_key(tiny_dir)
    info = export.info()
    assert info["opset"] == onnx_backend.OPSET and info["torch"] and info["transformers"] and info["onnx"]
    assert not [p for p in export.folder.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_the_key_follows_the_config_and_the_weights(tiny_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(tiny_dir / name, copy / name)  # with the modification times
    key = onnx_backend.export_key(copy)
    assert key == onnx_backend.export_key(tiny_dir)
    os.utime(copy / "model.safetensors", ns=(0, 10**18))  # rewritten in place
    touched = onnx_backend.export_key(copy)
    assert touched != key
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "projection_dim": 256}))
    assert onnx_backend.export_key(copy) not in (key, touched)
    (copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        onnx_backend.export_key(copy)


def test_an_unwritable_checkpoint_folder_exports_to_the_cache_folder(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        shutil.copy2(tiny_dir / name, copy / name)
    (copy / "onnx").write_text("not a folder")  # as unwritable as it gets for root
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIPGATE_CACHE_DIR", str(cache))
    made: list[Path] = []

    def fake_export(checkpoint: Checkpoint, staging: Path, image_size: int) -> dict[str, object]:
        made.append(staging)
        for name in ("text.onnx", "vision.onnx"):
            (staging / name).write_bytes(b"graph")
        return {}

    monkeypatch.setattr(onnx_backend, "_export", fake_export)
    checkpoint = Checkpoint.read(copy, "ckpt")
    export = onnx_backend.ensure_export(checkpoint, 224)
    assert export.folder == cache / "onnx" / onnx_backend.export_key(copy) and export.complete()
    assert onnx_backend.find_export(copy) == export
    assert onnx_backend.ensure_export(checkpoint, 224) == export and len(made) == 1


# --- int8 --------------------------------------------------------------------------------------


def test_int8_is_measured_and_served_near_float32(onnx_model: Model) -> None:
    int8 = load_model(ModelConfig(id="random:tiny", backend="onnx", device="cpu", quantize="int8"))
    assert int8.card.dtype == "int8"
    parity = int8.encoder.export.info()["parity"]  # type: ignore[attr-defined]
    assert set(parity) == {"text_min_cosine", "vision_min_cosine"}
    assert min(parity.values()) >= ModelConfig().int8_min_cosine
    rows = onnx_model.preprocessor.tokenize(TEXTS)
    pixels = [pixels_of(onnx_model, VARIANTS[n]) for n in ("jpeg", "png-rgb", "webp-lossy")]
    for got, want in ((int8.embed_texts(rows), onnx_model.embed_texts(rows)), (int8.embed_images(pixels), None)):
        want = onnx_model.embed_images(pixels) if want is None else want
        assert got.dtype == np.float32 and got.shape == want.shape
        assert float(cosines(got, want).min()) >= 0.98
        assert not np.array_equal(got, want)  # really quantized


def test_int8_below_its_floor_is_refused(onnx_model: Model) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelConfig(id="random:tiny", backend="onnx", device="cpu", quantize="int8", int8_min_cosine=1.0))
    message = str(caught.value)
    assert "int8_min_cosine = 1.0" in message and "text_min_cosine" in message and 'quantize = "none"' in message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"quantize": "int4"}, "model.quantize must be one of none, int8", id="unknown"),
        pytest.param({"quantize": "int8"}, 'applies to model.backend = "onnx" only', id="torch-backend"),
        pytest.param({"backend": "onnx", "int8_min_cosine": 1.5}, "model.int8_min_cosine", id="floor"),
        pytest.param({"backend": "tensorrt"}, "model.backend must be one of torch, onnx, openvino", id="backend"),
    ],
)
def test_model_settings_are_checked(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_a_backend_whose_extra_is_not_installed_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipgate import engine

    monkeypatch.setitem(engine.BACKENDS, "onnx", "clipgate.backends.not_installed")
    with pytest.raises(ModelLoadError, match=r"pip install 'clipgate\[onnx\]'"):
        engine.backend(ModelConfig(backend="onnx"))


def test_the_onnx_backend_runs_float32_only(tiny_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="runs float32"):
        load_model(ModelConfig(id="random:tiny", backend="onnx", device="cpu", dtype="bfloat16"))


# --- providers (no GPU here: the choice is tested, CUDA itself is not) -------------------------

CPU, CUDA = onnx_backend.CPU, onnx_backend.CUDA


@pytest.mark.parametrize(
    ("device", "available", "providers", "name"),
    [
        pytest.param("auto", [CPU], [CPU], "cpu", id="auto-cpu"),
        pytest.param("auto", [CUDA, CPU], [(CUDA, {"device_id": 0}), CPU], "cuda", id="auto-cuda"),
        pytest.param("cpu", [CUDA, CPU], [CPU], "cpu", id="cpu-on-gpu-build"),
        pytest.param("cuda", [CUDA, CPU], [(CUDA, {"device_id": 0}), CPU], "cuda", id="cuda"),
        pytest.param("cuda:1", [CUDA, CPU], [(CUDA, {"device_id": 1}), CPU], "cuda:1", id="cuda-1"),
    ],
)
def test_providers_follow_the_device(device: str, available: list[str], providers: list[Any], name: str) -> None:
    assert onnx_backend.pick_providers(device, available) == (providers, name)


def test_cuda_without_the_cuda_provider_says_what_to_install() -> None:
    with pytest.raises(ModelLoadError, match="onnxruntime-gpu"):
        onnx_backend.pick_providers("cuda:0", [CPU])


def test_session_options_keep_the_thread_budget() -> None:
    options = onnx_backend.session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --- clipgate export ---------------------------------------------------------------------------


def test_clipgate_export_prints_where_the_export_is(onnx_model: Model, cache_dir: Path) -> None:
    env = {**os.environ, "CLIPGATE_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "clipgate.cli", "export", "--model", "random:tiny", "--quantize", "int8"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    folder = str(onnx_model.encoder.export.folder)  # type: ignore[attr-defined]
    assert lines[0] == f"random:tiny: ONNX export (float32) in {folder}"
    assert lines[1].startswith(f"random:tiny: ONNX export (int8) in {folder}/int8-") and "text_min_cosine" in lines[1]
