"""Cohere Embed: `POST /v2/embed` and `/v1/embed`, as the cohere package's `ClientV2.embed` and
`Client.embed` (and langchain-cohere, which uses the latter) send them
(shared/reference/more-protocols.md §2.2, §5; vLLM's /v2/embed for the encodings).

Texts, data-URI images, or `inputs` of one content part each; `embedding_types` float, base64
(little-endian float32), binary and ubinary (sign bits, most significant first); `truncate`
END (the default: cut silently), START or NONE. Vectors are unit length by default, as Cohere's
are. Errors are Cohere's `{"id", "message"}`.
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from clipgate.adapter import Adapter, Body, Doc, Operation, ProtocolSettings, Reply, bearer_token
from clipgate.canonical import (
    JSON,
    EmbedRequest,
    EmbedResult,
    ImageInfo,
    ImageInput,
    Item,
    RequestMeta,
    TextInfo,
    TextInput,
    Truncation,
)
from clipgate.errors import ClipgateError, InvalidRequest, SchemaError, TextTooLong, Unauthorized, UnknownModel


@dataclass(frozen=True)
class CohereSettings(ProtocolSettings):
    """The `[cohere]` table."""

    normalize: bool = True  # unit-length vectors, as Cohere's own are
    strict_model: bool = False  # 404 for a `model` other than the served one or its alias


INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
EMBEDDING_TYPES = ("float", "base64", "binary", "ubinary")
UNSUPPORTED_TYPES = ("int8", "uint8")  # would need a fixed quantization range CLIP does not have
TRUNCATE: dict[str, Truncation] = {"END": "end", "START": "start", "NONE": "none"}
_DATA_URI = re.compile(r"data:image/[\w.+-]+;base64,", re.IGNORECASE)
MAX_MODEL_NAME = 256


class CohereError(InvalidRequest):
    """A 400 in Cohere's words: "invalid request: ..."."""

    def __init__(self, message: str) -> None:
        super().__init__(f"invalid request: {message}")


@dataclass(frozen=True, slots=True)
class Options:
    """What `render` needs of the request (EmbedRequest.context)."""

    version: int  # the API version the caller used, 1 or 2
    types: tuple[str, ...] | None  # None: v1's plain float answer (no embedding_types sent)
    normalize: bool
    texts: list[str] | None  # echoed when texts were sent
    request_id: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise CohereError(f"{name} must be a non-empty list of strings.")
    for i, entry in enumerate(value):
        if not isinstance(entry, str):
            raise CohereError(f"{name}[{i}] must be a string.")
    return value


def _image(value: Any, where: str, *, urls: bool) -> ImageInput:
    """A data URI (data:image/...;base64,...), or in `inputs` also an http(s) URL (fetched only
    where the server allows URLs)."""
    if isinstance(value, str) and _DATA_URI.match(value):
        return ImageInput(base64=value)
    if urls and isinstance(value, str) and (value[:8].lower() == "https://" or value[:7].lower() == "http://"):
        return ImageInput(url=value)
    raise CohereError(f"{where} must be a valid data URI: data:image/<jpeg|png|webp|gif>;base64,<data>.")


def _input(value: Any, where: str, rule: TextInput) -> Item:
    """One of v2's `inputs`: {"content": [part, ...]} with exactly one non-empty part."""
    content = value.get("content") if isinstance(value, dict) else None
    if not isinstance(content, list):
        raise CohereError(f"{where} must be an object with a content list.")
    parts: list[Item] = []
    for k, part in enumerate(content):
        at = f"{where}.content[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise CohereError(f"{at}.text must be a string.")
            parts += [TextInput(text, truncate=rule.truncate, max_tokens=rule.max_tokens)] if text else []
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            parts.append(_image(url, f"{at}.image_url.url", urls=True))
        else:
            raise CohereError(f"{at} must be a content part of type text or image_url.")
    if len(parts) != 1:
        kinds = {type(p) for p in parts}
        if len(kinds) > 1:
            raise CohereError(f"{where} holds text and an image; CLIP embeds one or the other per input.")
        raise CohereError(f"{where} holds {len(parts)} non-empty parts; CLIP embeds exactly one per input.")
    return parts[0]


