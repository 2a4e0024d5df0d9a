"""The OpenVINO backend (model.backend = "openvino"): float32 against the torch backend as tightly
as the onnx backend, bfloat16 (where the CPU has it) as near float32 as torch's bfloat16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipgate.backends import openvino as ov_backend
from clipgate.config import ImagesConfig, ModelConfig
from clipgate.engine import Model, ModelLoadError, load_model
from clipgate.images import decode_image
from tests.parity import TEXTS, VARIANTS

NAMES = ["jpeg", "png-rgba", "gif-animated", "wide-2000x20", "exif-rotated"]


@pytest.fixture(scope="module")
def ov_model(tiny_dir: Path) -> Model:
    return load_model(ModelConfig(id="random:tiny", backend="openvino", device="cpu"))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def inputs(model: Model) -> tuple[list[np.ndarray], list[list[int]]]:
    pixels = [model.preprocessor.preprocess(decode_image(VARIANTS[n], ImagesConfig())) for n in NAMES]
    return pixels, model.preprocessor.tokenize(TEXTS)


def test_float32_matches_the_torch_backend(ov_model: Model, model: Model) -> None:
    assert (ov_model.card.device, ov_model.card.dtype) == ("cpu", "float32")
    pixels, rows = inputs(model)
    for got, want in ((ov_model.embed_images(pixels), model.embed_images(pixels)), (ov_model.embed_texts(rows), None)):
        want = model.embed_texts(rows) if want is None else want
        assert got.dtype == np.float32 and got.shape == want.shape
        assert float(cosines(got, want).min()) >= 0.99999
        assert float(np.abs(got - want).max()) <= 1e-4
    first = ov_model.embed_texts(rows[:1])
    ov_model.embed_texts(rows[1:])  # a later call does not overwrite an earlier answer
    assert np.array_equal(first, ov_model.embed_texts(rows[:1]))


def test_bfloat16_stays_near_float32(ov_model: Model, model: Model) -> None:
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(ModelLoadError, match="natively"):
            load_model(ModelConfig(id="random:tiny", backend="openvino", device="cpu", dtype="bfloat16"))
        return
    low = load_model(ModelConfig(id="random:tiny", backend="openvino", device="cpu", dtype="bfloat16"))
    assert low.card.dtype == "bfloat16"
    pixels, rows = inputs(model)
    for got, want in ((low.embed_images(pixels), model.embed_images(pixels)), (low.embed_texts(rows), None)):
        want = model.embed_texts(rows) if want is None else want
        assert got.dtype == np.float32
        assert float(cosines(got, want).min()) >= 0.999  # torch's bfloat16 floor (tests/test_engine.py)


@pytest.mark.parametrize(
    ("dtype", "capabilities", "hint"),
    [("auto", ["FP32", "BF16"], "f32"), ("float32", ["FP32"], "f32"), ("bfloat16", ["FP32", "BF16"], "bf16")],
)
def test_precision_follows_the_dtype(dtype: str, capabilities: list[str], hint: str) -> None:
    assert ov_backend.precision(dtype, capabilities) == hint


def test_emulated_bfloat16_and_float16_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="natively"):
        ov_backend.precision("bfloat16", ["FP32", "INT8"])
    with pytest.raises(ModelLoadError, match="float32 or bfloat16"):
        ov_backend.precision("float16", ["FP32", "FP16"])


def test_the_openvino_backend_is_cpu_only() -> None:
    ov_backend.check_device("cpu")
    ov_backend.check_device("auto")
    with pytest.raises(ModelLoadError, match="runs on the CPU"):
        ov_backend.check_device("cuda:0")


def test_thread_budget() -> None:
    assert ov_backend.compile_options("f32", 0) == {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    assert ov_backend.compile_options("bf16", 2)["INFERENCE_NUM_THREADS"] == 2
