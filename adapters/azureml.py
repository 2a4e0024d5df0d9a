"""Azure ML online endpoint for `OpenAI-CLIP-Image-Text-Embeddings-vit-base-patch32`: `POST /score` with
`input_data` in pandas split form, as azureml-inference-server and the model's MLflow wrapper
define it (shared/reference/protocols.md §3). Errors follow the container, `{"message": ...}`."""

from __future__ import annotations

import re
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
from clipgate.errors import ClipgateError, InternalError, Overloaded, SchemaError

COLUMNS = ("image", "text")
UNSUPPORTED_INPUT = (
    "Embeddings cannot be retrieved for the given input. The following cases are supported: all rows in image "
    "column are populated with valid values and text column only contains empty string; all rows in text column "
    "are populated with valid values and image column only contains empty string; all rows in both columns are "
    "populated with valid values."
)
# The wrapper's URL test (vision_utils.process_image): a dotted host with a short alphabetic TLD;
# any other string is read as base64.
_URL = re.compile(r"https?://(www\.)?[-a-zA-Z0-9@:%._+~#=]{2,256}\.[a-z]{2,6}\b([-a-zA-Z0-9@:%_+.~#?&/=]*)")
_SCHEMA_MESSAGES = {
    "empty_body": "POST body is empty. Expecting a JSON dictionary.",
    "not_object": "POST body should be a JSON dictionary.",
}


def _table(body: Body) -> tuple[list[str], list[list[Any]]]:
    if not isinstance(body, dict):
        raise SchemaError(_SCHEMA_MESSAGES["not_object"], kind="not_object")
    if "input_data" not in body:
        raise SchemaError("A value is not provided for the 'input_data' parameter.", kind="missing")
    table = body["input_data"]
    if not isinstance(table, dict):
        raise SchemaError("input_data must be an object in pandas split form: {columns, index, data}.")
    columns, data, index = table.get("columns"), table.get("data"), table.get("index")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise SchemaError("input_data.columns must be a list of column names.")
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise SchemaError(f"input_data.columns must hold 'image' and 'text'; missing: {', '.join(missing)}.")
    if not isinstance(data, list) or not all(isinstance(row, list) for row in data):
        raise SchemaError("input_data.data must be a list of rows, each a list of cell values.")
    if index is not None and (not isinstance(index, list) or len(index) != len(data)):
        raise SchemaError("input_data.index must be a list as long as input_data.data.")
    for i, row in enumerate(data):
        if len(row) > len(columns):
            raise SchemaError(f"input_data.data[{i}] has {len(row)} values for {len(columns)} columns.")
    return columns, data


def _column(columns: list[str], data: list[list[Any]], name: str) -> list[str | None]:
    at = columns.index(name)
    cells: list[str | None] = []
    for i, row in enumerate(data):
        value = row[at] if at < len(row) else None  # ragged rows are padded with nulls
        if value is not None and not isinstance(value, str):
            raise SchemaError(f"input_data.data[{i}] {name}: expected a string or null, got {type(value).__name__}.")
        cells.append(value)
    return cells


def _image(value: str) -> ImageInput:
    return ImageInput(url=value) if _URL.search(value) else ImageInput(base64=value)


def parse_score(body: Body, meta: RequestMeta) -> EmbedRequest:
    columns, data = _table(body)
    images, texts = _column(columns, data, "image"), _column(columns, data, "text")
    has_images, has_text = all(images) and bool(images), all(texts) and bool(texts)
    for cells, full in ((images, has_images), (texts, has_text)):
        if not full and any(cells):
            raise SchemaError(UNSUPPORTED_INPUT)
    if not has_images and not has_text:
        raise SchemaError(UNSUPPORTED_INPUT)
    items: list[Item] = []
    for image, text in zip(images, texts, strict=True):
        if has_images:
            items.append(_image(image))  # type: ignore[arg-type]
        if has_text:
            items.append(TextInput(text))  # type: ignore[arg-type]
    return EmbedRequest(items=items, context=(has_images, has_text))


