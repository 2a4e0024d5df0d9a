"""Roboflow Inference Server CLIP routes (`/clip/*`), as roboflow/inference 1.5 serves them and its
`inference_sdk` calls them (shared/reference/protocols.md §1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clipgate.adapter import Adapter, Body, Doc, Operation, Reply, ServerState, bearer_token
from clipgate.canonical import (
    JSON,
    EmbedRequest,
    EmbedResult,
    ImageInput,
    Item,
    RequestMeta,
    TextInput,
)
from clipgate.errors import ClipgateError, ImageError, InvalidRequest, NotReady, SchemaError, Unauthorized, UnknownModel

NOT_FOUND = (
    "Requested Roboflow resource not found. Make sure that workspace, project or model you referred in request exists."
)
# Types Roboflow knows but that cannot work here: in-process objects, pickles, server-side files.
REFUSED_TYPES = {
    "numpy": "NumPy image type is not supported by this server.",
    "numpy_object": "NumPy object image type is not supported over HTTP.",
    "pil": "PIL image type is not supported over HTTP.",
    "multipart": "Multipart image type is not supported on this route; send base64.",
    "file": "Loading images from the server's file system is not supported.",
}


def _object(body: Body) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise SchemaError(
            "Input should be a valid dictionary or object to extract fields from",
            loc=("body",),
            kind="model_attributes_type",
        )
    return body


def _field(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise SchemaError("Field required", loc=("body", name), kind="missing")
    return body[name]


def _model(body: dict[str, Any]) -> str | None:
    version = body.get("clip_version_id")
    if version is not None and not isinstance(version, str):
        raise SchemaError("Input should be a valid string", loc=("body", "clip_version_id"), kind="string_type")
    return version


def _image(value: Any, loc: tuple[str | int, ...]) -> ImageInput:
    """An image object `{"type": ..., "value": ...}`."""
    if not isinstance(value, dict):
        raise SchemaError(
            "Input should be a valid dictionary or object to extract fields from", loc=loc, kind="model_attributes_type"
        )
    kind, data = value.get("type"), value.get("value")
    if not isinstance(kind, str):
        raise SchemaError(
            "Field required" if kind is None else "Input should be a valid string",
            loc=(*loc, "type"),
            kind="missing" if kind is None else "string_type",
        )
    kind = kind.lower()
    if kind in REFUSED_TYPES:
        raise ImageError(REFUSED_TYPES[kind])
    if kind not in ("base64", "url"):
        raise ImageError("Image declaration contains not recognised image type.")
    if not isinstance(data, str):
        raise ImageError("Empty image payload." if data is None else f"The {kind} image value must be a string.")
    return ImageInput(url=data) if kind == "url" else ImageInput(base64=data)


def _untyped_image(value: Any, loc: tuple[str | int, ...]) -> ImageInput:
    """Compare also takes a bare string where an image goes: a URL if it starts with http, else base64."""
    if isinstance(value, str):
        return ImageInput(url=value) if value.startswith("http") else ImageInput(base64=value)
    return _image(value, loc)


def _text(value: Any, loc: tuple[str | int, ...]) -> TextInput:
    if not isinstance(value, str):
        raise SchemaError("Input should be a valid string", loc=loc, kind="string_type")
    return TextInput(value)


def parse_embed_image(body: Body, meta: RequestMeta) -> EmbedRequest:
    obj = _object(body)
    value = _field(obj, "image")
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        raise InvalidRequest("The image list is empty.")
    items = [
        _image(v, ("body", "image", i) if isinstance(value, list) else ("body", "image")) for i, v in enumerate(values)
    ]
    return EmbedRequest(items=items, model=_model(obj))


def parse_embed_text(body: Body, meta: RequestMeta) -> EmbedRequest:
    obj = _object(body)
    value = _field(obj, "text")
    if isinstance(value, list):
        if not value:
            raise InvalidRequest("The text list is empty.")
        items = [_text(v, ("body", "text", i)) for i, v in enumerate(value)]
    else:
        items = [_text(value, ("body", "text"))]
    return EmbedRequest(items=items, model=_model(obj))


def parse_compare(body: Body, meta: RequestMeta) -> EmbedRequest:
    obj = _object(body)
    subject, prompt = _field(obj, "subject"), _field(obj, "prompt")
    subject_type = obj.get("subject_type", "image")
    prompt_type = obj.get("prompt_type", "text")
    for name, kind in (("subject_type", subject_type), ("prompt_type", prompt_type)):
        if kind not in ("image", "text"):
            raise InvalidRequest(f"{name} must be 'image' or 'text', not {kind!r}.")
    keys: list[str] | None = None
    if isinstance(prompt, dict) and not ("type" in prompt and "value" in prompt):
        keys = list(prompt)
        prompts = list(prompt.values())
    else:
        prompts = prompt if isinstance(prompt, list) else [prompt]
    if not prompts:
        raise InvalidRequest("There are no prompts to compare with.")

    def one(value: Any, kind: str, loc: tuple[str | int, ...]) -> Item:
        return _text(value, loc) if kind == "text" else _untyped_image(value, loc)

    names: list[str | int] = list(keys) if keys is not None else list(range(len(prompts)))
    items = [one(subject, subject_type, ("body", "subject"))]
    items += [one(p, prompt_type, ("body", "prompt", k)) for k, p in zip(names, prompts, strict=True)]
    return EmbedRequest(items=items, model=_model(obj), context=keys)


def _base(result: EmbedResult) -> dict[str, JSON]:
    return {"inference_id": None, "frame_id": None, "time": result.elapsed_s}


def render_embeddings(result: EmbedResult, request: EmbedRequest) -> JSON:
    return {**_base(result), "embeddings": list(result.vectors)}


def render_compare(result: EmbedResult, request: EmbedRequest) -> JSON:
    scores = [result.cosine(0, i) for i in range(1, len(result.vectors))]
    keys: list[str] | None = request.context
    similarity: JSON = dict(zip(keys, scores, strict=True)) if keys is not None else scores
    return {**_base(result), "similarity": similarity, "parent_id": None}


def render_error(err: ClipgateError) -> Reply:
    if isinstance(err, SchemaError):
        return Reply(422, {"detail": [{"type": err.kind, "loc": list(err.loc), "msg": err.message}]})
    if isinstance(err, ImageError):
        return Reply(err.status, {"message": f"Could not load input image. Cause: {err.message}"})
    if isinstance(err, UnknownModel):
        return Reply(404, {"message": NOT_FOUND})
    if isinstance(err, Unauthorized):
        return Reply(401, {"status": 401, "message": "Unauthorized api_key"})
    if isinstance(err, NotReady):
        return Reply(503, {"message": "Model is temporarily not ready - retry request."})
    return Reply(err.status, {"message": err.message})


def credential(body: Body, meta: RequestMeta) -> str | None:
    """Roboflow's order: `?api_key=`, then `Authorization: Bearer`, then the body's `api_key`."""
    if meta.query.get("api_key"):
        return meta.query["api_key"]
    token = bearer_token(meta)
    if token is not None:
        return token
    if isinstance(body, dict) and isinstance(body.get("api_key"), str):
        return str(body["api_key"])
    return None


def info(state: ServerState, meta: RequestMeta) -> Reply:
    # `replica` is clipgate's own addition (the SDK reads name, version and uuid, and ignores the rest):
    # which replica answered, as in the X-Clipgate-Replica header, when several serve behind one address.
    body = {"name": "clipgate", "version": state.version, "uuid": state.instance_id, "replica": state.replica_id}
    return Reply(200, body)


def healthz(state: ServerState, meta: RequestMeta) -> Reply:
    return Reply(200, {"status": "healthy"})


def readiness(state: ServerState, meta: RequestMeta) -> Reply:
    if state.ready:
        return Reply(200, {"status": "ready"})
    return Reply(503, {"status": "not ready"}, headers={"Retry-After": "1"})


def model_registry(state: ServerState, meta: RequestMeta) -> Reply:
    card = state.card
    models: list[Mapping[str, JSON]] = []
    if card is not None:
        models.append(
            {
                "model_id": f"clip/{card.alias}",
                "task_type": "embedding",
                "batch_size": None,
                "input_height": card.image_size,
                "input_width": card.image_size,
            }
        )
    return Reply(200, {"models": models})


# --- How these routes are described in GET /openapi.json ------------------------------------------

_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAFElEQVR42mM8ISfHAANMDEgANwcANHYBDH++Xo4AAAAASUVORK5CYII="
_VECTOR = {
    "type": "array",
    "items": {"type": "number"},
    "description": "One embedding: the model's raw projection, unnormalized (512 floats for ViT-B/32).",
}
_IMAGE = {
    "type": "object",
    "required": ["type", "value"],
    "properties": {
        "type": {
            "type": "string",
            "enum": ["base64", "url"],
            "description": "base64 (a data: prefix and line breaks are fine), or url when the server allows image "
            "URLs (images.allow_url). Roboflow's numpy, numpy_object, pil, multipart and file are refused.",
        },
        "value": {"type": "string"},
    },
}
_COMMON = {
    "clip_version_id": {
        "type": ["string", "null"],
        "description": "The model the caller expects, e.g. ViT-B-32; omitted or null: the served one; another: 404.",
    },
    "api_key": {"type": ["string", "null"], "description": "The key, when the client sends it in the body."},
}
_BASE = {
    "inference_id": {"type": ["string", "null"]},
    "frame_id": {"type": ["integer", "null"]},
    "time": {"type": "number", "description": "Seconds the request took."},
}
_EMBEDDINGS = {
    "type": "object",
    "required": ["inference_id", "frame_id", "time", "embeddings"],
    "properties": {**_BASE, "embeddings": {"type": "array", "items": _VECTOR, "description": "One row per input."}},
}
_MODEL = (UnknownModel(),)
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}

EMBED_IMAGE = Doc(
    summary="Embed one image or a list of images",
    request={
        "type": "object",
        "required": ["image"],
        "properties": {"image": {"anyOf": [_IMAGE, {"type": "array", "items": _IMAGE, "minItems": 1}]}, **_COMMON},
    },
    example={"image": {"type": "base64", "value": _PNG}, "clip_version_id": None},
    response=_EMBEDDINGS,
    response_example={"inference_id": None, "frame_id": None, "time": 0.012, "embeddings": [[0.0215, -0.0087]]},
    raises=_MODEL,
)
EMBED_TEXT = Doc(
    summary="Embed one text or a list of texts",
    request={
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
            **_COMMON,
        },
    },
    example={"text": ["a photo of a cat", "a dog"]},
    response=_EMBEDDINGS,
    response_example={
        "inference_id": None,
        "frame_id": None,
        "time": 0.004,
        "embeddings": [[0.41, -0.13], [0.2, 0.07]],
    },
    raises=_MODEL,
)
_SIDE = {
    "anyOf": [{"type": "string"}, _IMAGE],
    "description": "A text, an image object, or a string read as an image "
    "(a URL when it starts with http, else base64) when its type is image.",
}
COMPARE = Doc(
    summary="Cosine similarity of a subject to each prompt",
    description="A list of prompts (or one) gives a list of similarities in their order; a mapping of names to "
    "prompts gives a mapping. An object with both `type` and `value` is one image, not a mapping.",
    request={
        "type": "object",
        "required": ["subject", "prompt"],
        "properties": {
            "subject": _SIDE,
            "subject_type": {"enum": ["image", "text"], "default": "image"},
            "prompt": {
                "anyOf": [
                    _SIDE,
                    {"type": "array", "items": _SIDE, "minItems": 1},
                    {"type": "object", "additionalProperties": _SIDE, "minProperties": 1},
                ]
            },
            "prompt_type": {"enum": ["image", "text"], "default": "text"},
            **_COMMON,
        },
    },
    example={"subject": {"type": "base64", "value": _PNG}, "prompt": {"cat": "a photo of a cat", "dog": "a dog"}},
    response={
        "type": "object",
        "required": ["inference_id", "frame_id", "time", "similarity", "parent_id"],
        "properties": {
            **_BASE,
            "similarity": {
                "anyOf": [
                    {"type": "array", "items": {"type": "number"}},
                    {"type": "object", "additionalProperties": {"type": "number"}},
                ]
            },
            "parent_id": {"type": ["string", "null"]},
        },
    },
    response_example={
        "inference_id": None,
        "frame_id": None,
        "time": 0.02,
        "similarity": {"cat": 0.27, "dog": 0.18},
        "parent_id": None,
    },
    raises=_MODEL,
)
INFO = Doc(
    summary="The server's name, version, instance id and replica",
    description="`replica` is clipgate's addition: the replica that answered, as in the X-Clipgate-Replica header.",
    response={
        "type": "object",
        "required": ["name", "version", "uuid"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "uuid": {"type": "string"},
            "replica": {"type": "string"},
        },
    },
    response_example={
        "name": "clipgate",
        "version": "0.1.0",
        "uuid": "9f1c2b7a0d4e4f55a1b2c3d4e5f60718",
        "replica": "gpu-node-3:4121",
    },
)
HEALTHZ = Doc(summary="Liveness: always healthy", response=_STATUS, response_example={"status": "healthy"})
READINESS = Doc(
    summary="Readiness: 200 once the model is loaded and warm, else 503",
    response=_STATUS,
    response_example={"status": "ready"},
    responses={503: ("Not ready: the model is loading, or the server is draining (Retry-After: 1)", _STATUS)},
)
MODEL_REGISTRY = Doc(
    summary="The model this server serves, as inference_sdk's list_loaded_models reads it",
    response={
        "type": "object",
        "required": ["models"],
        "properties": {
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["model_id", "task_type"],
                    "properties": {
                        "model_id": {"type": "string"},
                        "task_type": {"type": "string"},
                        "batch_size": {"type": ["integer", "null"]},
                        "input_height": {"type": ["integer", "null"]},
                        "input_width": {"type": ["integer", "null"]},
                    },
                },
            }
        },
    },
    response_example={
        "models": [
            {
                "model_id": "clip/ViT-B-32",
                "task_type": "embedding",
                "batch_size": None,
                "input_height": 224,
                "input_width": 224,
            }
        ]
    },
)
ERROR = {
    "anyOf": [
        {
            "type": "object",
            "required": ["message"],
            "properties": {"message": {"type": "string"}, "status": {"type": "integer"}},
        },
        {
            "type": "object",
            "required": ["detail"],
            "description": "A body that does not have the operation's shape (FastAPI's validation error).",
            "properties": {
                "detail": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "loc", "msg"],
                        "properties": {
                            "type": {"type": "string"},
                            "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                            "msg": {"type": "string"},
                        },
                    },
                }
            },
        },
    ]
}
AUTH = {
    "api_key_query": {"type": "apiKey", "in": "query", "name": "api_key", "description": "`?api_key=<key>`"},
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
}


ADAPTER = Adapter(
    name="roboflow",
    operations=(
        Operation(
            "/clip/embed_image", parse=parse_embed_image, render=render_embeddings, carries=("image",), doc=EMBED_IMAGE
        ),
        Operation(
            "/clip/embed_text", parse=parse_embed_text, render=render_embeddings, carries=("text",), doc=EMBED_TEXT
        ),
        Operation("/clip/compare", parse=parse_compare, render=render_compare, doc=COMPARE),
        Operation("/info", methods=("GET",), body="none", respond=info, public=True, doc=INFO),
        Operation("/healthz", methods=("GET",), body="none", respond=healthz, public=True, doc=HEALTHZ),
        Operation("/readiness", methods=("GET",), body="none", respond=readiness, public=True, doc=READINESS),
        Operation(
            "/model/registry", methods=("GET",), body="none", respond=model_registry, public=True, doc=MODEL_REGISTRY
        ),
    ),
    render_error=render_error,
    credential=credential,
    body_credential=True,
    description="Roboflow Inference Server CLIP routes, as roboflow/inference 1.5 serves them and its "
    "inference_sdk calls them. The key also goes in the body's `api_key`.",
    error_schema=ERROR,
    auth=AUTH,
)
