"""Hostile input against the OpenAI-compatible and Cohere routes: each case must be refused with a
4xx in the vendor's error shape (its profile's check), without a traceback or an internal repr,
within a time bound, with no network access (the package's guard) and without reflecting a large
input; and the same client is served normally right after it. The server runs with strict_model,
so model names are checked too."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.engine import Model
from tests import imagegen, vendors
from tests.conftest import make_config
from tests.hostile import inputs as h
from tests.hostile.checks import LEAK, MAX_ERROR_BODY_BYTES

TIME_LIMIT_S = 5.0
DIM = 512
DEFAULTS = make_config()


@dataclass(frozen=True)
class Route:
    name: str
    vendor: str  # openai | cohere
    path: str
    image: Callable[[str], Any]  # the body with one image given as this string
    texts: Callable[[list[Any]], Any]
    valid: Any

    def __str__(self) -> str:
        return self.name


ROUTES = [
    Route(
        "openai-jina-image",
        "openai",
        "/v1/embeddings",
        image=lambda v: {"input": [{"image": v}]},
        texts=lambda ts: {"input": ts},
        valid={"input": ["a photo of a cat"], "encoding_format": "base64"},
    ),
    Route(
        "openai-image-url-part",
        "openai",
        "/embeddings",
        image=lambda v: {"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + v}}]},
        texts=lambda ts: {"input": [{"type": "text", "text": t} for t in ts]},
        valid={"input": [{"type": "text", "text": "a cat"}]},
    ),
    Route(
        "openai-messages",
        "openai",
        "/v1/embeddings",
        image=lambda v: {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64," + v}]}
            ]
        },
        texts=lambda ts: {"messages": [[{"role": "user", "content": t}] for t in ts]},
        valid={"messages": [{"role": "user", "content": "a cat"}]},
    ),
    Route(
        "cohere-v2",
        "cohere",
        "/v2/embed",
        image=lambda v: {"images": ["data:image/png;base64," + v], "input_type": "image"},
        texts=lambda ts: {"texts": ts, "input_type": "search_document"},
        valid={
            "texts": ["a cat"],
            "model": "embed-v4.0",
            "input_type": "search_query",
            "embedding_types": ["float", "ubinary"],
        },
    ),
    Route(
        "cohere-v2-inputs",
        "cohere",
        "/v2/embed",
        image=lambda v: {
            "inputs": [{"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + v}}]}]
        },
        texts=lambda ts: {"inputs": [{"content": [{"type": "text", "text": t}]} for t in ts]},
        valid={"inputs": [{"content": [{"type": "text", "text": "a cat"}]}]},
    ),
    Route(
        "cohere-v1",
        "cohere",
        "/v1/embed",
        image=lambda v: {"images": ["data:image/png;base64," + v]},
        texts=lambda ts: {"texts": ts},
        valid={"texts": ["a cat"]},
    ),
]


# --- client, checks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_gateway(model: Model, network_attempts: list[str]) -> Iterator[TestClient]:
    config = make_config(openai={"strict_model": True}, cohere={"strict_model": True})
    with TestClient(create_app(config, model), raise_server_exceptions=False) as client:
        for route in ROUTES:
            assert_serves(client, route)
        yield client


def shown(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.headers.get('content-type')!r} {response.text[:300]!r}"


def assert_serves(client: TestClient, route: Route) -> None:
    body = {**route.valid, "model": "random:tiny"}  # strict_model is on: the served name
    response = client.post(route.path, json=body)
    assert response.status_code == 200, f"the server no longer serves {route.path}: {shown(response)}"
    payload = response.json()
    if route.vendor == "openai":
        row = payload["data"][0]["embedding"]
        size = len(base64.b64decode(row)) // 4 if isinstance(row, str) else len(row)
    else:
        embeddings = payload["embeddings"]
        size = len(embeddings[0] if isinstance(embeddings, list) else next(iter(embeddings.values()))[0])
        size = size * 8 if size == DIM // 8 else size
    assert size == DIM


def assert_refused(route: Route, response: httpx.Response, elapsed: float, allowed: frozenset[int]) -> None:
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s: {shown(response)}"
    assert response.status_code in allowed, f"expected one of {sorted(allowed)}: {shown(response)}"
    vendors.vendor(route.vendor).assert_error(response)
    leak = LEAK.search(response.text)
    assert leak is None, f"leaks {leak.group(0)!r}: {shown(response)}"
    assert len(response.content) <= MAX_ERROR_BODY_BYTES, f"error body of {len(response.content)} bytes"


def check_then_serve(
    client: TestClient, route: Route, allowed: frozenset[int], *, json: Any = None, content: bytes | None = None
) -> None:
    started = time.perf_counter()
    if content is not None:
        response = client.post(route.path, content=content, headers={"content-type": "application/json"})
    else:
        response = client.post(route.path, json=json)
    assert_refused(route, response, time.perf_counter() - started, allowed)
    assert_serves(client, route)


def params(cases: dict[str, Any]) -> list[Any]:
    return [pytest.param(route, case, id=f"{route}-{name}") for route in ROUTES for name, case in cases.items()]


# --- images ---------------------------------------------------------------------------------------

IMAGES: dict[str, Callable[[], bytes]] = {
    "png-20000x20000": lambda: h.png_declaring(20000, 20000),
    "png-7000x7000-over-the-pixel-limit": lambda: h.png_declaring(7000, 7000),
    "gif-65535x65535": lambda: h.gif_declaring(65535, 65535),
    "jpeg-20000x20000": lambda: h.jpeg_declaring(20000, 20000),
    "png-ztxt-bomb": h.png_ztxt_bomb,
    "jpeg-cut-in-half": lambda: h.truncated(imagegen.sample("jpeg")),
    "png-bad-crc": h.png_bad_crc,
    "png-zero-width": h.png_zero_width,
    "eps": h.eps_binary_header,
    "fits": h.fits,
    "zip": h.zip_bytes,
    "text": lambda: b"hello, I am not an image",
}


@pytest.mark.parametrize(("route", "make"), params(IMAGES))
def test_hostile_images_are_refused(strict_gateway: TestClient, route: Route, make: Callable[[], bytes]) -> None:
    check_then_serve(strict_gateway, route, frozenset({400, 413}), json=route.image(base64.b64encode(make()).decode()))


BAD_BASE64 = {
    "not-base64": "#### not base64 ####",
    "empty": "",
    "only-padding": "====",
    "one-char-over": "A" * 4097,
    "non-ascii": "ÿÿÿÿ",
}


@pytest.mark.parametrize(("route", "value"), params(BAD_BASE64))
def test_bad_base64_is_refused(strict_gateway: TestClient, route: Route, value: str) -> None:
    check_then_serve(strict_gateway, route, frozenset({400}), json=route.image(value))


# --- bodies ---------------------------------------------------------------------------------------

BODIES: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "not-json": lambda: b"{input: nope",
    "json-array": lambda: b"[1, 2, 3]",
    "json-null": lambda: b"null",
    "json-string": lambda: b'"a cat"',
    "invalid-utf8": lambda: b'{"input": "\xff\xfe"}',
    "lone-surrogate": lambda: b'{"input": "\\ud800", "texts": ["\\ud800"]}',
    "nested-list-200": lambda: h.nested_list(200),
    "nested-object-200": lambda: h.nested_object(200),
}


@pytest.mark.parametrize(("route", "make"), params(BODIES))
def test_malformed_bodies_are_refused(strict_gateway: TestClient, route: Route, make: Callable[[], bytes]) -> None:
    check_then_serve(strict_gateway, route, frozenset({400, 413}), content=make())


# --- values ---------------------------------------------------------------------------------------

MAX_TEXTS, MAX_IMAGES = DEFAULTS.server.max_texts, DEFAULTS.server.max_images
TEXTS: dict[str, tuple[list[Any], frozenset[int]]] = {
    "too-many-texts": (["a"] * (MAX_TEXTS + 1), frozenset({413})),
    "text-over-the-character-limit": (["x" * (DEFAULTS.server.max_text_chars + 1)], frozenset({400})),
    "null-text": ([None], frozenset({400})),
    "number-text": ([5.5], frozenset({400})),
    "object-text": ([{"nested": {"deeper": [1, 2]}}], frozenset({400})),
    "deeply-nested-text": ([[[[[[["a"]]]]]]], frozenset({400})),
}


@pytest.mark.parametrize(("route", "case"), params(TEXTS))
def test_hostile_texts_are_refused(
    strict_gateway: TestClient, route: Route, case: tuple[list[Any], frozenset[int]]
) -> None:
    texts, allowed = case
    check_then_serve(strict_gateway, route, allowed, json=route.texts(texts))


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_too_many_images_is_413(strict_gateway: TestClient, route: Route) -> None:
    tiny = base64.b64encode(h.tiny_png()).decode()
    body = route.image(tiny)
    for key in ("input", "images", "inputs"):
        if key in body:
            body[key] = body[key] * (MAX_IMAGES + 1)
    if "messages" in body:
        body = {"messages": [body["messages"]] * (MAX_IMAGES + 1)}
    check_then_serve(strict_gateway, route, frozenset({413}), json=body)


OPENAI_ONLY = [r for r in ROUTES if r.vendor == "openai"][:1]
COHERE_ONLY = [r for r in ROUTES if r.path == "/v2/embed"][:1]
HUGE = "x" * 1_000_000

OPENAI_VALUES: dict[str, Any] = {
    "token-ids-over-the-request-limit": {"input": [[0] * 300_001]},
    "token-id-huge": {"input": [[2**70]]},
    "token-id-float": {"input": [[1.5, 2]]},
    "token-id-bool": {"input": [[True]]},
    "image-url-while-urls-are-off": {
        "input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    },
    "image-url-loopback": {"input": [{"url": "http://127.0.0.1:8000/score"}]},
    "image-url-file-scheme": {"input": [{"type": "image_url", "image_url": "file:///etc/passwd"}]},
    "data-uri-with-a-long-mime": {"input": ["data:image/" + "p" * 500 + ";base64,AAAA"]},
    "model-name-of-a-megabyte": {"input": "a", "model": HUGE},
    "dimensions-enormous": {"input": "a", "dimensions": 10**30},
    "truncate-prompt-tokens-enormous-negative": {"input": "a", "truncate_prompt_tokens": -(10**30)},
    "encoding-format-object": {"input": "a", "encoding_format": {"$gt": ""}},
    "messages-not-messages": {"messages": [[1, 2], [3]]},
    "messages-two-parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 50}]},
    "text-and-image": {"input": [{"text": "a", "bytes": "AAAA"}]},
    "over-77-tokens": {"input": [" ".join(["photograph"] * 200)]},
}


@pytest.mark.parametrize(
    ("route", "body"), [pytest.param(r, b, id=f"{r}-{n}") for r in OPENAI_ONLY for n, b in OPENAI_VALUES.items()]
)
def test_hostile_openai_values_are_refused(strict_gateway: TestClient, route: Route, body: Any) -> None:
    check_then_serve(strict_gateway, route, frozenset({400, 404, 413}), json=body)


COHERE_VALUES: dict[str, Any] = {
    "model-name-of-a-megabyte": {"texts": ["a"], "model": HUGE},
    "unknown-model-under-strict": {"texts": ["a"], "model": "embed-v4.0"},
    "embedding-types-not-a-list": {"texts": ["a"], "embedding_types": "float"},
    "embedding-types-objects": {"texts": ["a"], "embedding_types": [{"float": 1}]},
    "int8": {"texts": ["a"], "embedding_types": ["int8"]},
    "truncate-object": {"texts": ["a"], "truncate": {"END": 1}},
    "truncate-none-too-long": {"texts": [" ".join(["photograph"] * 200)], "truncate": "NONE"},
    "max-tokens-negative": {"texts": ["a"], "max_tokens": -(10**30)},
    "output-dimension-enormous": {"texts": ["a"], "output_dimension": 10**30},
    "input-type-object": {"texts": ["a"], "input_type": {"x": 1}},
    "images-url": {"images": ["https://example.com/a.png"]},
    "inputs-url-while-off": {
        "inputs": [{"content": [{"type": "image_url", "image_url": {"url": "http://10.0.0.1/a"}}]}]
    },
    "inputs-not-objects": {"inputs": [1, 2]},
    "all-three": {"texts": ["a"], "images": ["data:image/png;base64,AAAA"], "inputs": []},
}


@pytest.mark.parametrize(
    ("route", "body"), [pytest.param(r, b, id=f"{r}-{n}") for r in COHERE_ONLY for n, b in COHERE_VALUES.items()]
)
def test_hostile_cohere_values_are_refused(strict_gateway: TestClient, route: Route, body: Any) -> None:
    check_then_serve(strict_gateway, route, frozenset({400, 404, 413}), json=body)


def test_an_oversized_body_is_413_before_it_is_read(model: Model) -> None:
    config = make_config(server={"max_body_bytes": 4096})
    with TestClient(create_app(config, model), raise_server_exceptions=False) as client:
        for route in (ROUTES[0], ROUTES[3]):
            started = time.perf_counter()
            response = client.post(route.path, content=orjson.dumps(route.texts(["a" * 10_000])))
            assert_refused(route, response, time.perf_counter() - started, frozenset({413}))
