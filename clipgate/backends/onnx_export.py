"""Export a checkpoint's two CLIP towers to ONNX with torch: what `model.backend = "onnx"` runs.

Imported only to make an export (`clipgate export`, or the first load of a checkpoint with no
cached export): serving a cached export never imports this module, nor torch.

Each tower is the Hugging Face `CLIPModel` method the torch backend calls, wrapped so that the
graph's one output is the projected `pooler_output`: the text tower takes `input_ids` and
`attention_mask` (int64, dynamic batch and sequence axes), the image tower `pixel_values`
(float32, dynamic batch axis). The exporter is torch's TorchScript one (`dynamo=False`), which
needs only the `onnx` package; the torch.export-based one also works on this model but needs
onnxscript and takes ~4x longer. The trace is checked against torch on inputs of another shape
before the export is kept, so a shape or a padding pattern baked into the graph is caught here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.jit._trace import TracerWarning

OPSET = 17
TEXT_INPUTS = ("input_ids", "attention_mask")
IMAGE_INPUT = "pixel_values"
MAX_ABS_DIFF = 1e-4  # the exported graph against torch, on the check inputs


class ExportError(RuntimeError):
    """The export failed or does not reproduce torch; the message says which tower and by how much."""


class _TextTower(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out.pooler_output if hasattr(out, "pooler_output") else out  # type: ignore[no-any-return]


class _ImageTower(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixel_values)
        return out.pooler_output if hasattr(out, "pooler_output") else out  # type: ignore[no-any-return]


def _token_rows(config: Any, lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask like the engine's collate: start token, words, end token, padded with the end token."""
    text = config.text_config
    ends = [t[0] if isinstance(t, list) else t for t in (text.bos_token_id, text.eos_token_id)]
    bos, eos = (t if isinstance(t, int) else 0 for t in ends)
    vocab = int(text.vocab_size)
    ids = torch.full((len(lengths), width), eos, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    words = torch.arange(1, width * len(lengths) + 1).reshape(len(lengths), width) * 97 % (vocab - 2)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, 1 : n - 1], ids[i, n - 1] = bos, words[i, : n - 2], eos
        mask[i, :n] = 1
    return ids, mask


def export(checkpoint: Path, out: Path, *, image_size: int) -> None:
    """Write `text.onnx` and `vision.onnx` for the checkpoint folder into `out` (which exists).
    Raises ExportError if an exported tower differs from torch by more than MAX_ABS_DIFF."""
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model: Any = CLIPModel.from_pretrained(checkpoint, dtype=torch.float32, use_safetensors=True)
    model.eval()
    text, image = _TextTower(model).eval(), _ImageTower(model).eval()
    ids, mask = _token_rows(model.config, [4, 2], 4)  # one row padded, so the mask path is traced
    pixels = torch.zeros((2, 3, image_size, image_size))
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated in favour of the torch.export one (see above); its
        # TracerWarnings here are shape checks (image size, at most 77 positions, SDPA's is_causal
        # with a mask given), each as true for any input as for the traced one; the advanced
        # indexing warning is the pooling's gather at non-negative positions.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        torch.onnx.export(
            text,
            (ids, mask),
            str(out / "text.onnx"),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(TEXT_INPUTS),
            output_names=["text_embeds"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
            | {"text_embeds": {0: "batch"}},
        )
        torch.onnx.export(
            image,
            (pixels,),
            str(out / "vision.onnx"),
            dynamo=False,
            opset_version=OPSET,
            input_names=[IMAGE_INPUT],
            output_names=["image_embeds"],
            dynamic_axes={IMAGE_INPUT: {0: "batch"}, "image_embeds": {0: "batch"}},
        )
        _check(out, text, image, model.config, image_size)


def _check(out: Path, text: _TextTower, image: _ImageTower, config: Any, image_size: int) -> None:
    """The exported graphs against torch on inputs of other shapes than the traced ones."""
    import onnxruntime as ort

    ids, mask = _token_rows(config, [7, 2, 5], 9)
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 3, image_size, image_size), np.float32))
    cases = [
        ("text", {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, text(ids, mask)),
        ("vision", {IMAGE_INPUT: pixels.numpy()}, image(pixels)),
    ]
    for name, feed, want in cases:
        session = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, feed)[0]
        diff = float(np.abs(got - want.numpy()).max())
        if not diff <= MAX_ABS_DIFF:
            raise ExportError(f"the exported {name} tower differs from torch by {diff:.2e} (> {MAX_ABS_DIFF})")
