"""Bad base64 in every JSON image slot, and the harmless variations that must still decode."""

from __future__ import annotations

import random
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.hostile import inputs as h
from tests.hostile.checks import assert_serves_after, assert_unharmed, check_case, send
from tests.hostile.routes import B64_ROUTES, BY_NAME, IMAGE_ERRORS, TINY_B64, Case, Route, cases, params, route_params
from tests.vendors import shown

BAD_BASE64: list[tuple[str, str]] = [
    ("bang", "!!!!"),
    ("non-alphabet-in-the-middle", TINY_B64[:40] + "$%^&" + TINY_B64[40:]),
    ("percent-encoded", TINY_B64.replace("+", "%2B").replace("/", "%2F") + "%3D"),
    ("three-padding-chars", TINY_B64.rstrip("=") + "==="),
    ("padding-in-the-middle", TINY_B64[:40] + "==" + TINY_B64[40:]),
    ("leading-padding", "==" + TINY_B64),
    ("length-mod-4-is-1", "QUJDR"),
    ("fullwidth-letters", "ＱＵＪＤ"),
    ("accented", "é" * 8),
    ("emoji", "🐱" * 4),
    ("nul-chars", "\x00" * 8),
    ("zero-width-space-inside", TINY_B64[:40] + "\u200b" + TINY_B64[40:]),
    ("rtl-override-prefix", "\u202e" + TINY_B64),
    ("empty", ""),
    ("whitespace-only", " \n\t\r "),
    ("one-equals", "="),
    ("four-equals", "===="),
    ("thousand-equals", "=" * 1000),
    ("data-uri-empty", "data:image/png;base64,"),
    ("data-uri-bad-payload", "data:image/png;base64,!!!!"),
    ("data-uri-text", "data:text/plain;base64," + h.b64(b"hello")),
    ("data-uri-svg", "data:image/svg+xml;base64," + h.b64(h.SVG)),
    ("data-uri-not-base64", "data:image/png," + "%89PNG"),
    ("valid-base64-random-bytes", h.b64(random.Random(3).randbytes(3000))),
    ("base64-of-base64", h.b64(TINY_B64.encode())),
]


def _in_image_slot(route: Route, value: str) -> dict[str, Any]:
    assert route.image is not None
    return {"json": route.image(value)}


BAD_BASE64_CASES = cases(B64_ROUTES, BAD_BASE64, _in_image_slot, IMAGE_ERRORS)


@pytest.mark.parametrize("case", params(BAD_BASE64_CASES))
def test_bad_base64(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


@pytest.mark.parametrize("route", route_params(B64_ROUTES))
def test_bad_base64_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, BAD_BASE64_CASES)


def test_padding_and_line_breaks_alone_still_decode(gateway: TestClient) -> None:
    """The cases above are bad for their own reason: the same image, unpadded or with line breaks, reads."""
    route = BY_NAME["rf-embed_image"]
    for value in (TINY_B64.rstrip("="), "\n".join(TINY_B64[i : i + 76] for i in range(0, len(TINY_B64), 76))):
        response, _ = send(gateway, route, _in_image_slot(route, value))
        assert response.status_code == 200, shown(response)
        route.endpoint.assert_served(response, count=1)
    assert_unharmed(gateway)
