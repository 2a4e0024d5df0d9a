"""The embedding routes under attack, the slots a hostile value can go in, and the cases built on them.

Each route is a vendor endpoint (tests/vendors.py) plus the body builders that put a value in one of
its slots. A `Case` is one hostile request: a route, a name, the request it sends and the statuses
it may be refused with. The cases are data so that a group's `*_then_still_serves` test can send
them all itself, on a server of its own, whatever ran before it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pytest

from tests import vendors
from tests.conftest import make_config
from tests.hostile import inputs as h
from tests.vendors import AZUREML, ROBOFLOW, SAMBASTUDIO, TEXT, Endpoint, VendorProfile

DIM = vendors.DIM
SMALL_BODY_LIMIT = 4096

DEFAULTS = make_config()
MAX_IMAGES = DEFAULTS.server.max_images
MAX_TEXTS = DEFAULTS.server.max_texts
MAX_TEXT_CHARS = DEFAULTS.server.max_text_chars
MAX_IMAGE_BYTES = DEFAULTS.images.max_bytes

TINY_JPEG = vendors.TINY_JPEG
TINY_PNG = h.tiny_png()
TINY_B64 = h.b64(TINY_JPEG)
MARK = "__HOSTILE_MARK__"

IMAGE_ERRORS = frozenset({400})
BOMB = frozenset({400, 413})
FORMAT_REFUSED = frozenset({400, 415})
SCHEMA = frozenset({400, 404, 422})
BODY = frozenset({400, 422})
NESTING = frozenset({400, 413, 422})
TOO_MANY = frozenset({413})
CONTENT_TYPE = frozenset({400, 415, 422})


@dataclass(frozen=True)
class Route:
    """One embedding route and how to put a hostile value in each of its slots."""

    name: str
    endpoint: Endpoint
    primary: Callable[[Any], Any] | None = None  # the body with `value` in the route's main field
    image: Callable[[str], Any] | None = None  # the body with one image given as this string
    images: Callable[[list[str]], Any] | None = None
    url: Callable[[str], Any] | None = None
    texts: Callable[[list[Any]], Any] | None = None
    variant: bool = False  # another body shape of the endpoint: its valid call is its own

    def __str__(self) -> str:
        return self.name

    @property
    def profile(self) -> VendorProfile:
        return vendors.vendor(self.endpoint.vendor)

    @property
    def path(self) -> str:
        return self.endpoint.path

    @property
    def multipart(self) -> bool:
        return self.endpoint.file_field is not None

    @property
    def compare(self) -> bool:
        return self.endpoint.compare

    def valid_call(self) -> dict[str, Any]:
        """A request this route serves: the vendor profile's, or for a variant its own shape with a tiny image."""
        if not self.variant:
            return self.endpoint.valid_call()
        assert self.image is not None
        return {"json": self.image(TINY_B64)}


def _rf_image(value: Any) -> dict[str, Any]:
    return {"type": "base64", "value": value}


def _azure(rows: list[list[Any]]) -> dict[str, Any]:
    return {"input_data": {"columns": ["image", "text"], "index": list(range(len(rows))), "data": rows}}


EMBED_IMAGE = ROBOFLOW.endpoint("embed_image")
EMBED_TEXT = ROBOFLOW.endpoint("embed_text")
COMPARE = ROBOFLOW.endpoint("compare")
SCORE = AZUREML.endpoint("score")

