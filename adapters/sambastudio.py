"""SambaStudio predict APIs for CLIP: the `file` and `nlp` families the CLIP app documents, and the
generic v1/v2 APIs that langchain's `SambaStudioEmbeddings` uses (shared/reference/protocols.md §2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clipgate.adapter import Adapter, Body, Doc, Operation, Reply
from clipgate.canonical import JSON, EmbedRequest, EmbedResult, FormPart, ImageInput, RequestMeta, TextInput
from clipgate.errors import ClipgateError, InvalidRequest, SchemaError

FILE_FIELD = "predict_file"


def _object(body: Body) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise InvalidRequest("params must be an object (typed {name: {type, value}} or plain {name: value}).")
    return body


def _texts(body: dict[str, Any], field: str) -> list[TextInput]:
    value = body.get(field)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InvalidRequest(f"{field} must be a list of strings.")
    if not value:
        raise InvalidRequest(f"{field} is empty; there is nothing to embed.")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise InvalidRequest(f"{field}[{i}] must be a string.")
    return [TextInput(text) for text in value]


def parse_file(body: Body, meta: RequestMeta) -> EmbedRequest:
    parts: Sequence[FormPart] = body if isinstance(body, list) else []
    files = [p for p in parts if p.name == FILE_FIELD]
    if not files:
        raise InvalidRequest(f"The multipart body has no '{FILE_FIELD}' part holding the image.")
    return EmbedRequest(items=[ImageInput(data=p.data) for p in files])


def parse_nlp(body: Body, meta: RequestMeta) -> EmbedRequest:
    return EmbedRequest(items=_texts(_object(body), "inputs"))


def parse_generic_v1(body: Body, meta: RequestMeta) -> EmbedRequest:
    return EmbedRequest(items=_texts(_object(body), "instances"))


def parse_generic_v2(body: Body, meta: RequestMeta) -> EmbedRequest:
    items = _object(body).get("items")
    if not isinstance(items, list) or not items:
        raise InvalidRequest("items must be a non-empty list of {id, value} objects.")
    ids: list[str] = []
    texts: list[TextInput] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            raise InvalidRequest(f"items[{i}] must be an object with a string value.")
        item_id = item.get("id", str(i))
        if not isinstance(item_id, str) or "#" in item_id:
            raise InvalidRequest(f"items[{i}].id must be a string without '#'.")
        ids.append(item_id)
        texts.append(TextInput(item["value"]))
    if len(set(ids)) != len(ids):
        raise InvalidRequest("item ids must be unique.")
    return EmbedRequest(items=texts, context=ids)


def render_data(result: EmbedResult, request: EmbedRequest) -> JSON:
    return {"data": list(result.vectors), "status_code": 200}


def render_predictions(result: EmbedResult, request: EmbedRequest) -> JSON:
    return {"predictions": list(result.vectors)}


def render_items(result: EmbedResult, request: EmbedRequest) -> JSON:
    return {"items": [{"id": i, "value": v} for i, v in zip(request.context, result.vectors, strict=True)]}


def render_error(err: ClipgateError) -> Reply:
    # SambaStudio's error bodies are not documented; this keeps its `status_code` convention.
    status = 400 if isinstance(err, SchemaError) else err.status  # no 422s: that is FastAPI's habit
    return Reply(status, {"error": err.message, "status_code": status})


def credential(body: Body, meta: RequestMeta) -> str | None:
    return meta.headers.get("key")


# --- How these routes are described in GET /openapi.json ------------------------------------------

_VECTOR = {
    "type": "array",
    "items": {"type": "number"},
    "description": "One embedding: the model's raw projection, unnormalized (512 floats for ViT-B/32).",
}
_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "examples": ["my-project"]}
_PATH = {"project": _ID, "endpoint": {**_ID, "examples": ["my-endpoint"]}}
_PARAMS = {
    "type": ["object", "null"],
    "description": "Accepted and ignored: typed {name: {type, value}} or plain {name: value}.",
}
_TEXTS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
_DATA = {
    "type": "object",
    "required": ["data", "status_code"],
    "properties": {"data": {"type": "array", "items": _VECTOR}, "status_code": {"const": 200}},
}

FILE = Doc(
    summary="Embed an image file (the CLIP app's file API)",
    description="A multipart form whose `predict_file` part holds the image, as SambaNova's ai-starter-kit sends it.",
    request={
        "type": "object",
        "required": [FILE_FIELD],
        "properties": {
            FILE_FIELD: {
                "type": "string",
                "format": "binary",
                "contentMediaType": "application/octet-stream",
                "description": "The image file: JPEG, PNG, WebP, GIF or BMP.",
            }
        },
    },
    params=_PATH,
    response=_DATA,
    response_example={"data": [[0.0215, -0.0087]], "status_code": 200},
)
NLP = Doc(
    summary="Embed texts (the nlp predict API)",
    request={"type": "object", "required": ["inputs"], "properties": {"inputs": _TEXTS, "params": _PARAMS}},
    example={"inputs": ["a photo of a cat"]},
    params=_PATH,
    response=_DATA,
    response_example={"data": [[0.41, -0.13]], "status_code": 200},
)
GENERIC_V1 = Doc(
    summary="Embed texts (the generic v1 predict API, langchain's default)",
    request={"type": "object", "required": ["instances"], "properties": {"instances": _TEXTS, "params": _PARAMS}},
    example={"instances": ["a photo of a cat", "a dog"], "params": {}},
    params=_PATH,
    response={
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": _VECTOR}},
    },
    response_example={"predictions": [[0.41, -0.13], [0.2, 0.07]]},
)
GENERIC_V2 = Doc(
    summary="Embed texts (the generic v2 predict API)",
    description="Item ids are optional (default: the item's index), unique, and without `#`.",
    request={
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["value"],
                    "properties": {"id": {"type": "string", "pattern": "^[^#]*$"}, "value": {"type": "string"}},
                },
            },
            "params": _PARAMS,
        },
    },
    example={"items": [{"id": "item0", "value": "a photo of a cat"}], "params": {}},
    params=_PATH,
    response={
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "value"],
                    "properties": {"id": {"type": "string"}, "value": _VECTOR},
                },
            }
        },
    },
    response_example={"items": [{"id": "item0", "value": [0.41, -0.13]}]},
)
ERROR = {
    "type": "object",
    "required": ["error", "status_code"],
    "properties": {"error": {"type": "string"}, "status_code": {"type": "integer"}},
}
AUTH = {"key": {"type": "apiKey", "in": "header", "name": "key", "description": "`key: <endpoint API key>`"}}


ADAPTER = Adapter(
    name="sambastudio",
    operations=(
        Operation(
            "/api/predict/file/{project}/{endpoint}",
            body="multipart",
            parse=parse_file,
            render=render_data,
            carries=("image",),
            doc=FILE,
        ),
        Operation(
            "/api/predict/nlp/{project}/{endpoint}", parse=parse_nlp, render=render_data, carries=("text",), doc=NLP
        ),
        Operation(
            "/api/predict/generic/{project}/{endpoint}",
            parse=parse_generic_v1,
            render=render_predictions,
            carries=("text",),
            doc=GENERIC_V1,
        ),
        Operation(
            "/api/v2/predict/generic/{project}/{endpoint}",
            parse=parse_generic_v2,
            render=render_items,
            carries=("text",),
            doc=GENERIC_V2,
        ),
    ),
    render_error=render_error,
    credential=credential,
    description="SambaStudio predict APIs for CLIP: the CLIP app's file and nlp APIs, and the generic v1 and v2 "
    "APIs langchain's SambaStudioEmbeddings calls.",
    error_schema=ERROR,
    auth=AUTH,
)
