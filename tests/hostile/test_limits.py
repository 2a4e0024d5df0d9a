"""Limits: items per request, text length, image bytes, and the body size, with and without a
Content-Length."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from tests.hostile import inputs as h
from tests.hostile.checks import assert_serves, assert_serves_after, check_case, check_then_serve
from tests.hostile.routes import (
    B64_ROUTES,
    BY_NAME,
    LIST_ROUTES,
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_TEXT_CHARS,
    MAX_TEXTS,
    ROUTES,
    SMALL_BODY_LIMIT,
    TEXT_ROUTES,
    TINY_B64,
    TINY_JPEG,
    TOO_MANY,
    Case,
    Route,
    cases,
    params,
    raw_json,
    route_params,
)


def _too_many(route: Route, count: str) -> Any:
    if count == "images" and route.images is not None:
        return route.images([TINY_B64] * (MAX_IMAGES + 1))
    if count == "texts" and route.texts is not None:
        return route.texts(["a"] * (MAX_TEXTS + 1))
    if count == "100k-texts" and route.texts is not None:
        return route.texts(["a"] * 100_000)
    if count == "dict-prompts" and route.name == "rf-compare":
        return {
            "subject": {"type": "base64", "value": TINY_B64},
            "prompt": {f"k{i}": "a" for i in range(MAX_TEXTS + 1)},
        }
    return None


TOO_MANY_CASES = [
    dataclasses.replace(case, heavy=case.name == "100k-texts")
    for case in cases(
        LIST_ROUTES,
        [(count, count) for count in ("images", "texts", "100k-texts", "dict-prompts")],
        lambda route, count: {"json": _too_many(route, count)},
        TOO_MANY,
    )
    if _too_many(case.route, case.name) is not None
]


def check_limit(client: TestClient, case: Case) -> None:
    check_case(client, case)
    if case.heavy:  # left out of test_limits_then_still_serves, which would only pay for its size again
        assert_serves(client, case.route)


@pytest.mark.parametrize("case", params(TOO_MANY_CASES))
def test_more_items_than_the_per_request_limit(gateway: TestClient, case: Case) -> None:
    check_limit(gateway, case)


MULTIPART_TOO_MANY = Case(
    BY_NAME["sn-file"],
    "images",
    lambda: raw_json(
        h.multipart([("predict_file", f"{i}.jpg", TINY_JPEG) for i in range(MAX_IMAGES + 1)]),
        "multipart/form-data; boundary=hostile-boundary",
    ),
    TOO_MANY,
)


def test_too_many_images_in_multipart(gateway: TestClient) -> None:
    check_case(gateway, MULTIPART_TOO_MANY)


HUGE_TEXTS: list[tuple[str, tuple[str, frozenset[int]]]] = [
    ("one-over-the-char-limit", ("x" * (MAX_TEXT_CHARS + 1), frozenset({400}))),
    ("accented-over-the-char-limit", ("é" * (MAX_TEXT_CHARS + 1), frozenset({400}))),
    ("one-mebibyte", ("x" * (1 << 20), frozenset({400, 413}))),
    ("over-77-tokens", ("a photo of a cat " * 30, frozenset({400}))),
    ("emoji-over-77-tokens", ("🐱" * 200, frozenset({400}))),
]


def _huge_text(route: Route, case: tuple[str, frozenset[int]]) -> dict[str, Any]:
    assert route.texts is not None
    return {"json": route.texts(["fine", case[0]])}


HUGE_TEXT_CASES = cases(TEXT_ROUTES, HUGE_TEXTS, _huge_text, lambda case: case[1])


@pytest.mark.parametrize("case", params(HUGE_TEXT_CASES))
def test_huge_text(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


MAX_TEXTS_OF_MAX_CHARS = Case(
    BY_NAME["sn-nlp"],
    "max-texts-of-max-chars",
    lambda: {"json": {"inputs": ["x" * MAX_TEXT_CHARS] * MAX_TEXTS}},
    frozenset({400, 413}),
    heavy=True,
)


def test_max_texts_of_max_chars_is_refused_in_bounded_time(gateway: TestClient) -> None:
    """Every limit respected (1024 texts of 16384 chars, 16 MiB), every text over 77 tokens: the
    refusal must not cost the whole batch's tokenization."""
    check_limit(gateway, MAX_TEXTS_OF_MAX_CHARS)


def _over_the_byte_limit(route: Route, _: None) -> dict[str, Any]:
    assert route.image is not None
    return {"json": route.image("A" * (MAX_IMAGE_BYTES * 4 // 3 + 8192))}


OVER_THE_BYTE_LIMIT_CASES = cases(B64_ROUTES, [("image-over-the-byte-limit", None)], _over_the_byte_limit, TOO_MANY)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.route.name) for case in OVER_THE_BYTE_LIMIT_CASES])
def test_base64_image_over_the_byte_limit(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


LIMIT_CASES = [
    *TOO_MANY_CASES,
    MULTIPART_TOO_MANY,
    *HUGE_TEXT_CASES,
    MAX_TEXTS_OF_MAX_CHARS,
    *OVER_THE_BYTE_LIMIT_CASES,
]


@pytest.mark.parametrize("route", route_params(ROUTES))
def test_limits_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, LIMIT_CASES)


# --- the body size -----------------------------------------------------------------------------


def _oversized(route: Route, size: int = 2 * SMALL_BODY_LIMIT) -> tuple[bytes, str]:
    if route.multipart:
        return h.multipart([("predict_file", "a.jpg", bytes(size))]), "multipart/form-data; boundary=hostile-boundary"
    assert route.primary is not None
    return orjson.dumps(route.primary(["a" * size])), "application/json"


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def _body_over_the_limit(route: Route, mode: str) -> dict[str, Any]:
    body, content_type = _oversized(route)
    headers = {"content-type": content_type}
    if mode == "content-length":
        return {"content": body, "headers": headers}
    if mode == "chunked":  # no Content-Length: the server has to count while reading
        return {"content": _chunks(body, 1000), "headers": headers}
    if mode == "chunked-tiny-chunks":
        return {"content": _chunks(body, 16), "headers": headers}
    # a Content-Length far over the limit, and a body that never comes
    return {"content": body[:100], "headers": {**headers, "content-length": str(10**12)}}


BODY_LIMIT_MODES = [(m, m) for m in ("content-length", "chunked", "chunked-tiny-chunks", "declared-huge-length")]
BODY_LIMIT_CASES = cases(ROUTES, BODY_LIMIT_MODES, _body_over_the_limit, TOO_MANY)


@pytest.mark.parametrize("case", params(BODY_LIMIT_CASES))
def test_body_over_max_body_bytes(small_gateway: TestClient, case: Case) -> None:
    check_then_serve(small_gateway, case.route, case.make(), case.allowed)


@pytest.mark.parametrize("route", route_params(ROUTES))
def test_body_limit_then_still_serves(fresh_small_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_small_gateway, route, BODY_LIMIT_CASES)
