"""Roboflow Inference Server CLIP routes (`/clip/*`), as roboflow/inference 1.5 serves them and its
`inference_sdk` calls them (shared/reference/protocols.md §1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clipgate.adapter import Adapter, Body, Operation, Reply, ServerState, bearer_token
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
    return Reply(200, {"name": "clipgate", "version": state.version, "uuid": state.instance_id})


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


ADAPTER = Adapter(
    name="roboflow",
    operations=(
        Operation("/clip/embed_image", parse=parse_embed_image, render=render_embeddings, carries=("image",)),
        Operation("/clip/embed_text", parse=parse_embed_text, render=render_embeddings, carries=("text",)),
        Operation("/clip/compare", parse=parse_compare, render=render_compare),
        Operation("/info", methods=("GET",), body="none", respond=info, public=True),
        Operation("/healthz", methods=("GET",), body="none", respond=healthz, public=True),
        Operation("/readiness", methods=("GET",), body="none", respond=readiness, public=True),
        Operation("/model/registry", methods=("GET",), body="none", respond=model_registry, public=True),
    ),
    render_error=render_error,
    credential=credential,
    body_credential=True,
)
