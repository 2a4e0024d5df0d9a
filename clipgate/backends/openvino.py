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
from clipgate.engine import Checkpoint, ModelLoadError, Vectors

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


class OpenVinoEncoder(onnx_backend.OnnxEncoder):
    """Two compiled models, one infer request each. One thread (the batcher's) calls `embed_*`."""

    def __init__(self, text: Any, vision: Any, card: ModelCard, export: onnx_backend.Export, ends: list[int]) -> None:
        super().__init__(text.create_infer_request(), vision.create_infer_request(), card, export, ends)

    def _run(self, graph: Any, inputs: dict[str, NDArray[Any]]) -> Vectors:
        return np.array(graph.infer(inputs)[0], dtype=np.float32, copy=True)  # the request reuses its output buffer
