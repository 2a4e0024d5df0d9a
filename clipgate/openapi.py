"""The API's description: one OpenAPI 3.1 document of the core's probes and every enabled
protocol's routes under their prefixes, built from what each adapter declares next to its routes
(`Operation.doc`, `Adapter.error_schema`, `Adapter.auth`) and from its own `render_error`, so a
new protocol documents itself. Served at `GET /openapi.json` (clipgate.docs)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from clipgate.adapter import Adapter, Operation, Reply
from clipgate.canonical import RequestMeta
from clipgate.config import Config
from clipgate.errors import (
    ClipgateError,
    DeadlineExceeded,
    HeaderTooLarge,
    ImageError,
    InternalError,
    InvalidRequest,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    SchemaError,
    Unauthorized,
    UnknownModel,
    UnsupportedMediaType,
)

OPENAPI = "3.1.0"
CORE_TAG = "clipgate"
ANY: dict[str, Any] = {}  # any JSON value: the answer of an operation that declares no schema
OBJECT: dict[str, Any] = {"type": "object"}  # the body of an operation that declares no schema
_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")  # Starlette's {name} and {name:convertor}

# Why each error is answered: the description of its status in the document.
CAUSES: dict[type[ClipgateError], str] = {
    InvalidRequest: "the body is not what the operation takes, or holds nothing to embed, or a text is too long",
    ImageError: "an image cannot be read: bad base64, not an image in an accepted format, or a URL refused",
    SchemaError: "the body is empty, is not JSON, nests too deep, or does not have the operation's shape",
    Unauthorized: "the key is missing or wrong (only once the protocol's `keys` are set)",
    UnknownModel: "the request names a model this server does not serve",
    RequestTimeout: "the body did not arrive within `server.request_timeout_s`",
    PayloadTooLarge: "the body, an image, or the number of images or texts is over its limit",
    UnsupportedMediaType: "the body is not sent as application/json",
    HeaderTooLarge: "the x-request-id header is longer than 100 characters",
    Overloaded: "the queue, the requests in flight or the body budget is full; retry after Retry-After",
    DeadlineExceeded: "the request was not answered within `server.request_timeout_s`; retry later",
    NotReady: "the model is not loaded and warm yet; retry after Retry-After",
    InternalError: "an unexpected error; its traceback goes to the server's log, never to the caller",
}

# The core's probes (clipgate.probes) and /metrics (clipgate.app), described here to keep this
# module free of web code.
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
CORE_PATHS: dict[str, dict[str, Any]] = {
    "/livez": {
        "get": {
            "tags": [CORE_TAG],
            "operationId": "clipgate_get_livez",
            "summary": "Liveness: 200 while the process serves",
            "responses": {
                "200": {
                    "description": "Alive",
                    "content": {"application/json": {"schema": _STATUS, "example": {"status": "alive"}}},
                }
            },
            "security": [],
        }
    },
    "/readyz": {
        "get": {
            "tags": [CORE_TAG],
            "operationId": "clipgate_get_readyz",
            "summary": "Readiness: 200 once the model is loaded and warm, 503 while loading or draining",
            "responses": {
                "200": {
                    "description": "Ready",
                    "content": {"application/json": {"schema": _STATUS, "example": {"status": "ready"}}},
                },
                "503": {
                    "description": "Not ready: the model is loading, or the server is draining",
                    "headers": {"Retry-After": {"schema": {"type": "string"}}},
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["status", "reason"],
                                "properties": {"status": {"const": "not ready"}, "reason": {"type": "string"}},
                            },
                            "example": {"status": "not ready", "reason": "loading"},
                        }
                    },
                },
            },
            "security": [],
        }
    },
}

METRICS: dict[str, Any] = {
    "get": {
        "tags": [CORE_TAG],
        "operationId": "clipgate_get_metrics",
        "summary": "Prometheus metrics, in its text format",
        "description": "Served here while `server.metrics` is on and `server.metrics_port` is 0; "
        "on a port of its own otherwise.",
        "responses": {
            "200": {
                "description": "The metrics",
                "content": {
                    "text/plain": {
                        "schema": {"type": "string"},
                        "example": "# TYPE clipgate_ready gauge\nclipgate_ready 1.0\n",
                    }
                },
            }
        },
        "security": [],
    }
}


FAULT = {
    "description": "A fault (clipgate.faults): what goes wrong and for which requests.",
    "type": "object",
    "properties": {
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "retry_after": {"type": "integer", "minimum": 0},
        "delay_ms": {"oneOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]},
        "hang": {"type": "boolean"},
        "reset": {"type": "boolean"},
        "truncate": {"type": "integer", "minimum": 0},
        "dribble": {"type": "integer", "minimum": 1},
        "protocol": {"type": "string"},
        "route": {"type": "string"},
        "first": {"type": "integer", "minimum": 0},
        "every": {"type": "integer", "minimum": 1},
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
        "seed": {"type": "integer"},
    },
    "additionalProperties": False,
}
_FAULTS_ANSWER = {
    "description": "The faults set, each with how often it matched and applied",
    "content": {"application/json": {"schema": {"type": "object", "properties": {"faults": {"type": "array"}}}}},
}
_ADMIN_REFUSED = {
    "description": "No or a wrong admin key",
    "content": {"application/json": {"schema": {"type": "object"}}},
}


def _admin(method: str, summary: str, **extra: Any) -> dict[str, Any]:
    return {
        "tags": [CORE_TAG],
        "operationId": f"clipgate_{method}_admin_faults",
        "summary": summary,
        "responses": {"200": _FAULTS_ANSWER, "401": _ADMIN_REFUSED, **extra.pop("responses", {})},
        "security": [{"clipgate_admin": []}],
        **extra,
    }


ADMIN: dict[str, Any] = {  # mounted while [faults] enabled
    "get": _admin("get", "The faults set"),
    "post": _admin(
        "post",
        "Add faults: a fault, a list of them, or the X-Clipgate-Fault vocabulary as text/plain",
        requestBody={
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"oneOf": [FAULT, {"type": "array", "items": FAULT}]},
                    "example": {"status": 503, "retry_after": 1, "first": 2},
                },
                "text/plain": {"schema": {"type": "string"}, "example": "status=503;retry-after=1;first=2"},
            },
        },
        responses={"400": {"description": "Not a fault"}, "413": {"description": "Too many faults at once"}},
    ),
    "delete": _admin("delete", "Clear every fault"),
}


def protocol_prefix(config: Config, name: str) -> str:
    """A protocol's prefix as its routes are mounted: "" or "/segment[/...]" (clipgate.app)."""
    prefix = config.protocol(name).prefix.strip("/")
    return "/" + prefix if prefix else ""