def _embedding_types(value: Any) -> tuple[str, ...] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise CohereError("embedding_types must be a list.")
    types: list[str] = []
    for entry in value:
        if entry in UNSUPPORTED_TYPES:
            raise CohereError(
                f"embedding type {entry} is not supported by this model; use float, base64, binary or ubinary."
            )
        if entry not in EMBEDDING_TYPES:
            raise CohereError(
                f"embedding_types holds {str(entry)[:40]!r}; valid types are {', '.join(EMBEDDING_TYPES)}."
            )
        if entry not in types:
            types.append(entry)
    return tuple(types)


def _parse(body: Body, meta: RequestMeta, version: int) -> EmbedRequest:
    if not isinstance(body, dict):
        raise CohereError("the request body must be a JSON object.")
    settings = meta.settings if isinstance(meta.settings, CohereSettings) else CohereSettings()
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or len(model) > MAX_MODEL_NAME):
        raise CohereError(f"model must be a string of at most {MAX_MODEL_NAME} characters.")
    input_type = body.get("input_type")
    if input_type is not None and input_type not in INPUT_TYPES:
        raise CohereError(f"input_type must be one of {', '.join(INPUT_TYPES)}.")
    kinds = ("texts", "images", "inputs") if version == 2 else ("texts", "images")
    given = [kind for kind in kinds if body.get(kind) is not None]
    if len(given) != 1:
        raise CohereError(f"exactly one of {', '.join(kinds[:-1])} or {kinds[-1]} must be provided.")
    truncate = body.get("truncate")
    if truncate is not None and (not isinstance(truncate, str) or truncate.upper() not in TRUNCATE):
        raise CohereError("truncate must be one of NONE, START or END.")
    max_tokens = body.get("max_tokens") if version == 2 else None
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise CohereError("max_tokens must be a positive integer.")
    dimensions = body.get("output_dimension") if version == 2 else None
    if dimensions is not None and not _is_int(dimensions):
        raise CohereError("output_dimension must be an integer.")
    if dimensions is not None and meta.card is not None and dimensions != meta.card.dim:
        raise CohereError(f"output_dimension {dimensions} is not available; this model's vectors have {meta.card.dim}.")
    rule = TextInput("", truncate=TRUNCATE[(truncate or "END").upper()], max_tokens=max_tokens)
    (kind,) = given
    texts: list[str] | None = None
    items: list[Item]
    if kind == "texts":
        texts = _strings(body["texts"], "texts")
        items = [TextInput(text, truncate=rule.truncate, max_tokens=rule.max_tokens) for text in texts]
    elif kind == "images":
        items = [
            _image(value, f"images[{i}]", urls=False) for i, value in enumerate(_strings(body["images"], "images"))
        ]
    else:
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise CohereError("inputs must be a non-empty list.")
        items = [_input(value, f"inputs[{i}]", rule) for i, value in enumerate(inputs)]
    types = _embedding_types(body.get("embedding_types"))
    options = Options(
        version=version,
        types=types if types is not None or version == 1 else ("float",),
        normalize=settings.normalize,
        texts=texts if texts is not None or version == 2 else [],
        request_id=meta.request_id,
    )
    return EmbedRequest(items=items, model=model if settings.strict_model else None, context=options)


def parse_v2(body: Body, meta: RequestMeta) -> EmbedRequest:
    return _parse(body, meta, 2)


def parse_v1(body: Body, meta: RequestMeta) -> EmbedRequest:
    return _parse(body, meta, 1)


# --- rendering ----------------------------------------------------------------------------------


def unit(vector: Any) -> Any:
    """`vector` (float32 numpy) scaled to length 1; a zero vector as it is."""
    norm = math.sqrt(float(vector @ vector))
    return vector / norm if norm > 0 else vector


def packed_signs(vector: Any, *, signed: bool) -> list[int]:
    """One bit per value (1 where it is >= 0), eight to a byte, most significant first; `signed`
    gives the byte minus 128 (Cohere's `binary`), else the byte (`ubinary`)."""
    bits = [1 if x >= 0 else 0 for x in vector.tolist()]
    packed: list[int] = []
    for start in range(0, len(bits), 8):
        chunk = bits[start : start + 8]
        byte = 0
        for bit in chunk:
            byte = byte << 1 | bit
        byte <<= 8 - len(chunk)
        packed.append(byte - 128 if signed else byte)
    return packed


