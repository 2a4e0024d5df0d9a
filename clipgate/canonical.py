"""The one internal contract: what every adapter turns a vendor request into, and back."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

JSON: TypeAlias = Any
"""A value as orjson reads and writes it (dict, list, str, int, float, bool, None, ndarray)."""


@dataclass(frozen=True, slots=True)
class TextInput:
    text: str


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
class EmbedResult:
    """One row per request item, same order. Rows are float32 vectors (numpy), unnormalized."""

    vectors: Sequence[Any]
    elapsed_s: float

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
