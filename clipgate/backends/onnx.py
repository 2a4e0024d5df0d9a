"""The same CLIP towers exported to ONNX and run by ONNX Runtime: `model.backend = "onnx"`.

The export (clipgate.backends.onnx_export, with torch) runs once per checkpoint and is cached:
in the checkpoint folder (`<checkpoint>/onnx/<key>/`) when it is writable, else in clipgate's
cache folder (`<cache>/onnx/<key>/`); both are looked in. The key is a hash of what the graph
is made from: the checkpoint's config.json, the names, sizes, modification times and headers
of its safetensors files, and the versions of torch, transformers and onnx, the opset and this
module's export format. Loading a cached export imports neither torch nor transformers.

`model.quantize = "int8"` serves a dynamically quantized copy of that export (int8 weights of
every matrix multiply by a constant, activations quantized per batch; CPU only). Its parity to
float32 is measured once, when the copy is made, on a fixed probe set of pictures and captions,
and stored beside it; a load whose measured parity is below `model.int8_min_cosine` is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from clipgate import random_checkpoint
from clipgate.canonical import ModelCard
from clipgate.config import ModelConfig
from clipgate.engine import Checkpoint, ModelLoadError, Preprocessor, TokenIds, Vectors, load_tokenizer, warm_up
from clipgate.images import ImageTransform

log = logging.getLogger("clipgate.engine")

EXPORT_FORMAT = 1  # bump when clipgate.backends.onnx_export makes a different graph
OPSET = 17  # clipgate.backends.onnx_export.OPSET, named here so that a lookup needs no torch
INT8_FORMAT = 1  # bump when the quantization settings below change
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_CUDA_DEVICE = re.compile(r"cuda(?::([0-9]+))?")
PROBE_TEXTS = (
    "a photo of a cat",
    "a dog running on the beach",
    "a red car parked on a street",
    "two people riding bicycles in the rain",
    "a bowl of fresh fruit on a wooden table",
    "a mountain lake at sunrise",
    "a city skyline at night",
    "a black and white photo of a train",
    "",
    "a diagram",
    "Ünïcödé: café, naïve, 日本語",
    "a considerably longer sentence describing a red bicycle leaning against a stone wall at dusk "
    "while a man in a blue coat walks past with an umbrella and a small brown dog",
)
PROBE_IMAGES = 8


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


# --- the cache ---------------------------------------------------------------------------------


def export_key(path: Path) -> str:
    """What the exported graph depends on, hashed. Reads config.json and the safetensors
    headers (not the weights); a weights file rewritten in place changes its modification time."""
    digest = hashlib.sha256()
    versions = {p: _version(p) for p in ("torch", "transformers", "onnx")}
    digest.update(json.dumps({"format": EXPORT_FORMAT, "opset": OPSET, **versions}, sort_keys=True).encode())
    try:
        digest.update((path / "config.json").read_bytes())
        weights = sorted(path.glob("*.safetensors"))
        for file in weights:
            stat = file.stat()
            digest.update(f"\0{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
            with file.open("rb") as fh:
                length = int.from_bytes(fh.read(8), "little")
                digest.update(fh.read(min(length, 64 * 2**20)))
    except OSError as exc:
        raise ModelLoadError(f"cannot read the checkpoint in {path}: {exc}") from exc
    if not weights:
        raise ModelLoadError(f"no *.safetensors weights in {path}: the onnx backend exports from safetensors")
    return digest.hexdigest()[:24]


def int8_key() -> str:
    """The int8 copy depends on the float32 export and on the quantizer (ONNX Runtime's)."""
    text = json.dumps({"format": INT8_FORMAT, "onnxruntime": _version("onnxruntime")}, sort_keys=True)
    return "int8-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_roots(checkpoint: Path) -> list[Path]:
    """Where exports are kept, in the order they are looked in and written to."""
    return [checkpoint / "onnx", random_checkpoint.cache_root() / "onnx"]


@dataclass(frozen=True)
class Export:
    """The two tower graphs of one checkpoint, float32 or int8."""

    folder: Path
    quantize: str  # "none" or "int8"

    @property
    def text(self) -> Path:
        return self.folder / "text.onnx"

    @property
    def vision(self) -> Path:
        return self.folder / "vision.onnx"

    @property
    def meta(self) -> Path:
        return self.folder / "export.json"  # written last: its presence marks a complete export

    def complete(self) -> bool:
        return self.meta.is_file() and self.text.is_file() and self.vision.is_file()

    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.meta.read_text())
        return data


def find_export(checkpoint: Path, quantize: str = "none") -> Export | None:
    """A complete cached export for the checkpoint as it is now, or None. Imports no torch."""
    key = export_key(checkpoint)
    for root in cache_roots(checkpoint):
        found = Export(root / key, "none")
        if quantize == "int8":
            found = Export(found.folder / int8_key(), "int8")
        if found.complete():
            return found
    return None