def _encoded(vector: Any, kind: str) -> JSON:
    if kind == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    if kind in ("binary", "ubinary"):
        return packed_signs(vector, signed=kind == "binary")
    return vector


def render_embed(result: EmbedResult, request: EmbedRequest) -> JSON:
    options: Options = request.context
    vectors = [unit(v) if options.normalize else v for v in result.vectors]
    images = [info for info in result.info if isinstance(info, ImageInfo)]
    tokens = sum(info.tokens for info in result.info if isinstance(info, TextInfo))
    billed: dict[str, JSON] = {"input_tokens": tokens}
    if images:
        billed["images"] = len(images)
    answer: dict[str, JSON] = {"id": options.request_id}
    if options.types is None:
        answer |= {"response_type": "embeddings_floats", "embeddings": vectors}
    else:
        by_type = {kind: [_encoded(v, kind) for v in vectors] for kind in options.types}
        answer |= {"response_type": "embeddings_by_type", "embeddings": by_type}
    if options.texts is not None:
        answer["texts"] = options.texts
    if images:
        answer["images"] = [
            {"width": i.width, "height": i.height, "format": i.format, "bit_depth": i.bit_depth} for i in images
        ]
    answer["meta"] = {"api_version": {"version": str(options.version)}, "billed_units": billed}
    return answer


def render_error(err: ClipgateError) -> Reply:
    status = 400 if isinstance(err, SchemaError) else err.status  # Cohere answers malformed bodies 400
    message = err.message
    if isinstance(err, TextTooLong):
        message = f"too many tokens: {message} Set truncate to END or START to cut it instead."
    elif isinstance(err, Unauthorized):
        message = f"invalid api token: {message}"
    elif isinstance(err, UnknownModel):
        message = f"model not found: {message}"
    elif status == 400 and not message.startswith("invalid request: "):
        message = f"invalid request: {message}"
    return Reply(status, {"id": str(uuid.uuid4()), "message": message})


def credential(body: Body, meta: RequestMeta) -> str | None:
    return bearer_token(meta)


def response_headers(meta: RequestMeta) -> dict[str, str]:
    return {"x-request-id": meta.request_id}


# --- documentation (GET /openapi.json) ------------------------------------------------------------

