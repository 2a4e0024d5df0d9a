"""The ONNX export run by OpenVINO on the CPU: `model.backend = "openvino"`.

It serves the same cached export as the onnx backend (clipgate.backends.onnx makes and finds it;
a cached one loads without torch). Where it pays: `model.dtype = "bfloat16"` on a CPU that
multiplies bfloat16 natively (AVX512-BF16 or AMX), where OpenVINO runs the matrix multiplies in
bfloat16: 1.4-2.4x ONNX Runtime's float32 speed on a 2-core Zen 4, at cosine 0.99995 to float32
(make bench; README). float32 (the default) gives the reference's vectors, at about ONNX Runtime's speed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
from numpy.typing import NDArray

from clipgate.backends import onnx as onnx_backend
from clipgate.canonical import ModelCard
from clipgate.config import ModelConfig
from clipgate.engine import Checkpoint, ModelLoadError, TokenIds, Vectors, warm_up

PRECISIONS = {"auto": "f32", "float32": "f32", "bfloat16": "bf16"}


def check_device(device: str) -> None:
    if device not in ("auto", "cpu"):
        raise ModelLoadError(f"the openvino backend runs on the CPU; device {device} was asked for (use cpu or auto)")


def precision(dtype: str, capabilities: list[str]) -> str:
    """OpenVINO's inference precision for `model.dtype`, given the CPU plugin's capabilities."""
    if dtype not in PRECISIONS:
        raise ModelLoadError(f"the openvino backend runs float32 or bfloat16, not {dtype}")
    if PRECISIONS[dtype] == "bf16" and "BF16" not in capabilities:
        raise ModelLoadError(
            "model.dtype = bfloat16 needs a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX); "
            "this one would emulate it: use float32"
        )
    return PRECISIONS[dtype]


def compile_options(hint: str, threads: int) -> dict[str, Any]:
    """One stream, tuned for latency: the batcher runs one batch at a time. `threads` as the
    engine's thread budget (0: OpenVINO's default, one per core)."""
    options: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if threads > 0:
        options["INFERENCE_NUM_THREADS"] = threads
    return options


def load(checkpoint: Checkpoint, cfg: ModelConfig) -> OpenVinoEncoder:
    check_device(cfg.device)
    core = ov.Core()
    hint = precision(cfg.dtype, list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
    card = checkpoint.card(cfg, device="cpu", dtype="bfloat16" if hint == "bf16" else "float32")
    export = onnx_backend.ensure_export(checkpoint, card.image_size)
    options = compile_options(hint, cfg.torch_threads)
    try:
        text = core.compile_model(str(export.text), "CPU", options)
        vision = core.compile_model(str(export.vision), "CPU", options)
    except RuntimeError as exc:
        raise ModelLoadError(f"OpenVINO cannot compile the ONNX export in {export.folder}: {exc}") from exc
    return OpenVinoEncoder(text, vision, card, export, checkpoint.end_tokens())


class OpenVinoEncoder:
    """Two compiled models, one infer request each. One thread (the batcher's) calls `embed_*`."""

    def __init__(self, text: Any, vision: Any, card: ModelCard, export: onnx_backend.Export, ends: list[int]) -> None:
        self._text, self._vision = text.create_infer_request(), vision.create_infer_request()
        self._card = card
        self.export = export
        self._ends = ends

    @property
    def card(self) -> ModelCard:
        return self._card

    def embed_texts(self, ids: TokenIds, mask: TokenIds) -> Vectors:
        out = self._text.infer({"input_ids": ids, "attention_mask": mask})[0]
        return np.array(out, dtype=np.float32, copy=True)  # the request reuses its output buffer

    def embed_images(self, pixels: NDArray[np.float32]) -> Vectors:
        out = self._vision.infer({"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)})[0]
        return np.array(out, dtype=np.float32, copy=True)

    def warmup(self) -> None:
        warm_up(self, self._card.image_size, self._ends)

    def health(self) -> str | None:
        return None
