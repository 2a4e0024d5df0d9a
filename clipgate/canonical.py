"""The one internal contract: what every adapter turns a vendor request into, and back."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

JSON: TypeAlias = Any
"""A value as orjson reads and writes it (dict, list, str, int, float, bool, None, ndarray)."""

Truncation: TypeAlias = Literal["end", "start", "none"]
"""What to do with a text over its token limit: keep its first tokens ("end" is cut), keep its last
("start" is cut), or refuse it ("none": a 400). A cut text keeps its start and end tokens."""


@dataclass(frozen=True, slots=True)
class TextInput:
    """A text to embed. `truncate` and `max_tokens` are for protocols whose callers choose, per
    request, what happens to long text: None follows the server (`model.truncate_text`), and
    `max_tokens` lowers the limit for this text (start and end tokens included; at least 2, and
    never above the model's)."""

    text: str
    truncate: Truncation | None = None
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image as the caller sent it: its encoded bytes, a base64 string of them, or a URL to
    fetch (when allowed). The core decodes base64 off the event loop, after the cheap checks."""

    data: bytes | None = None
    base64: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.data, self.base64, self.url)) != 1:
            raise ValueError("ImageInput takes exactly one of data, base64 and url")


Item: TypeAlias = TextInput | ImageInput


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """Items to embed, in order. `model` is the model the caller named, None for the served one.

    `context` is the adapter's own note to itself (ids, dict keys, which column an item came
    from): the core never reads it and hands it back to `render`.
    """

    items: Sequence[Item]
    model: str | None = None
    context: Any = None


@dataclass(frozen=True, slots=True)
class TextInfo:
    """What the model saw of a text: its token count, start and end tokens included, after any cut."""

    tokens: int


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """An image as it was sent: its size (upright, as the model saw it, before any reduced
    decode), its format (lower-case Pillow name: jpeg, png, webp, gif, bmp) and bits per sample."""

    width: int
    height: int
    format: str
    bit_depth: int


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """One row per request item, same order. Rows are float32 vectors (numpy), unnormalized.

    `info` holds one TextInfo or ImageInfo per item, in the same order (for usage counts and
    image descriptions); `model` names the served model (its card name). The service fills both."""

    vectors: Sequence[Any]
    elapsed_s: float
    info: Sequence[TextInfo | ImageInfo] = ()
    model: str = ""

    def cosine(self, i: int, j: int) -> float:
        a, b = self.vectors[i], self.vectors[j]
        dot = float(a @ b)
        norm = math.sqrt(float(a @ a) * float(b @ b))
        return dot / norm if norm else 0.0


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of a multipart body."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What an adapter may know of the HTTP request besides its body."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    query: Mapping[str, str]
    path_params: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    content_type: str = ""  # media type only, lower-case, no parameters
    settings: Any = None  # the protocol's config table (clipgate.adapter.ProtocolSettings or its subclass)
    card: ModelCard | None = None  # the served model, once it is loaded: what a parser may check against


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What the served model is, for info routes and the `model` check."""

    name: str  # the id or directory it was loaded from
    alias: str  # the short vendor-style name (Roboflow clip_version_id), e.g. "ViT-B-32"
    dim: int
    image_size: int
    max_text_tokens: int
    device: str
    dtype: str
