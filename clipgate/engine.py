"""The CLIP core: load a checkpoint, tokenize, preprocess, and encode batches. Knows no HTTP."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from tokenizers import Tokenizer

from clipgate import emulator
from clipgate.canonical import ModelCard
from clipgate.config import ModelConfig
from clipgate.errors import InvalidRequest
from clipgate.images import ImageTransform, Pixels

Vectors = NDArray[np.float32]
"""Embeddings: float32, (n, dim), unnormalized."""

log = logging.getLogger("clipgate.engine")

# Short names (Roboflow's clip_version_id) of the public OpenAI checkpoints.
KNOWN_ALIASES = {
    "openai/clip-vit-base-patch32": "ViT-B-32",
    "openai/clip-vit-base-patch16": "ViT-B-16",
    "openai/clip-vit-large-patch14": "ViT-L-14",
    "openai/clip-vit-large-patch14-336": "ViT-L-14-336px",
    "random:tiny": "ViT-B-32",
    "random:base": "ViT-B-32",
}

TOKENIZE_CHUNK = 64

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The model cannot be found or loaded; the message is one line a person can act on."""


class Engine(Protocol):
    """What the batcher and service need of a model. A test double implements this too."""

    card: ModelCard

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]: ...

    def preprocess(self, image: Image.Image) -> Pixels: ...

    def embed_texts(self, batch: Sequence[Sequence[int]]) -> Vectors: ...

    def embed_images(self, batch: Sequence[Pixels]) -> Vectors: ...


def resolve_checkpoint(cfg: ModelConfig) -> Path:
    """Find the checkpoint folder for `cfg.id`: an emulator kind, a local folder, or a hub id
    (from the local cache, downloading only when allowed). Raises ModelLoadError."""
    model_id = cfg.id
    hint = "pass --model DIR (a local CLIP checkpoint folder) or --model random:tiny (random weights, no download)"
    if emulator.is_emulator(model_id):
        try:
            return emulator.checkpoint_dir(model_id)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
    path = Path(model_id).expanduser()
    if path.exists() or model_id.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelLoadError(f"model folder {model_id} does not exist; {hint}")
        return path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt"]
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any miss means: try the network, or give up
        if not cfg.allow_download:
            raise ModelLoadError(
                f"model {model_id} is not in the local Hugging Face cache and downloads are off; {hint}"
            ) from exc
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns, etag_timeout=cfg.download_timeout_s))
    except Exception as exc:  # noqa: BLE001 - network, auth or not-found: all end the same way
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot download model {model_id} ({reason}); {hint}") from exc


def pick_device(name: str) -> torch.device:
    """`name` is auto, cpu or cuda[:N] (ModelConfig checks that)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name} was asked for but CUDA is not available")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`name` is auto or one of _DTYPES (ModelConfig checks that)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def load_tokenizer(path: Path) -> tuple[Tokenizer, int]:
    """The checkpoint's fast tokenizer as a bare `tokenizers.Tokenizer`, and its padding id.

    `tokenizer.json` is read directly (the quick way); a checkpoint that ships only the BPE
    files (vocab.json, merges.txt) goes through transformers, which builds the same thing."""
    config_file = path / "tokenizer_config.json"
    settings = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if (path / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path).backend_tokenizer
    pad = settings.get("pad_token")
    pad_text = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = tokenizer.token_to_id(pad_text) if isinstance(pad_text, str) else None
    return tokenizer, int(pad_id or 0)


class ClipEngine:
    """A Hugging Face `CLIPModel` with its tokenizer and preprocessing. Not thread-safe: one
    thread (the batcher's) calls `embed_*`; `tokenize` and `preprocess` are safe anywhere."""

    def __init__(
        self,
        model: Any,
        tokenizer: Tokenizer,
        transform: ImageTransform,
        card: ModelCard,
        *,
        pad_id: int,
        truncate: bool,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.transform = transform
        self.card = card
        self._device = next(model.parameters()).device
        self._dtype = next(model.parameters()).dtype
        self._pad_id = pad_id
        tokenizer.no_padding()
        if truncate:
            tokenizer.enable_truncation(card.max_text_tokens)  # keeps the end-of-text token last
        else:
            tokenizer.no_truncation()

    @classmethod
    def load(cls, cfg: ModelConfig) -> ClipEngine:
        from transformers import CLIPModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        started = time.perf_counter()
        path = resolve_checkpoint(cfg)
        device = pick_device(cfg.device)
        dtype = pick_dtype(cfg.dtype, device)
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        try:
            model = CLIPModel.from_pretrained(path, dtype=dtype, use_safetensors=True)
            tokenizer, pad_id = load_tokenizer(path)
            processor_cfg = json.loads((path / "preprocessor_config.json").read_text())
            transform = ImageTransform.from_processor_config(processor_cfg)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load a CLIP checkpoint from {path}: {first}") from exc
        model = model.to(device).eval()  # type: ignore[arg-type]
        text_cfg = model.config.text_config
        card = ModelCard(
            name=cfg.id,
            alias=cfg.alias or KNOWN_ALIASES.get(cfg.id, Path(cfg.id.rstrip("/")).name),
            dim=int(model.config.projection_dim),
            image_size=transform.crop_height,
            max_text_tokens=int(text_cfg.max_position_embeddings),
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
        )
        log.info(
            "loaded %s from %s on %s as %s in %.1f s",
            cfg.id,
            path,
            card.device,
            card.dtype,
            time.perf_counter() - started,
        )
        return cls(model, tokenizer, transform, card, pad_id=pad_id, truncate=cfg.truncate_text)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text. In chunks, so a request whose first text is too long is refused
        without tokenizing the other thousand."""
        limit = self.card.max_text_tokens
        ids: list[list[int]] = []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            ids += [
                encoding.ids for encoding in self.tokenizer.encode_batch(list(texts[start : start + TOKENIZE_CHUNK]))
            ]
            for i in range(start, len(ids)):
                if len(ids[i]) > limit:
                    raise InvalidRequest(
                        f"Text at index {i} is {len(ids[i])} tokens long; the model accepts at most {limit} "
                        "(the server can be configured to truncate: model.truncate_text = true)."
                    )
        return ids

    def preprocess(self, image: Image.Image) -> Pixels:
        return self.transform(image)

    @torch.inference_mode()
    def embed_texts(self, batch: Sequence[Sequence[int]]) -> Vectors:
        width = max(len(row) for row in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        out = self.model.get_text_features(input_ids=ids.to(self._device), attention_mask=mask.to(self._device))
        return self._to_numpy(out)

    @torch.inference_mode()
    def embed_images(self, batch: Sequence[Pixels]) -> Vectors:
        pixels = torch.from_numpy(np.stack(batch)).to(self._device, self._dtype)
        out = self.model.get_image_features(pixel_values=pixels)
        return self._to_numpy(out)

    @staticmethod
    def _to_numpy(out: object) -> Vectors:
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        assert isinstance(features, torch.Tensor)
        return features.float().cpu().numpy()

    def warmup(self) -> None:
        """Run one batch of each kind so the first real request pays no one-off costs."""
        side = self.transform.crop_height
        blank = Image.new("RGB", (side, side), (127, 127, 127))
        self.embed_images([self.preprocess(blank)])
        self.embed_texts(self.tokenize(["a photo of a cat"]))