_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAFElEQVR42mM8ISfHAANMDEgANwcANHYBDH++Xo4AAAAASUVORK5CYII="
_STRINGS = {"type": "array", "items": {"type": "string"}, "minItems": 1}
_COMMON = {
    "model": {"type": "string", "maxLength": MAX_MODEL_NAME, "description": "Any name, unless [cohere] strict_model."},
    "input_type": {"enum": [*INPUT_TYPES, None], "description": "Checked, otherwise ignored."},
    "texts": {**_STRINGS, "description": "Texts to embed."},
    "images": {**_STRINGS, "description": "Images as data URIs: data:image/<jpeg|png|webp|gif>;base64,<data>."},
    "embedding_types": {
        "type": "array",
        "items": {"enum": list(EMBEDDING_TYPES)},
        "description": "float, base64 (little-endian float32), binary, ubinary (sign bits, most significant first). "
        "int8 and uint8 are a 400.",
    },
    "truncate": {
        "enum": [*TRUNCATE, None],
        "description": "END (default): cut the end; START: cut the start; NONE: 400.",
    },
}
_V2_REQUEST = {
    "type": "object",
    "description": "Exactly one of texts, images and inputs.",
    "properties": {
        **_COMMON,
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "object", "required": ["content"], "properties": {"content": {"type": "array"}}},
            "description": "One content part each: {type: text, text} or {type: image_url, image_url: {url}}.",
        },
        "max_tokens": {"type": ["integer", "null"], "minimum": 1},
        "output_dimension": {"type": ["integer", "null"], "description": "Only the model's width."},
        "priority": {"type": "integer", "description": "Accepted and ignored."},
    },
}
_V1_REQUEST = {"type": "object", "description": "Exactly one of texts and images.", "properties": _COMMON}
_VECTORS = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
_BYTES = {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
_BY_TYPE = {
    "type": "object",
    "properties": {
        "float": _VECTORS,
        "base64": {"type": "array", "items": {"type": "string"}},
        "binary": _BYTES,
        "ubinary": _BYTES,
    },
    "description": "Only the requested types, each parallel to the inputs; vectors of unit length.",
}
_META = {
    "type": "object",
    "properties": {
        "api_version": {"type": "object", "properties": {"version": {"type": "string"}}},
        "billed_units": {
            "type": "object",
            "properties": {"input_tokens": {"type": "integer"}, "images": {"type": "integer"}},
        },
    },
}
_IMAGES = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["width", "height", "format", "bit_depth"],
        "properties": {
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "format": {"type": "string"},
            "bit_depth": {"type": "integer"},
        },
    },
}
_RESPONSE_PROPERTIES = {
    "id": {"type": "string"},
    "texts": {"type": "array", "items": {"type": "string"}},
    "images": _IMAGES,
    "meta": _META,
}
_V2_RESPONSE = {
    "type": "object",
    "required": ["id", "response_type", "embeddings", "meta"],
    "properties": {**_RESPONSE_PROPERTIES, "response_type": {"const": "embeddings_by_type"}, "embeddings": _BY_TYPE},
}
_V1_RESPONSE = {
    "type": "object",
    "required": ["id", "response_type", "embeddings", "texts", "meta"],
    "properties": {
        **_RESPONSE_PROPERTIES,
        "response_type": {"enum": ["embeddings_floats", "embeddings_by_type"]},
        "embeddings": {"anyOf": [_VECTORS, _BY_TYPE], "description": "Floats unless embedding_types was sent."},
    },
}
_META_EXAMPLE = {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 7, "images": 1}}
_RAISES = (UnknownModel("Model 'embed-v4.0' is not served here."), TextTooLong(0, 90, 77, asked=True))
V2_DOC = Doc(
    summary="Embed texts, images or inputs (Cohere Embed v2)",
    request=_V2_REQUEST,
    example={
        "model": "embed-v4.0",
        "input_type": "search_document",
        "inputs": [
            {"content": [{"type": "text", "text": "a photo of a cat"}]},
            {"content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_PNG}"}}]},
        ],
        "embedding_types": ["float", "ubinary"],
    },
    response=_V2_RESPONSE,
    response_example={
        "id": "5d5b0e8e-7a59-4c4c-9d8e-2f1f0f6f5d3a",
        "response_type": "embeddings_by_type",
        "embeddings": {"float": [[0.0215, -0.0087], [0.0112, 0.0304]], "ubinary": [[170], [85]]},
        "images": [{"width": 4, "height": 4, "format": "png", "bit_depth": 8}],
        "meta": _META_EXAMPLE,
    },
    raises=_RAISES,
)
V1_DOC = Doc(
    summary="Embed texts or images (Cohere Embed v1)",
    request=_V1_REQUEST,
    example={"model": "embed-english-v3.0", "input_type": "search_document", "texts": ["a photo of a cat", "a dog"]},
    response=_V1_RESPONSE,
    response_example={
        "id": "5d5b0e8e-7a59-4c4c-9d8e-2f1f0f6f5d3a",
        "response_type": "embeddings_floats",
        "embeddings": [[0.0215, -0.0087], [0.0112, 0.0304]],
        "texts": ["a photo of a cat", "a dog"],
        "meta": {"api_version": {"version": "1"}, "billed_units": {"input_tokens": 11}},
    },
    raises=_RAISES,
)
ERROR = {
    "type": "object",
    "required": ["id", "message"],
    "properties": {"id": {"type": "string"}, "message": {"type": "string"}},
}
AUTH = {"bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"}}

ADAPTER = Adapter(
    name="cohere",
    operations=(
        Operation("/v2/embed", parse=parse_v2, render=render_embed, doc=V2_DOC),
        Operation("/v1/embed", parse=parse_v1, render=render_embed, doc=V1_DOC),
    ),
    render_error=render_error,
    credential=credential,
    response_headers=response_headers,
    settings=CohereSettings,
    description="Cohere Embed, as the cohere package's ClientV2 and Client (and langchain-cohere) call it; "
    "unit-length vectors, as Cohere's are.",
    error_schema=ERROR,
    auth=AUTH,
)
