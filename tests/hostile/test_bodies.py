"""Bodies that are not a JSON object (or not JSON at all), and content types a route does not take."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from tests.hostile import inputs as h
from tests.hostile.checks import assert_serves_after, check_case
from tests.hostile.routes import (
    BODY,
    BY_NAME,
    CONTENT_TYPE,
    JSON_ROUTES,
    ROUTES,
    TINY_B64,
    TINY_JPEG,
    TINY_PNG,
    Case,
    Route,
    cases,
    params,
    raw_json,
    route_params,
    valid_json,
    with_raw,
)


def _valid(route: Route) -> bytes:
    return orjson.dumps(valid_json(route))


def _utf16(route: Route) -> bytes:
    return b"\xff\xfe" + _valid(route).decode().encode("utf-16-le")


MALFORMED: list[tuple[str, Callable[[Route], bytes]]] = [
    ("empty", lambda r: b""),
    ("whitespace", lambda r: b" \r\n\t "),
    ("invalid-utf8", lambda r: b"\xff\xfe\xfd"),
    ("invalid-utf8-in-a-string", lambda r: with_raw(r, b'"\xc3\x28\xff"')),
    ("overlong-utf8-slash", lambda r: with_raw(r, b'"\xc0\xaf"')),
    ("encoded-surrogate", lambda r: with_raw(r, b'"\xed\xa0\x80"')),
    ("lone-surrogate-escape", lambda r: with_raw(r, b'"\\ud800"')),
    ("utf16-with-bom", _utf16),
    ("latin1", lambda r: with_raw(r, '"caf\xe9"'.encode("latin-1"))),
    ("unterminated", lambda r: _valid(r)[:-3]),
    ("unclosed-brace", lambda r: b"{"),
    ("trailing-garbage", lambda r: _valid(r) + b"xyz"),
    ("two-documents", lambda r: _valid(r) * 2),
    ("trailing-comma", lambda r: _valid(r)[:-1] + b",}"),
    ("single-quotes", lambda r: _valid(r).replace(b'"', b"'")),
    ("unquoted-keys", lambda r: b"{text: 1}"),
    ("comment", lambda r: b"// hi\n" + _valid(r)),
    ("nan-literal", lambda r: with_raw(r, b"NaN")),
    ("infinity-literal", lambda r: with_raw(r, b"Infinity")),
    ("number-overflowing-double", lambda r: with_raw(r, b"1e99999")),
    ("nul-byte", lambda r: b"\x00"),
    ("nul-after-document", lambda r: _valid(r) + b"\x00"),
    ("not-an-object-null", lambda r: b"null"),
    ("not-an-object-true", lambda r: b"true"),
    ("not-an-object-zero", lambda r: b"0"),
    ("not-an-object-float", lambda r: b"-1.5e300"),
    ("not-an-object-string", lambda r: b'"a photo of a cat"'),
    ("not-an-object-empty-list", lambda r: b"[]"),
    ("not-an-object-list-of-the-valid-body", lambda r: b"[" + _valid(r) + b"]"),
    ("not-an-object-empty-object", lambda r: b"{}"),
]
MALFORMED_CASES = cases(JSON_ROUTES, MALFORMED, lambda route, build: raw_json(build(route)), BODY)


@pytest.mark.parametrize("case", params(MALFORMED_CASES))
def test_malformed_body(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


@pytest.mark.parametrize("route", route_params(JSON_ROUTES))
def test_malformed_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, MALFORMED_CASES)


JSON_CONTENT_TYPES: list[tuple[str, tuple[str | None, Callable[[Route], bytes]]]] = [
    ("form-urlencoded", ("application/x-www-form-urlencoded", lambda r: b"text=a+cat&inputs=a&instances=a")),
    ("xml", ("application/xml", lambda r: b"<?xml version='1.0'?><text>a cat</text>")),
    ("png-body", ("image/png", lambda r: TINY_PNG)),
    (
        "multipart-body",
        ("multipart/form-data; boundary=hostile-boundary", lambda r: h.multipart([("text", None, b"x")])),
    ),
    ("octet-stream", ("application/octet-stream", lambda r: b"\x00\x01\x02\xff")),
    ("no-content-type", (None, lambda r: b"text=a")),
]


def _typed(route: Route, case: tuple[str | None, Callable[[Route], bytes]]) -> dict[str, Any]:
    content_type, build = case
    return raw_json(build(route), content_type)


JSON_CONTENT_TYPE_CASES = cases(JSON_ROUTES, JSON_CONTENT_TYPES, _typed, CONTENT_TYPE)


@pytest.mark.parametrize("case", params(JSON_CONTENT_TYPE_CASES))
def test_json_route_given_another_content_type(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


AZURE_CONTENT_TYPE_CASES = [
    Case(
        BY_NAME["az-score"],
        str(content_type),
        lambda t=content_type: raw_json(_valid(BY_NAME["az-score"]), t),
        frozenset({415}),
    )
    for content_type in ["text/plain", "application/x-www-form-urlencoded", None, "text/json"]
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in AZURE_CONTENT_TYPE_CASES])
def test_azure_requires_a_json_content_type(gateway: TestClient, case: Case) -> None:
    """azmlinfsrv answers 415 for anything but application/json, even around a valid body."""
    check_case(gateway, case)


VALID_MULTIPART = h.multipart([("predict_file", "tiny.jpg", TINY_JPEG)])
FILE_CONTENT_TYPES: list[tuple[str, tuple[str | None, bytes]]] = [
    ("json", ("application/json", b'{"inputs": ["a cat"]}')),
    ("text-plain", ("text/plain", b"hello")),
    ("form-urlencoded", ("application/x-www-form-urlencoded", b"predict_file=" + TINY_B64.encode())),
    ("multipart-mixed", ("multipart/mixed; boundary=hostile-boundary", VALID_MULTIPART)),
    ("raw-jpeg", ("image/jpeg", TINY_JPEG)),
    ("no-content-type", (None, VALID_MULTIPART)),
]
FILE_CONTENT_TYPE_CASES = cases(
    [BY_NAME["sn-file"]], FILE_CONTENT_TYPES, lambda route, case: raw_json(case[1], case[0]), frozenset({400, 415})
)


@pytest.mark.parametrize("case", params(FILE_CONTENT_TYPE_CASES))
def test_file_route_given_another_content_type(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


CONTENT_TYPE_CASES = [*JSON_CONTENT_TYPE_CASES, *AZURE_CONTENT_TYPE_CASES, *FILE_CONTENT_TYPE_CASES]


@pytest.mark.parametrize("route", route_params(ROUTES))
def test_content_types_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, CONTENT_TYPE_CASES)
