"""Generated input (bounded): image bytes behind a known magic number, and any JSON in a route's
main field or as the whole body. A 200 is possible, a 5xx never; a 4xx must be a proper refusal."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.hostile import inputs as h
from tests.hostile.checks import TIME_LIMIT_S, assert_refused, assert_serves, assert_unharmed, send
from tests.hostile.routes import IMAGE_ROUTES, JSON_ROUTES, ROUTES, Route, image_call, raw_json, route_params

MAGIC = [b"", h.PNG_SIGNATURE, b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00"]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
PROPERTY_SETTINGS = settings(max_examples=12, deadline=None, database=None)


def assert_answered(client: TestClient, route: Route, response: httpx.Response, elapsed: float) -> None:
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s"
    if response.status_code == 200:
        route.endpoint.assert_served(response)
    else:
        assert_refused(route, response, elapsed)
    assert_unharmed(client)


def generated_image_bytes(client: TestClient, route: Route) -> None:
    @PROPERTY_SETTINGS
    @given(magic=st.sampled_from(MAGIC), tail=st.binary(max_size=600))
    def prop(magic: bytes, tail: bytes) -> None:
        response, elapsed = send(client, route, image_call(route, magic + tail))
        assert_answered(client, route, response, elapsed)

    prop()


def generated_json(client: TestClient, route: Route) -> None:
    assert route.primary is not None

    @PROPERTY_SETTINGS
    @given(value=JSON_VALUES, whole_body=st.booleans())
    def prop(value: Any, whole_body: bool) -> None:
        assert route.primary is not None
        body = value if whole_body else route.primary(value)
        response, elapsed = send(client, route, raw_json(orjson.dumps(body)))
        assert_answered(client, route, response, elapsed)

    prop()


@pytest.mark.parametrize("route", route_params(IMAGE_ROUTES))
def test_generated_image_bytes_never_break_the_server(gateway: TestClient, route: Route) -> None:
    generated_image_bytes(gateway, route)


@pytest.mark.parametrize("route", route_params(JSON_ROUTES))
def test_generated_json_never_breaks_the_server(gateway: TestClient, route: Route) -> None:
    generated_json(gateway, route)


@pytest.mark.parametrize("route", route_params(ROUTES))
def test_generated_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    """The route's generated input, on a server of the test's own, then a valid request."""
    if route in IMAGE_ROUTES:
        generated_image_bytes(fresh_gateway, route)
    if route in JSON_ROUTES:
        generated_json(fresh_gateway, route)
    assert_serves(fresh_gateway, route)
