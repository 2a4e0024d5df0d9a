"""What every model backend shares, without torch: the checkpoint, its `ModelCard`, the
`Preprocessor` (tokenizer and image transform) and the `Encoder` protocol a backend implements.

A backend (clipgate/backends/) runs the device step alone: token ids and pixel arrays in,
float32 vectors out. Tokenizing, decoding and batching happen here and in the service, the
same for every backend. `model.backend` picks the backend; `load_model` puts it all together.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from clipgate import random_checkpoint
from clipgate.canonical import ModelCard, TextInput, Truncation
from clipgate.config import ModelConfig
from clipgate.errors import TextTooLong
from clipgate.images import ImageTransform, Pixels

Vectors = NDArray[np.float32]
"""Embeddings: float32, (n, dim), unnormalized."""
TokenIds = NDArray[np.int64]
"""A padded batch of token ids, or its attention mask: int64, (n, longest text)."""

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

# model.backend -> the module under clipgate/backends/ that implements it (imported on demand).
BACKENDS = {
    "torch": "clipgate.backends.torch",
    "onnx": "clipgate.backends.onnx",
    "openvino": "clipgate.backends.openvino",
}


class ModelLoadError(RuntimeError):
    """The model cannot be found or loaded; the message is one line a person can act on."""


class Encoder(Protocol):
    """A backend: the device step of CLIP. One thread (the batcher's) calls `embed_*` and
    `warmup`; `health` may be called from anywhere and must be cheap."""

    @property
    def card(self) -> ModelCard: ...

    def embed_texts(self, ids: TokenIds, mask: TokenIds) -> Vectors: ...

    def embed_images(self, pixels: NDArray[np.float32]) -> Vectors: ...

    def warmup(self) -> None:
        """Run one small batch of each kind, so the first request pays no one-off costs."""

    def health(self) -> str | None:
        """None while the encoder can serve, else why not (one line, for readiness probes)."""


def warm_up(encoder: Encoder, image_size: int, end_tokens: Sequence[int]) -> None:
    """One image and the shortest text through `encoder`: what every backend's `warmup` runs."""
    encoder.embed_images(np.zeros((1, 3, image_size, image_size), dtype=np.float32))
    ids = np.array([list(end_tokens)], dtype=np.int64)
    encoder.embed_texts(ids, np.ones_like(ids))


class Backend(Protocol):
    """What a backend module provides."""

    def check_device(self, device: str) -> None:
        """Raise ModelLoadError if `device` (auto, cpu, cuda[:N]) cannot be had here."""

    def load(self, checkpoint: Checkpoint, cfg: ModelConfig) -> Encoder: ...


# model.backend -> the optional dependency (pyproject extra) it needs, where it needs one
EXTRAS = {"onnx": "onnx", "openvino": "openvino"}


def backend(cfg: ModelConfig) -> Backend:
    """The module that implements `cfg.backend` (config validation names the known ones).
    Raises ModelLoadError when its libraries are not installed."""
    try:
        module: Any = importlib.import_module(BACKENDS[cfg.backend])
    except ImportError as exc:
        extra = EXTRAS.get(cfg.backend)
        if extra is None:
            raise
        raise ModelLoadError(
            f"model.backend = {cfg.backend} needs pip install 'clipgate[{extra}]' (cannot import {exc.name})"
        ) from exc
    return module  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Checkpoint:
    """A CLIP checkpoint folder and what its `config.json` and `preprocessor_config.json` say."""

    path: Path
    model_id: str
    config: dict[str, Any]
    processor: dict[str, Any]

    @classmethod
    def read(cls, path: Path, model_id: str) -> Checkpoint:
        try:
            config = json.loads((path / "config.json").read_text())
            processor = json.loads((path / "preprocessor_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read a CLIP checkpoint from {path}: {_first_line(exc)}") from exc
        return cls(path, model_id, config, processor)

    def card(self, cfg: ModelConfig, *, device: str, dtype: str) -> ModelCard:
        """What is served, for info routes and the `model` check; the backend names the device and dtype."""
        text = self.config.get("text_config") or {}
        try:
            return ModelCard(
                name=cfg.id,
                alias=cfg.alias or KNOWN_ALIASES.get(cfg.id, Path(cfg.id.rstrip("/")).name),
                dim=int(self.config.get("projection_dim", 512)),
                image_size=ImageTransform.from_processor_config(self.processor).crop_height,
                max_text_tokens=int(text.get("max_position_embeddings", 77)),
                device=device,
                dtype=dtype,
            )
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"cannot read a CLIP checkpoint from {self.path}: {_first_line(exc)}") from exc

    def end_tokens(self) -> list[int]:
        """The text tower's start and end token ids (the first of each where a list is given, 0
        where none is): the shortest text there is, for a warm-up batch."""
        text = self.config.get("text_config") or {}
        ends = [text.get(key) for key in ("bos_token_id", "eos_token_id")]
        ends = [e[0] if isinstance(e, list) and e else e for e in ends]
        return [e if isinstance(e, int) else 0 for e in ends]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class LoggedProgress(tqdm):  # type: ignore[misc]
    """A download's progress as log lines with sizes, every few seconds and at the end, instead
    of a terminal bar (which would break JSON logs and means nothing in a container's log)."""

    EVERY_S = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
        kwargs.setdefault("mininterval", 0)
        self._logged_at = 0.0
        self._done_logged = False
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        total, done = self.total, self.n
        finished = bool(total) and done >= total
        now = time.monotonic()
        if (finished and not self._done_logged) or (not finished and now - self._logged_at >= self.EVERY_S and done):
            self._logged_at, self._done_logged = now, finished
            size = tqdm.format_sizeof
            of = f"/{size(total, 'B', 1000)}" if total else ""
            log.info("downloading %s: %s%s", self.desc or "model", size(done, "B", 1000), of)

    def close(self) -> None:
        file = self.fp
        super().close()
        file.close()


def resolve_checkpoint(cfg: ModelConfig) -> Path:
    """Find the checkpoint folder for `cfg.id`: a random-weight kind, a local folder, or a hub id
    (from the local cache, downloading only when allowed). Raises ModelLoadError."""
    model_id = cfg.id
    hint = "pass --model DIR (a local CLIP checkpoint folder) or --model random:tiny (random weights, no download)"
    if random_checkpoint.is_random(model_id):
        try:
            return random_checkpoint.checkpoint_dir(model_id)
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
    log.info("downloading %s from the Hugging Face hub", model_id)
    try:
        return Path(
            snapshot_download(
                model_id, allow_patterns=patterns, etag_timeout=cfg.download_timeout_s, tqdm_class=LoggedProgress
            )
        )
    except Exception as exc:  # noqa: BLE001 - network, auth or not-found: all end the same way
        raise ModelLoadError(f"cannot download model {model_id} ({_first_line(exc)}); {hint}") from exc


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


class Preprocessor:
    """The CPU side of CLIP: text to token ids, an image to pixels, and batches of either to the
    arrays an encoder takes. `tokenize` and `preprocess` are safe on any thread."""

    def __init__(
        self, tokenizer: Tokenizer, transform: ImageTransform, *, pad_id: int, max_text_tokens: int, truncate: bool
    ) -> None:
        self.tokenizer = tokenizer
        self.transform = transform
        self.pad_id = pad_id
        self.max_text_tokens = max_text_tokens
        self.truncate: Truncation = "end" if truncate else "none"  # what a text without its own rule gets
        tokenizer.no_padding()  # a batch pads to its own longest text, in `collate_texts`
        tokenizer.no_truncation()  # each text is cut (or refused) by its own rule, in `_fit`

    @classmethod
    def load(cls, checkpoint: Checkpoint, card: ModelCard, *, truncate: bool) -> Preprocessor:
        try:
            tokenizer, pad_id = load_tokenizer(checkpoint.path)
            transform = ImageTransform.from_processor_config(checkpoint.processor)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load a CLIP checkpoint from {checkpoint.path}: {_first_line(exc)}") from exc
        return cls(tokenizer, transform, pad_id=pad_id, max_text_tokens=card.max_text_tokens, truncate=truncate)

    def tokenize(self, texts: Sequence[str | TextInput]) -> list[list[int]]:
        """Token ids per text, each cut or refused (TextTooLong) by its own rule when over its
        limit: a TextInput's `truncate` and `max_tokens`, else the server's `model.truncate_text`
        and the model's limit. In chunks, so a request whose first text is too long is refused
        without tokenizing the other thousand."""
        items = [TextInput(text) if isinstance(text, str) else text for text in texts]
        ids: list[list[int]] = []
        for start in range(0, len(items), TOKENIZE_CHUNK):
            chunk = items[start : start + TOKENIZE_CHUNK]
            encodings = self.tokenizer.encode_batch([item.text for item in chunk])
            ids += [
                self._fit(start + n, encoding.ids, item)
                for n, (encoding, item) in enumerate(zip(encodings, chunk, strict=True))
            ]
        return ids

    def _fit(self, index: int, row: list[int], item: TextInput) -> list[int]:
        """`row` within its limit: as it is, cut at its end or its start (the start and end tokens
        kept, as the tokenizer's own truncation keeps them), or refused."""
        limit = self.max_text_tokens if item.max_tokens is None else min(item.max_tokens, self.max_text_tokens)
        if len(row) <= limit:
            return row
        rule = item.truncate or self.truncate
        if rule == "end":
            return row[: limit - 1] + row[-1:]
        if rule == "start":
            return row[:1] + row[len(row) - limit + 1 :]
        raise TextTooLong(index, len(row), limit, asked=item.truncate == "none")

    def preprocess(self, image: Image.Image) -> Pixels:
        return self.transform(image)

    def collate_texts(self, batch: Sequence[Sequence[int]]) -> tuple[TokenIds, TokenIds]:
        """Token ids padded to the batch's longest text, and the attention mask."""
        width = max(len(row) for row in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    @staticmethod
    def collate_images(batch: Sequence[Pixels]) -> NDArray[np.float32]:
        return np.stack(batch)


class Model:
    """A loaded model: its preprocessor (CPU, any thread) and its encoder (the model thread)."""

    def __init__(self, preprocessor: Preprocessor, encoder: Encoder) -> None:
        self.preprocessor = preprocessor
        self.encoder = encoder

    @property
    def card(self) -> ModelCard:
        return self.encoder.card

    def embed_texts(self, batch: Sequence[Sequence[int]]) -> Vectors:
        """A batch of tokenized texts, on the model thread."""
        return self.encoder.embed_texts(*self.preprocessor.collate_texts(batch))

    def embed_images(self, batch: Sequence[Pixels]) -> Vectors:
        """A batch of preprocessed images, on the model thread."""
        return self.encoder.embed_images(self.preprocessor.collate_images(batch))


def load_model(cfg: ModelConfig) -> Model:
    """Resolve the checkpoint, load the backend's encoder and the preprocessor. Raises ModelLoadError."""
    started = time.perf_counter()
    checkpoint = Checkpoint.read(resolve_checkpoint(cfg), cfg.id)
    encoder = backend(cfg).load(checkpoint, cfg)
    card = encoder.card
    preprocessor = Preprocessor.load(checkpoint, card, truncate=cfg.truncate_text)
    log.info(
        "loaded %s from %s with %s on %s as %s in %.1f s",
        cfg.id,
        checkpoint.path,
        cfg.backend,
        card.device,
        card.dtype,
        time.perf_counter() - started,
    )
    return Model(preprocessor, encoder)