def mount_path(prefix: str, path: str) -> str:
    """Where an operation is mounted: its path under the prefix; "/" is the prefix itself."""
    return (prefix + path) if path != "/" or not prefix else prefix


def document(config: Config, registry: Mapping[str, Adapter], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the app that `config` and `registry` make."""
    paths: dict[str, dict[str, Any]] = {path: dict(item) for path, item in CORE_PATHS.items()}
    if config.server.metrics and config.server.metrics_port == 0:
        paths["/metrics"] = dict(METRICS)
    if config.faults.enabled:
        paths["/admin/faults"] = dict(ADMIN)
    tags = [{"name": CORE_TAG, "description": "The core's own routes: probes and metrics, never under a prefix."}]
    schemas: dict[str, Any] = {}
    schemes: dict[str, Any] = {}
    if config.faults.enabled:
        schemes["clipgate_admin"] = {"type": "http", "scheme": "bearer", "description": "faults.admin_key"}
    for name, adapter in registry.items():
        settings = config.protocol(name)
        if not settings.enabled:
            continue
        prefix = protocol_prefix(config, name)
        where = f" Mounted under `{prefix}`." if prefix else ""
        tags.append({"name": name, "description": (adapter.description or f"The {name} protocol.") + where})
        error = {"$ref": f"#/components/schemas/{name}_error"}
        schemas[f"{name}_error"] = dict(adapter.error_schema) if adapter.error_schema is not None else ANY
        for key, scheme in adapter.auth.items():
            schemes[f"{name}_{key}"] = dict(scheme)
        for op in adapter.operations:
            item = paths.setdefault(mount_path(prefix, _PARAM.sub(r"{\1}", op.path)), {})  # {name:path}: {name}
            for method in op.methods:
                item[method.lower()] = _operation(adapter, op, method, error, bool(settings.keys))
    return {
        "openapi": OPENAPI,
        "info": {
            "title": "clipgate",
            "version": version,
            "summary": "One CLIP model behind the SambaStudio, Azure ML, Roboflow, OpenAI and Cohere wire formats.",
            "description": (
                "Each enabled protocol is one section, its routes under its prefix, its errors in its "
                "vendor's shape. A method a route does not take gets 405 in that shape, with Allow; a path "
                "no route serves gets 404. Auth is off until a protocol's `keys` are set. This document is "
                "`GET /openapi.json`; `GET /docs` shows it."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": tags,
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": schemes},
    }


def _operation(adapter: Adapter, op: Operation, method: str, error: Mapping[str, Any], keyed: bool) -> dict[str, Any]:
    doc = op.doc
    slug = re.sub(r"[^A-Za-z0-9]+", "_", _PARAM.sub(r"\1", op.path)).strip("_") or "root"
    operation: dict[str, Any] = {
        "tags": [adapter.name],
        "operationId": f"{adapter.name}_{method.lower()}_{slug}",
        "summary": doc.summary or f"{method} {op.path}",
    }
    if doc.description:
        operation["description"] = doc.description
    params = _PARAM.findall(op.path)
    if params:
        operation["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": dict(doc.params.get(p, {"type": "string"}))}
            for p in params
        ]
    if op.body != "none" and method in ("POST", "PUT", "PATCH"):
        media = "multipart/form-data" if op.body == "multipart" else "application/json"
        content: dict[str, Any] = {"schema": dict(doc.request) if doc.request is not None else OBJECT}
        if doc.example is not None:
            content["example"] = doc.example
        operation["requestBody"] = {"required": True, "content": {media: content}}
    common = _common_headers(adapter)
    ok: dict[str, Any] = {"schema": dict(doc.response) if doc.response is not None else ANY}
    if doc.response_example is not None:
        ok["example"] = doc.response_example
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {doc.response_type: ok}}}
    responses.update(_error_responses(adapter, op, error, common))
    own = {str(status): (text, schema) for status, (text, schema) in doc.responses.items()}
    for status, (description, schema) in own.items():
        responses[status] = {"description": description, "content": {"application/json": {"schema": schema}}}
    for status in ("200", *own):
        if common:
            responses[status]["headers"] = dict(common)
    operation["responses"] = dict(sorted(responses.items()))
    if op.public:
        operation["security"] = []
    elif adapter.auth:
        # Each scheme is one way to send the key; with no keys set, none is needed.
        operation["security"] = [{f"{adapter.name}_{key}": []} for key in adapter.auth] + ([] if keyed else [{}])
    return operation


def _errors(adapter: Adapter, op: Operation) -> list[ClipgateError]:
    """The errors an operation may answer: those the core raises for every route of its kind,
    then those of its own rules (`Doc.raises`)."""
    found: list[ClipgateError] = [HeaderTooLarge("x-request-id is longer than 100 characters.")]
    if op.respond is None:  # an embedding route: the core reads its body, checks the key, embeds
        found += [InvalidRequest("The request holds nothing to embed.")]
        if "image" in op.carries:
            found.append(ImageError("Malformed base64 input image."))
        if op.body == "json":
            found.append(SchemaError("The request body is not valid JSON: unexpected character", kind="json_invalid"))
            if adapter.json_content_type_required:
                found.append(UnsupportedMediaType("Expects Content-Type to be application/json"))
        if not op.public:
            found.append(Unauthorized("A credential is required."))
        found += [RequestTimeout(), PayloadTooLarge(), Overloaded(), DeadlineExceeded(), NotReady()]
    found += op.doc.raises
    found.append(InternalError())
    return found


def _render(adapter: Adapter, err: ClipgateError) -> Reply:
    try:
        return adapter.render_error(err)
    except Exception:  # noqa: BLE001 - what clipgate.http answers when a renderer fails
        return Reply(err.status, {"message": err.message})


def _error_responses(
    adapter: Adapter, op: Operation, error: Mapping[str, Any], common: Mapping[str, Any]
) -> dict[str, Any]:
    """The operation's errors as the adapter renders them, grouped by status, each with its
    rendered body as a named example."""
    responses: dict[str, Any] = {}
    for err in _errors(adapter, op):
        reply = _render(adapter, err)
        status = str(reply.status)
        media = reply.media_type or ("text/plain" if isinstance(reply.body, str) else "application/json")
        kind = type(err).__name__
        cause = CAUSES.get(type(err), kind)
        response = responses.setdefault(
            status,
            {"description": _phrase(reply.status), "headers": dict(common), "content": {}},
        )
        response["description"] += f"\n- {cause}"
        headers = {**reply.headers, **err.headers, **({"Retry-After": "1"} if err.retry_after is not None else {})}
        for header in headers:
            response["headers"].setdefault(header, {"schema": {"type": "string"}})
        body = response["content"].setdefault(
            media, {"schema": error if media == "application/json" else {"type": "string"}, "examples": {}}
        )
        body["examples"].setdefault(kind, {"summary": cause, "value": reply.body})
    for response in responses.values():
        if not response["headers"]:
            del response["headers"]
    return responses


def _common_headers(adapter: Adapter) -> dict[str, Any]:
    """Headers the adapter adds to every answer (`response_headers`), read off a sample request."""
    sample = RequestMeta(method="GET", path="/", headers={}, query={}, request_id="sample")
    try:
        names = list(adapter.response_headers(sample))
    except Exception:  # noqa: BLE001 - a hook that needs more of the request documents nothing
        names = []
    return {name: {"schema": {"type": "string"}} for name in names}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