ROUTES = [
    Route(
        "rf-embed_image",
        EMBED_IMAGE,
        primary=lambda v: {"image": v},
        image=EMBED_IMAGE.image_body,
        images=lambda vs: {"image": [_rf_image(v) for v in vs]},
        url=lambda u: {"image": {"type": "url", "value": u}},
    ),
    Route("rf-embed_text", EMBED_TEXT, primary=lambda v: {"text": v}, texts=EMBED_TEXT.text_body),
    Route(
        "rf-compare",
        COMPARE,
        primary=lambda v: {"subject": _rf_image(TINY_B64), "prompt": v},
        image=COMPARE.image_body,
        url=lambda u: {"subject": {"type": "url", "value": u}, "prompt": [TEXT]},
        texts=COMPARE.text_body,
    ),
    Route(
        "rf-compare-image-prompts",
        COMPARE,
        primary=lambda v: {"subject": "a cat", "subject_type": "text", "prompt": v, "prompt_type": "image"},
        image=lambda v: {"subject": "a cat", "subject_type": "text", "prompt": [_rf_image(v)], "prompt_type": "image"},
        images=lambda vs: {
            "subject": "a cat",
            "subject_type": "text",
            "prompt": [_rf_image(v) for v in vs],
            "prompt_type": "image",
        },
        url=lambda u: {
            "subject": "a cat",
            "subject_type": "text",
            "prompt": [{"type": "url", "value": u}],
            "prompt_type": "image",
        },
        variant=True,
    ),
    Route(  # compare also takes a bare string subject: a URL when it starts with http, else base64
        "rf-compare-bare-subject",
        COMPARE,
        primary=lambda v: {"subject": v, "prompt": [TEXT]},
        image=lambda v: {"subject": v, "prompt": [TEXT]},
        url=lambda u: {"subject": u, "prompt": [TEXT]},
        variant=True,
    ),
    Route("sn-file", SAMBASTUDIO.endpoint("file")),
    Route(
        "sn-nlp",
        SAMBASTUDIO.endpoint("nlp"),
        primary=lambda v: {"inputs": v},
        texts=SAMBASTUDIO.endpoint("nlp").text_body,
    ),
    Route(
        "sn-generic",
        SAMBASTUDIO.endpoint("generic"),
        primary=lambda v: {"instances": v},
        texts=SAMBASTUDIO.endpoint("generic").text_body,
    ),
    Route(
        "sn-generic-v2",
        SAMBASTUDIO.endpoint("generic-v2"),
        primary=lambda v: {"items": v},
        texts=SAMBASTUDIO.endpoint("generic-v2").text_body,
    ),
    Route(
        "az-score",
        SCORE,
        primary=lambda v: {"input_data": v},
        image=SCORE.image_body,
        images=lambda vs: _azure([[v, ""] for v in vs]),
        url=lambda u: _azure([[u, ""]]),
        texts=SCORE.text_body,
    ),
]
BY_NAME = {route.name: route for route in ROUTES}
IMAGE_ROUTES = [r for r in ROUTES if r.image is not None or r.multipart]
B64_ROUTES = [r for r in ROUTES if r.image is not None]
URL_ROUTES = [r for r in ROUTES if r.url is not None]
TEXT_ROUTES = [r for r in ROUTES if r.texts is not None]
JSON_ROUTES = [r for r in ROUTES if not r.multipart]
LIST_ROUTES = [r for r in ROUTES if r.images is not None or r.texts is not None]
ROBOFLOW_ROUTES = [r for r in ROUTES if r.profile is ROBOFLOW]


# --- requests --------------------------------------------------------------------------------


def image_call(route: Route, data: bytes, *, filename: str = "image.jpg", mime: str = "image/jpeg") -> dict[str, Any]:
    """The image bytes as the route takes them: a multipart file, or plain base64 in the JSON body."""
    if route.multipart:
        return route.endpoint.image_call(data, filename=filename, mime=mime)
    assert route.image is not None
    return {"json": route.image(h.b64(data))}


def raw_json(body: bytes, content_type: str | None = "application/json") -> dict[str, Any]:
    return {"content": body, "headers": {} if content_type is None else {"content-type": content_type}}


def with_raw(route: Route, raw: bytes, *, slot: str = "primary") -> bytes:
    """The route's body with `raw` JSON text spliced into its main field (or its image value)."""
    build = route.primary if slot == "primary" else route.image
    assert build is not None
    return orjson.dumps(build(MARK)).replace(orjson.dumps(MARK), raw)


def valid_json(route: Route) -> Any:
    """The JSON body of the route's valid call."""
    return route.valid_call()["json"]


# --- cases -------------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class Case:
    """One hostile request: it must be refused with one of `allowed` (any 4xx when empty)."""

    route: Route
    name: str
    make: Callable[[], dict[str, Any]]  # the request's keywords, built when sent (some are large)
    allowed: frozenset[int] = frozenset()
    heavy: bool = False  # costly for its size alone: served right after in its own test, not sent again

    @property
    def id(self) -> str:
        return f"{self.route.name}-{self.name}"


def cases(
    routes: Iterable[Route],
    table: Iterable[tuple[str, T]],
    call: Callable[[Route, T], dict[str, Any]],
    allowed: frozenset[int] | Callable[[T], frozenset[int]],
) -> list[Case]:
    """A case per route and table row: `call(route, value)` builds its request."""
    return [
        Case(
            route,
            name,
            functools.partial(call, route, value),
            allowed if isinstance(allowed, frozenset) else allowed(value),
        )
        for route in routes
        for name, value in table
    ]


def params(group: list[Case]) -> list[Any]:
    return [pytest.param(case, id=case.id) for case in group]


def route_params(routes: list[Route]) -> list[Any]:
    return [pytest.param(route, id=route.name) for route in routes]
