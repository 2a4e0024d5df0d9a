"""A value of every JSON type in every field of every JSON route, where that type is not valid."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.hostile.checks import assert_serves_after, assert_unharmed, check_case, send
from tests.hostile.routes import BY_NAME, JSON_ROUTES, SCHEMA, TINY_B64, Case, Route, params, route_params
from tests.vendors import shown

KINDS: dict[str, Any] = {
    "int": 7,
    "float": 1.5,
    "bool": True,
    "null": None,
    "string": "s",
    "empty-string": "",
    "object": {"k": "v"},
    "empty-object": {},
    "list-of-str": ["a"],
    "list-of-int": [7],
    "list-of-null": [None],
    "empty-list": [],
    "nested-list": [[["x"]]],
}
Path = tuple[str | int, ...]


def _rf_image(value: str) -> dict[str, str]:
    return {"type": "base64", "value": value}


# route -> (a valid body, [(a field's path, the kinds that are valid there)])
WRONG_TYPE_TARGETS: dict[str, tuple[dict[str, Any], list[tuple[Path, set[str]]]]] = {
    "rf-embed_image": (
        {"image": _rf_image(TINY_B64), "clip_version_id": None},
        [
            (("image",), set()),
            (("image", "type"), set()),
            (("image", "value"), set()),
            (("clip_version_id",), {"null"}),
        ],
    ),
    "rf-embed_text": (
        {"text": ["a cat"], "clip_version_id": None},
        [
            (("text",), {"string", "empty-string", "list-of-str"}),
            (("text", 0), {"string", "empty-string"}),
            (("clip_version_id",), {"null"}),
        ],
    ),
    "rf-compare": (
        {"subject": _rf_image(TINY_B64), "subject_type": "image", "prompt": ["a cat"], "prompt_type": "text"},
        [
            (("subject",), set()),
            (("subject", "type"), set()),
            (("subject", "value"), set()),
            (("subject_type",), set()),
            (("prompt",), {"string", "empty-string", "list-of-str", "object"}),
            (("prompt", 0), {"string", "empty-string"}),
            (("prompt_type",), set()),
        ],
    ),
    "rf-compare-image-prompts": (
        {"subject": "a cat", "subject_type": "text", "prompt": [_rf_image(TINY_B64)], "prompt_type": "image"},
        [
            (("subject",), {"string", "empty-string"}),
            (("prompt",), set()),
            (("prompt", 0), set()),
            (("prompt", 0, "value"), set()),
        ],
    ),
    "sn-nlp": (
        {"inputs": ["a cat"], "params": {}},
        [
            (("inputs",), {"string", "empty-string", "list-of-str"}),
            (("inputs", 0), {"string", "empty-string"}),
            (("params",), {"null", "object", "empty-object"}),
        ],
    ),
    "sn-generic": (
        {"instances": ["a cat"], "params": {}},
        [
            (("instances",), {"string", "empty-string", "list-of-str"}),
            (("instances", 0), {"string", "empty-string"}),
            (("params",), {"null", "object", "empty-object"}),
        ],
    ),
    "sn-generic-v2": (
        {"items": [{"id": "a", "value": "a cat"}]},
        [
            (("items",), set()),
            (("items", 0), set()),
            (("items", 0, "id"), {"string", "empty-string"}),
            (("items", 0, "value"), {"string", "empty-string"}),
        ],
    ),
    "az-score": (
        {"input_data": {"columns": ["image", "text"], "index": [0], "data": [["", "a cat"]]}},
        [
            (("input_data",), set()),
            (("input_data", "columns"), set()),
            (("input_data", "index"), {"null", "list-of-str", "list-of-int", "list-of-null", "nested-list"}),
            (("input_data", "data"), set()),
            (("input_data", "data", 0), set()),
            (("input_data", "data", 0, 0), {"null", "empty-string"}),
            (("input_data", "data", 0, 1), {"string"}),
        ],
    ),
}


def _mutated(body: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = copy.deepcopy(value)
    return out


WRONG_TYPE_CASES = [
    Case(
        BY_NAME[name],
        f"{'.'.join(map(str, path))}={kind}",
        functools.partial(dict, json=_mutated(body, path, value)),
        SCHEMA,
    )
    for name, (body, targets) in WRONG_TYPE_TARGETS.items()
    for path, valid in targets
    for kind, value in KINDS.items()
    if kind not in valid
]


def test_the_wrong_type_templates_are_valid(gateway: TestClient) -> None:
    for name, (body, _) in WRONG_TYPE_TARGETS.items():
        route = BY_NAME[name]
        response, _ = send(gateway, route, {"json": body})
        assert response.status_code == 200, f"{name}: {shown(response)}"
        route.endpoint.assert_served(response, sent=body)
    assert_unharmed(gateway)


@pytest.mark.parametrize("case", params(WRONG_TYPE_CASES))
def test_wrong_json_type(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


@pytest.mark.parametrize("route", route_params(JSON_ROUTES))
def test_wrong_types_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, WRONG_TYPE_CASES)
