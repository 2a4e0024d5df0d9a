"""What an adapter provides: routes as data, pure parse/render functions, its error shape, its settings.

Adding a protocol is one module in `adapters/` that defines an `Adapter`, and one line in the
registry (`adapters/__init__.py`). The core mounts its routes, gives it a config table named as
the adapter is (`[name] enabled, prefix, keys` and any options of its own, each settable from the
environment as `CLIPGATE_<NAME>_<KEY>`), checks its credential, and renders every error with
its `render_error`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from clipgate.canonical import JSON, EmbedRequest, EmbedResult, FormPart, ModelCard, RequestMeta
from clipgate.errors import ClipgateError

BodyKind = Literal["json", "multipart", "none"]

Schema = Mapping[str, JSON]
"""A JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1) or an OpenAPI object, as plain data."""


@dataclass(frozen=True)
class ProtocolSettings:
    """A protocol's config table. Auth is off while `keys` is empty. An adapter with options of
    its own subclasses this (a frozen dataclass with defaults) and names it in `Adapter.settings`;
    its routes read the values from `RequestMeta.settings`."""

    enabled: bool = True
    prefix: str = ""  # mount every route under this path, e.g. "/roboflow"
    keys: tuple[str, ...] = ()  # accepted credentials, compared in constant time, never logged


@dataclass(frozen=True, slots=True)
class Reply:
    """A response in plain data. A `str` body is sent as text, anything else as JSON."""

    status: int
    body: JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = None


class ServerState(Protocol):
    """What probe and info routes may read of the running server."""

    @property
    def ready(self) -> bool: ...

    @property
    def card(self) -> ModelCard | None: ...

    @property
    def version(self) -> str: ...

    @property
    def instance_id(self) -> str: ...

    @property
    def replica_id(self) -> str: ...


Body = JSON | Sequence[FormPart] | None
"""What `parse` receives: decoded JSON, the multipart parts, or None for body-less routes."""


@dataclass(frozen=True, slots=True)
class Doc:
    """How an operation is described in `GET /openapi.json`. All optional: an operation without
    one is still listed, with generic object schemas. The errors it may answer come from the
    adapter's `render_error` and `error_schema`; `raises` adds errors of the operation's own rules
    that the core does not raise for every route of its kind (e.g. UnknownModel for a model name)."""

    summary: str = ""
    description: str = ""
    request: Schema | None = None  # the JSON body, or the multipart form's fields
    example: JSON = None  # a request body that works as it is
    response: Schema | None = None  # the 200 answer
    response_example: JSON = None
    response_type: str = "application/json"
    params: Mapping[str, Schema] = field(default_factory=dict)  # path parameters, by name
    responses: Mapping[int, tuple[str, Schema]] = field(default_factory=dict)  # other answers of its own
    raises: tuple[ClipgateError, ...] = ()  # samples, rendered for the document, never raised


@dataclass(frozen=True, slots=True)
class Operation:
    """One route. An embedding route has `parse` and `render`; any other route has `respond`."""

    path: str
    methods: tuple[str, ...] = ("POST",)
    body: BodyKind = "json"
    parse: Callable[[Body, RequestMeta], EmbedRequest] | None = None
    render: Callable[[EmbedResult, EmbedRequest], JSON] | None = None
    respond: Callable[[ServerState, RequestMeta], Reply] | None = None
    public: bool = False  # reachable without a credential (probes, info)
    carries: tuple[Literal["image", "text"], ...] = ("image", "text")  # bounds the body a route may need
    doc: Doc = Doc()

    def __post_init__(self) -> None:
        if (self.parse is None) != (self.render is None) or (self.parse is None) == (self.respond is None):
            raise ValueError(f"{self.path}: an operation has parse+render or respond, not both")


def _no_headers(meta: RequestMeta) -> Mapping[str, str]:
    return {}


def bearer_token(meta: RequestMeta) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    scheme, _, token = meta.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass(frozen=True, slots=True)
class Adapter:
    """A vendor: its routes, where its clients put their key, and how it shows an error.

    `credential(body, meta)` returns the key the caller sent, or None. It is called first with
    `body=None`, before the body is read, so header and query keys are checked early; an adapter
    whose clients may put the key in the body sets `body_credential`, and is then called again
    with the parsed body when the early call found none. Any hook that raises (a ClipgateError
    or anything else) gets its answer from this adapter's `render_error`."""

    name: str  # also its config table, [name], and its environment prefix, CLIPGATE_<NAME>_
    operations: Sequence[Operation]
    render_error: Callable[[ClipgateError], Reply]
    credential: Callable[[Body, RequestMeta], str | None]
    response_headers: Callable[[RequestMeta], Mapping[str, str]] = _no_headers
    json_content_type_required: bool = False  # refuse a non-JSON Content-Type with 415
    body_credential: bool = False  # the key may come in the body, so it is read before auth
    settings: type[ProtocolSettings] = ProtocolSettings
    description: str = ""  # one line on the vendor, heading its section of the API docs
    error_schema: Schema | None = None  # the body `render_error` writes (any JSON when None)
    auth: Mapping[str, Schema] = field(default_factory=dict)  # OpenAPI securitySchemes: where clients put the key