def render_score(result: EmbedResult, request: EmbedRequest) -> JSON:
    has_images, has_text = request.context
    vectors = iter(result.vectors)
    rows: list[dict[str, JSON]] = []
    for _ in range(len(result.vectors) // (int(has_images) + int(has_text))):
        row: dict[str, JSON] = {}
        if has_images:
            row["image_features"] = next(vectors)
        if has_text:
            row["text_features"] = next(vectors)
        rows.append(row)
    return rows


def render_error(err: ClipgateError) -> Reply:
    headers = {"x-ms-run-function-failed": "True"}
    if isinstance(err, SchemaError):
        message = _SCHEMA_MESSAGES.get(err.kind, err.message)
        if err.kind == "json_invalid":
            message = "POST body could not be decoded as JSON: " + err.message.split(": ", 1)[-1]
        return Reply(400, {"message": message}, headers)
    if isinstance(err, Overloaded):
        return Reply(429, {"message": "Too many pending requests. " + err.message}, headers)
    if isinstance(err, InternalError):
        return Reply(500, {"message": "An unexpected internal error occurred. Check the logs for more info."}, headers)
    return Reply(err.status, {"message": err.message}, headers)


def credential(body: Body, meta: RequestMeta) -> str | None:
    return bearer_token(meta)


def response_headers(meta: RequestMeta) -> Mapping[str, str]:
    headers = {"x-request-id": meta.request_id, "x-ms-request-id": meta.request_id, "x-ms-run-function-failed": "False"}
    client_id = meta.headers.get("x-ms-client-request-id")
    if client_id:
        headers["x-ms-client-request-id"] = client_id[:100]
    return headers


def health(state: ServerState, meta: RequestMeta) -> Reply:
    return Reply(200, "Healthy", media_type="text/plain")


def swagger(state: ServerState, meta: RequestMeta) -> Reply:
    width = state.card.dim if state.card is not None else 512
    example = {"input_data": {"columns": list(COLUMNS), "index": [0], "data": [["<base64 image or https URL>", ""]]}}
    return Reply(
        200,
        {
            "swagger": "2.0",
            "info": {"title": "clipgate (Azure ML online endpoint)", "version": state.version},
            "schemes": ["http", "https"],
            "consumes": ["application/json"],
            "produces": ["application/json"],
            "paths": {
                "/": {"get": {"operationId": "ServiceHealthCheck", "responses": {"200": {"description": "Healthy"}}}},
                "/score": {
                    "post": {
                        "operationId": "RunMLService",
                        "parameters": [
                            {
                                "name": "serviceInputPayload",
                                "in": "body",
                                "required": True,
                                "schema": {"type": "object", "example": example},
                            }
                        ],
                        "responses": {
                            "200": {
                                "description": f"One object per row: image_features and/or text_features, "
                                f"{width} floats each"
                            },
                            "400": {"description": "Bad request", "schema": {"$ref": "#/definitions/ErrorResponse"}},
                            "415": {
                                "description": "Unsupported media type",
                                "schema": {"$ref": "#/definitions/ErrorResponse"},
                            },
                        },
                    }
                },
            },
            "definitions": {"ErrorResponse": {"type": "object", "properties": {"message": {"type": "string"}}}},
        },
    )


# --- How these routes are described in GET /openapi.json ------------------------------------------

_VECTOR = {
    "type": "array",
    "items": {"type": "number"},
    "description": "One embedding: the model's raw projection, unnormalized (512 floats for ViT-B/32).",
}
SCORE = Doc(
    summary="Embed the rows of a table of images and texts",
    description="`input_data` in pandas split form, columns `image` and `text`. Every row fills the image "
    "column, or the text column, or both; the other column is all empty strings or nulls. An image is a URL "
    "(when the server allows them) or base64 (line breaks are fine). Each row gives image_features and/or "
    "text_features, as the columns are filled.",
    request={
        "type": "object",
        "required": ["input_data"],
        "properties": {
            "input_data": {
                "type": "object",
                "required": ["columns", "data"],
                "properties": {
                    "columns": {"type": "array", "items": {"type": "string"}, "examples": [list(COLUMNS)]},
                    "index": {"type": "array", "description": "Optional; as long as data."},
                    "data": {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": ["string", "null"]}},
                        "description": "Rows of cells in column order; short rows are padded with nulls.",
                    },
                },
            },
            "params": {"type": "object", "description": "Accepted and ignored."},
        },
    },
    example={"input_data": {"columns": list(COLUMNS), "index": [0], "data": [["", "a photo of a cat"]]}},
    response={
        "type": "array",
        "items": {
            "type": "object",
            "minProperties": 1,
            "properties": {"image_features": _VECTOR, "text_features": _VECTOR},
            "additionalProperties": False,
        },
    },
    response_example=[{"text_features": [0.41, -0.13]}],
)
HEALTH = Doc(
    summary="Liveness: Healthy", response={"type": "string"}, response_type="text/plain", response_example="Healthy"
)
SWAGGER = Doc(
    summary="The Azure ML container's own Swagger 2.0 document",
    response={"type": "object", "required": ["swagger", "paths"]},
    response_example={
        "swagger": "2.0",
        "info": {"title": "clipgate (Azure ML online endpoint)", "version": "0.1.0"},
        "paths": {"/score": {"post": {"operationId": "RunMLService"}}},
    },
)
ERROR = {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}
AUTH = {"bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <endpoint key>`"}}


ADAPTER = Adapter(
    name="azureml",
    operations=(
        Operation("/score", parse=parse_score, render=render_score, doc=SCORE),
        Operation("/", methods=("GET",), body="none", respond=health, public=True, doc=HEALTH),
        Operation("/swagger.json", methods=("GET",), body="none", respond=swagger, public=True, doc=SWAGGER),
    ),
    render_error=render_error,
    credential=credential,
    response_headers=response_headers,
    json_content_type_required=True,
    description="Azure ML online endpoint of OpenAI-CLIP-Image-Text-Embeddings-vit-base-patch32, errors as its "
    "container answers them.",
    error_schema=ERROR,
    auth=AUTH,
)
