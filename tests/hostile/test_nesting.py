"""Deeply nested JSON: at the top level, in a route's main field, and in an image's value."""

from __future__ import annotations

import functools

import pytest
from starlette.testclient import TestClient

from tests.hostile import inputs as h
from tests.hostile.checks import assert_serves_after, check_case
from tests.hostile.routes import JSON_ROUTES, NESTING, Case, Route, params, raw_json, route_params, with_raw

NESTINGS: list[tuple[str, tuple[str, bytes]]] = [
    (f"{where}-{shape}-depth-{depth}", (where, build(depth)))
    for depth in (10, 100, 5000)
    for shape, build in (("list", h.nested_list), ("object", h.nested_object))
    for where in ("top-level", "main-field", "image-value")
    if not (where == "top-level" and shape == "object")
]


def _nested(route: Route, case: tuple[str, bytes]) -> dict[str, object]:
    where, nested = case
    if where == "top-level":
        return raw_json(nested)
    return raw_json(with_raw(route, nested, slot="primary" if where == "main-field" else "image"))


NESTING_CASES = [
    Case(route, name, functools.partial(_nested, route, case), NESTING)
    for route in JSON_ROUTES
    for name, case in NESTINGS
    if not (case[0] == "image-value" and route.image is None)
]


@pytest.mark.parametrize("case", params(NESTING_CASES))
def test_deeply_nested_json(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


@pytest.mark.parametrize("route", route_params(JSON_ROUTES))
def test_nesting_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, NESTING_CASES)
