"""Every adapter parser, fed any JSON at all, either parses it or raises a 4xx ClipgateError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import REGISTRY
from clipgate.canonical import EmbedRequest, FormPart, ImageInput, RequestMeta, TextInput
from clipgate.errors import ClipgateError

META = RequestMeta(method="POST", path="/", headers={}, query={}, content_type="application/json")
KEYS = [
    "image",
    "text",
    "subject",
    "prompt",
    "subject_type",
    "prompt_type",
    "type",
    "value",
    "inputs",
    "instances",
    "items",
    "id",
    "params",
    "input_data",
    "columns",
    "data",
    "index",
    "clip_version_id",
    "api_key",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.sampled_from(
        [
            "",
            "image",
            "text",
            "base64",
            "url",
            "numpy",
            "file",
            "aGVsbG8=",
            "https://example.com/a.jpg",
            "ViT-B-32",
            "#",
        ]
    )
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=25,
)
PARSERS: list[tuple[str, Callable[..., EmbedRequest]]] = [
    (f"{name}{op.path}", op.parse)
    for name, adapter in REGISTRY.items()
    for op in adapter.operations
    if op.parse is not None and op.body == "json"
]


def check(parse: Callable[..., EmbedRequest], body: Any) -> None:
    try:
        request = parse(body, META)
    except ClipgateError as err:
        assert 400 <= err.status < 500, f"{type(err).__name__} {err.status}: {err.message}"
        assert err.message
        return
    assert request.items
    assert all(isinstance(item, TextInput | ImageInput) for item in request.items)


@pytest.mark.parametrize(("route", "parse"), PARSERS, ids=[r for r, _ in PARSERS])
@given(body=JSON)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_json_parsers_never_fail_unexpectedly(route: str, parse: Callable[..., EmbedRequest], body: Any) -> None:
    check(parse, body)


@given(
    parts=st.lists(
        st.builds(
            FormPart,
            name=st.sampled_from(["predict_file", "file", ""]),
            data=st.binary(max_size=50),
            filename=st.none() | st.text(max_size=10),
            content_type=st.none() | st.text(max_size=10),
        ),
        max_size=4,
    )
)
@settings(max_examples=200, deadline=None)
def test_multipart_parser_never_fails_unexpectedly(parts: list[FormPart]) -> None:
    parse = next(op.parse for op in REGISTRY["sambastudio"].operations if op.body == "multipart")
    assert parse is not None
    check(parse, parts)
