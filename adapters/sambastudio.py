"""SambaStudio predict APIs for CLIP: the `file` and `nlp` families the CLIP app documents, and the
generic v1/v2 APIs that langchain's `SambaStudioEmbeddings` uses (shared/reference/protocols.md §2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clipgate.adapter import Adapter, Body, Operation, Reply
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


ADAPTER = Adapter(
    name="sambastudio",
    operations=(
        Operation(
            "/api/predict/file/{project}/{endpoint}",
            body="multipart",
            parse=parse_file,
            render=render_data,
            carries=("image",),
        ),
        Operation("/api/predict/nlp/{project}/{endpoint}", parse=parse_nlp, render=render_data, carries=("text",)),
        Operation(
            "/api/predict/generic/{project}/{endpoint}",
            parse=parse_generic_v1,
            render=render_predictions,
            carries=("text",),
        ),
        Operation(
            "/api/v2/predict/generic/{project}/{endpoint}",
            parse=parse_generic_v2,
            render=render_items,
            carries=("text",),
        ),
    ),
    render_error=render_error,
    credential=credential,
)