def ensure_export(checkpoint: Checkpoint, image_size: int, quantize: str = "none") -> Export:
    """The cached export, made first if there is none (the float32 one with torch; the int8 one
    from the float32 one, without torch). Raises ModelLoadError."""
    found = find_export(checkpoint.path, quantize)
    if found is not None:
        return found
    fp32 = find_export(checkpoint.path) or _make(checkpoint, image_size)
    if quantize == "none":
        return fp32
    return _publish(fp32.folder, int8_key(), lambda staging: _quantize(checkpoint, fp32, staging, image_size), "int8")


def _make(checkpoint: Checkpoint, image_size: int) -> Export:
    key = export_key(checkpoint.path)
    errors: list[str] = []
    for root in cache_roots(checkpoint.path):
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.mkdtemp(prefix=".probe-", dir=root)
            os.rmdir(probe)
        except OSError as exc:
            errors.append(f"{root}: {exc.strerror or exc}")
            continue
        log.info("exporting %s to ONNX, once: it is cached in %s", checkpoint.model_id, root / key)
        return _publish(root, key, lambda staging: _export(checkpoint, staging, image_size), "none")
    raise ModelLoadError(f"nowhere to write the ONNX export of {checkpoint.model_id}: {'; '.join(errors)}")


def _publish(root: Path, key: str, build: Any, quantize: str) -> Export:
    """Build into a staging folder beside the target, then rename it into place: a reader sees
    a complete export or none; of two concurrent builders, one wins and both use its export."""
    target = Export(root / key, quantize)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        started = time.perf_counter()
        meta = build(staging)
        meta = {**meta, "seconds": round(time.perf_counter() - started, 1)}
        (staging / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            staging.rename(target.folder)
        except OSError:
            if not target.complete():  # not a concurrent builder's win
                raise
    except OSError as exc:
        raise ModelLoadError(f"cannot write the ONNX export to {target.folder}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _export(checkpoint: Checkpoint, staging: Path, image_size: int) -> dict[str, Any]:
    try:
        from clipgate.backends import onnx_export
    except ImportError as exc:  # onnx (the exporter's) is in the extra, like onnxruntime
        raise ModelLoadError(f"exporting to ONNX needs torch and onnx: pip install 'clipgate[onnx]' ({exc})") from exc
    try:
        onnx_export.export(checkpoint.path, staging, image_size=image_size)
    except onnx_export.ExportError as exc:
        raise ModelLoadError(f"cannot export {checkpoint.model_id} to ONNX: {exc}") from exc
    versions = {p: _version(p) for p in ("torch", "transformers", "onnx")}
    return {"checkpoint": str(checkpoint.path), "opset": OPSET, "format": EXPORT_FORMAT, **versions}


# --- int8 ----------------------------------------------------------------------------------------


def _quantize(checkpoint: Checkpoint, fp32: Export, staging: Path, image_size: int) -> dict[str, Any]:
    """Dynamic quantization of both towers, and their parity to float32 on the probe set."""
    log.info("quantizing the ONNX export of %s to int8, once: it is cached in %s", checkpoint.model_id, fp32.folder)
    quiet = _DropRecords("Please consider to run pre-processing")  # the quantizer's advice, on the root logger
    logging.getLogger().addFilter(quiet)
    try:
        for name in ("text", "vision"):
            _quantize_one(fp32.folder / f"{name}.onnx", staging / f"{name}.onnx")
    finally:
        logging.getLogger().removeFilter(quiet)
    parity = measure_parity(checkpoint, fp32, Export(staging, "int8"), image_size)
    return {"quantize": "int8", "format": INT8_FORMAT, "onnxruntime": _version("onnxruntime"), "parity": parity}


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _quantize_one(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        # Only weights: the attention's activation-by-activation products stay float32.
        extra_options={"MatMulConstBOnly": True},
    )


def probe_inputs(checkpoint: Checkpoint) -> tuple[NDArray[np.float32], tuple[TokenIds, TokenIds]]:
    """A fixed set of photo-like pictures (smooth colour fields with shapes, as the
    checkpoint's preprocessing makes them) and captions, tokenized: what int8 is measured on."""
    from PIL import Image, ImageDraw, ImageFilter

    transform = ImageTransform.from_processor_config(checkpoint.processor)
    rng = np.random.default_rng(20240101)
    pictures = []
    for _ in range(PROBE_IMAGES):
        field = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        picture = Image.fromarray(field).resize((320, 240), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(picture)
        for _ in range(5):
            x, y = int(rng.integers(0, 280)), int(rng.integers(0, 200))
            box = (x, y, x + int(rng.integers(20, 120)), y + int(rng.integers(20, 120)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        pictures.append(transform(picture.filter(ImageFilter.GaussianBlur(1.5))))
    tokenizer, pad_id = load_tokenizer(checkpoint.path)
    text = checkpoint.config.get("text_config") or {}
    limit = int(text.get("max_position_embeddings", 77))
    pre = Preprocessor(tokenizer, transform, pad_id=pad_id, max_text_tokens=limit, truncate=True)
    return np.stack(pictures), pre.collate_texts(pre.tokenize(PROBE_TEXTS))


def _cosines(a: Vectors, b: Vectors) -> NDArray[np.float32]:
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def measure_parity(checkpoint: Checkpoint, fp32: Export, int8: Export, image_size: int) -> dict[str, float]:
    """Min cosine of int8 to float32 vectors on the probe set, images and texts."""
    pixels, (ids, mask) = probe_inputs(checkpoint)
    assert pixels.shape[-1] == image_size
    out: dict[str, float] = {}
    for name, feed in (("vision", {"pixel_values": pixels}), ("text", {"input_ids": ids, "attention_mask": mask})):
        vectors = []
        for export in (fp32, int8):
            session = ort.InferenceSession(str(export.folder / f"{name}.onnx"), session_options(0), providers=[CPU])
            vectors.append(session.run(None, feed)[0])
        out[f"{name}_min_cosine"] = round(float(_cosines(vectors[1], vectors[0]).min()), 6)
    return out


# --- the encoder ---------------------------------------------------------------------------------


def pick_providers(device: str, available: Sequence[str]) -> tuple[list[Any], str]:
    """ONNX Runtime's execution providers for `device` (auto, cpu, cuda, cuda:N), given those
    this onnxruntime build has, and the device name for the model card. Raises ModelLoadError."""
    if device == "cpu" or (device == "auto" and CUDA not in available):
        return [CPU], "cpu"
    match = _CUDA_DEVICE.fullmatch("cuda" if device == "auto" else device)
    if match is None:
        raise ModelLoadError(f"device {device} is not one the onnx backend knows (auto, cpu, cuda, cuda:N)")
    if CUDA not in available:
        raise ModelLoadError(
            f"device {device} was asked for but this onnxruntime has no CUDA execution provider "
            "(it has: " + ", ".join(available) + "); install onnxruntime-gpu in its place"
        )
    index = int(match.group(1) or 0)
    return [(CUDA, {"device_id": index}), CPU], match.group(0)


def check_device(device: str) -> None:
    pick_providers(device, ort.get_available_providers())


def session_options(threads: int) -> Any:
    """The engine's thread budget: `threads` intra-op threads (0: one per core, ONNX Runtime's
    default), one inter-op thread (the batcher runs one graph at a time). Threads sleep when a
    run ends instead of spinning, so image decoding gets the cores between batches (clipgate.cpu_turns)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers etc. at load
    return options


def load(checkpoint: Checkpoint, cfg: ModelConfig) -> OnnxEncoder:
    if cfg.dtype not in ("auto", "float32"):
        raise ModelLoadError(
            f"the onnx backend runs float32 (or int8 with model.quantize), not {cfg.dtype}; "
            'set model.dtype = "auto" or use model.backend = "torch"'
        )
    providers, device = pick_providers(cfg.device, ort.get_available_providers())
    if cfg.quantize == "int8" and device != "cpu":
        raise ModelLoadError("model.quantize = int8 runs on the CPU only (model.device = cpu)")
    card = checkpoint.card(cfg, device=device, dtype="int8" if cfg.quantize == "int8" else "float32")
    export = ensure_export(checkpoint, card.image_size, cfg.quantize)
    if cfg.quantize == "int8":
        parity = export.info().get("parity", {})
        worst = min(parity.values(), default=0.0)
        if worst < cfg.int8_min_cosine:
            raise ModelLoadError(
                f"int8 vectors of {cfg.id} reach a cosine of only {worst:.5f} to float32 on the probe set "
                f"({', '.join(f'{k} {v:.5f}' for k, v in sorted(parity.items()))}), below model.int8_min_cosine = "
                f'{cfg.int8_min_cosine}; serve float32 (model.quantize = "none") or lower the floor'
            )
    options = session_options(cfg.torch_threads)
    try:
        text = ort.InferenceSession(str(export.text), options, providers=providers)
        vision = ort.InferenceSession(str(export.vision), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own classes for a bad or unreadable file
        raise ModelLoadError(f"cannot load the ONNX export in {export.folder}: {exc}") from exc
    return OnnxEncoder(text, vision, card, export, checkpoint.end_tokens())


class OnnxEncoder:
    """Two ONNX Runtime sessions, one per tower. One thread (the batcher's) calls `embed_*`."""

    def __init__(self, text: Any, vision: Any, card: ModelCard, export: Export, ends: list[int]) -> None:
        self.text, self.vision = text, vision
        self._card = card
        self.export = export
        self._ends = ends

    @property
    def card(self) -> ModelCard:
        return self._card

    def _run(self, graph: Any, inputs: dict[str, NDArray[Any]]) -> Vectors:
        """One tower's output for `inputs` (the OpenVINO backend runs its own way)."""
        return np.asarray(graph.run(None, inputs)[0], dtype=np.float32)

    def embed_texts(self, ids: TokenIds, mask: TokenIds) -> Vectors:
        return self._run(self.text, {"input_ids": ids, "attention_mask": mask})

    def embed_images(self, pixels: NDArray[np.float32]) -> Vectors:
        return self._run(self.vision, {"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)})

    def warmup(self) -> None:
        warm_up(self, self._card.image_size, self._ends)

    def health(self) -> str | None:
        return None
