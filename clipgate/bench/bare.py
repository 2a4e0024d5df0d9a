"""The bare model: what `CLIPModel` alone does on this machine, with no server around it.

This is the ceiling the gateway is measured against: images and texts per second at each
batch size (the best one is the target), plus the cost of decoding one image.
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from clipgate.config import ImagesConfig
from clipgate.engine import load_tokenizer
from clipgate.images import ImageTransform, decode_base64, decode_image

Array = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Point:
    batch: int
    seconds_per_batch: float

    @property
    def per_s(self) -> float:
        return self.batch / self.seconds_per_batch


def timed(fn: Callable[[], object], *, min_s: float, min_reps: int = 2) -> float:
    """Seconds per call of `fn`: one untimed call, then at least `min_reps` calls and `min_s` seconds;
    the median of the timed calls (robust against a noisy neighbour)."""
    fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - started < min_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def image_points(vectors: Callable[[Array], Array], batches: Sequence[int], *, min_s: float) -> list[Point]:
    """Seconds per batch of random pixels through `vectors`, at each batch size."""
    rng = np.random.default_rng(0)
    points = []
    for b in batches:
        pixels = rng.standard_normal((b, 3, 224, 224), dtype=np.float32)
        points.append(Point(b, timed(functools.partial(vectors, pixels), min_s=min_s)))
    return points


class BareModel:
    def __init__(self, model_dir: Path, *, dtype: torch.dtype, device: str) -> None:
        from transformers import CLIPModel

        model: Any = CLIPModel.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
        self.model: Any = model.to(device).eval()
        self.device, self.dtype = device, dtype
        self.tokenizer, self.pad_id = load_tokenizer(model_dir)
        self.tokenizer.no_padding()

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.inference_mode()
    def image_vectors(self, pixels: Array) -> Array:
        x = torch.from_numpy(pixels).to(self.device, self.dtype)
        out = self.model.get_image_features(pixel_values=x).pooler_output
        self._sync()
        return np.asarray(out.float().cpu().numpy())

    def images(self, batches: Sequence[int], *, min_s: float) -> list[Point]:
        return image_points(self.image_vectors, batches, min_s=min_s)

    @torch.inference_mode()
    def text_vectors(self, ids: torch.Tensor) -> Array:
        out = self.model.get_text_features(input_ids=ids.to(self.device)).pooler_output
        self._sync()
        return np.asarray(out.float().cpu().numpy())

    def texts(self, texts: Sequence[str], batches: Sequence[int], *, min_s: float) -> list[Point]:
        """Each batch holds copies of `texts`, padded to the longest, as a batching server would run them."""
        rows = [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]
        points = []
        for b in batches:
            chosen = [rows[i % len(rows)] for i in range(b)]
            width = max(len(r) for r in chosen)
            ids = torch.full((b, width), self.pad_id, dtype=torch.long)
            for i, r in enumerate(chosen):
                ids[i, : len(r)] = torch.as_tensor(r)
            points.append(Point(b, timed(functools.partial(self.text_vectors, ids), min_s=min_s)))
        return points


class OnnxBare:
    """The ONNX export of the same checkpoint in ONNX Runtime, with the onnx backend's session
    options, measured like `BareModel`: the ceiling of `model.backend = "onnx"`."""

    def __init__(self, model_dir: Path, export: Any) -> None:
        import onnxruntime as ort

        from clipgate.backends import onnx as onnx_backend

        options = onnx_backend.session_options(0)
        self.text = ort.InferenceSession(str(export.text), options, providers=[onnx_backend.CPU])
        self.vision = ort.InferenceSession(str(export.vision), options, providers=[onnx_backend.CPU])
        self.tokenizer, self.pad_id = load_tokenizer(model_dir)
        self.tokenizer.no_padding()

    def image_vectors(self, pixels: Array) -> Array:
        return np.asarray(self.vision.run(None, {"pixel_values": pixels})[0])

    def images(self, batches: Sequence[int], *, min_s: float) -> list[Point]:
        return image_points(self.image_vectors, batches, min_s=min_s)

    def text_vectors(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> Array:
        return np.asarray(self.text.run(None, {"input_ids": ids, "attention_mask": mask})[0])

    def token_batch(self, texts: Sequence[str], b: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """`b` rows of copies of `texts`, padded to the longest, and the mask."""
        rows = [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]
        chosen = [rows[i % len(rows)] for i in range(b)]
        width = max(len(r) for r in chosen)
        ids = np.full((b, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        for i, r in enumerate(chosen):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        return ids, mask

    def texts(self, texts: Sequence[str], batches: Sequence[int], *, min_s: float) -> list[Point]:
        """As `BareModel.texts`, with the attention mask the onnx backend is always given."""
        return [
            Point(b, timed(functools.partial(self.text_vectors, *self.token_batch(texts, b)), min_s=min_s))
            for b in batches
        ]


class OpenVinoBare(OnnxBare):
    """The same export compiled by OpenVINO for the CPU at `hint` precision (f32 or bf16), with
    the openvino backend's options."""

    def __init__(self, model_dir: Path, export: Any, hint: str) -> None:
        import openvino as ov

        from clipgate.backends import openvino as ov_backend

        core = ov.Core()
        options = ov_backend.compile_options(hint, 0)
        self.text = core.compile_model(str(export.text), "CPU", options).create_infer_request()
        self.vision = core.compile_model(str(export.vision), "CPU", options).create_infer_request()
        self.tokenizer, self.pad_id = load_tokenizer(model_dir)
        self.tokenizer.no_padding()

    def image_vectors(self, pixels: Array) -> Array:
        return np.array(self.vision.infer({"pixel_values": pixels})[0], copy=True)

    def text_vectors(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> Array:
        return np.array(self.text.infer({"input_ids": ids, "attention_mask": mask})[0], copy=True)


def best(points: Sequence[Point]) -> Point:
    return max(points, key=lambda p: p.per_s)


def decode_seconds(jpegs: Sequence[bytes], transform: ImageTransform, *, reduce_to: int | None) -> float:
    """Median seconds to turn one base64 JPEG into model input, as the gateway does."""
    encoded = [base64.b64encode(j).decode() for j in jpegs]
    limits = ImagesConfig()

    def one_pass() -> None:
        for e in encoded:
            transform(decode_image(decode_base64(e), limits, reduce_to=reduce_to))

    return timed(one_pass, min_s=0.5, min_reps=3) / len(encoded)


def reference_pixels(model_dir: Path, jpegs: Sequence[bytes]) -> Array:
    """`pixel_values` from transformers' own CLIP image processor (the reference pipeline)."""
    import io

    from PIL import Image
    from transformers import CLIPImageProcessorPil

    processor: Any = CLIPImageProcessorPil.from_pretrained(model_dir)
    images = [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs]
    return np.asarray(processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)


def reference_decode_seconds(model_dir: Path, jpegs: Sequence[bytes]) -> float:
    """Median seconds per image for the reference: Pillow decode + `CLIPImageProcessor`."""
    import io

    from PIL import Image
    from transformers import CLIPImageProcessorPil

    processor: Any = CLIPImageProcessorPil.from_pretrained(model_dir)

    def one_pass() -> None:
        for j in jpegs:
            processor(images=Image.open(io.BytesIO(j)).convert("RGB"), return_tensors="np")

    return timed(one_pass, min_s=0.5, min_reps=3) / len(jpegs)


def cosines(a: Array, b: Array) -> Array:
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
