"""The Cohere Embed adapter over HTTP (in process): v2 and v1 bodies, every embedding type,
truncation, image descriptions, billed units, and its error shape."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from adapters.cohere import packed_signs
from clipgate.app import create_app
from clipgate.engine import Model
from tests import imagegen
from tests.conftest import make_config

DIM = 512
JPEG = imagegen.sample("jpeg", seed=8)
PNG16 = imagegen.png_16bit_gray()[0]
JPEG_URI = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
PNG16_URI = "data:image/png;base64," + base64.b64encode(PNG16).decode()
LONG = " ".join(f"w{n}" for n in range(100))


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def raw_text(client: TestClient, text: str) -> np.ndarray:
    return np.asarray(client.post("/clip/embed_text", json={"text": text}).json()["embeddings"][0])


def raw_image(client: TestClient, data: bytes) -> np.ndarray:
    body = {"image": {"type": "base64", "value": base64.b64encode(data).decode()}}
    return np.asarray(client.post("/clip/embed_image", json=body).json()["embeddings"][0])


def unit(v: Any) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def same_direction(a: Any, b: Any) -> bool:
    return float(unit(a) @ unit(b)) >= 0.99999


def error(response: Any, status: int, starts: str = "") -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"id", "message"} and isinstance(body["id"], str) and body["id"], body
    assert isinstance(body["message"], str) and body["message"].startswith(starts), body
    return str(body["message"])


def test_v2_texts_every_embedding_type(client: TestClient) -> None:
    body = {
        "model": "embed-v4.0",
        "input_type": "search_document",
        "texts": ["a photo of a cat", "a dog"],
        "embedding_types": ["float", "base64", "binary", "ubinary"],
    }
    response = client.post("/v2/embed", json=body)
    answer = ok(response)
    assert answer["id"] == response.headers["x-request-id"]
    assert answer["response_type"] == "embeddings_by_type"
    assert answer["texts"] == body["texts"] and "images" not in answer
    assert answer["meta"] == {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 7 + 4}}
    embeddings = answer["embeddings"]
    assert set(embeddings) == {"float", "base64", "binary", "ubinary"}
    for i, text in enumerate(body["texts"]):
        floats = np.asarray(embeddings["float"][i])
        assert floats.shape == (DIM,) and abs(float(np.linalg.norm(floats)) - 1) < 1e-5
        assert same_direction(floats, raw_text(client, text))
        np.testing.assert_array_equal(
            np.frombuffer(base64.b64decode(embeddings["base64"][i]), "<f4"), floats.astype("<f4")
        )
        ubinary = embeddings["ubinary"][i]
        assert len(ubinary) == DIM // 8 and all(0 <= b <= 255 for b in ubinary)
        assert embeddings["binary"][i] == [b - 128 for b in ubinary]
        bits = np.unpackbits(np.asarray(ubinary, dtype=np.uint8))  # most significant bit first
        np.testing.assert_array_equal(bits, (floats >= 0).astype(np.uint8))


def test_only_the_requested_types_and_float_by_default(client: TestClient) -> None:
    answer = ok(client.post("/v2/embed", json={"model": "m", "input_type": "search_query", "texts": ["a"]}))
    assert set(answer["embeddings"]) == {"float"}
    answer = ok(client.post("/v2/embed", json={"texts": ["a"], "embedding_types": ["ubinary"]}))
    assert set(answer["embeddings"]) == {"ubinary"}


def test_packed_signs_most_significant_first() -> None:
    vector = np.asarray([1, -1, -1, -1, -1, -1, -1, 0.5, -2, 0, -1, -1, -1, -1, -1, -1], dtype=np.float32)
    assert packed_signs(vector, signed=False) == [0b10000001, 0b01000000]
    assert packed_signs(vector, signed=True) == [0b10000001 - 128, 0b01000000 - 128]


def test_v2_images_are_described(client: TestClient) -> None:
    body = {"model": "m", "input_type": "image", "images": [JPEG_URI, PNG16_URI], "embedding_types": ["float"]}
    answer = ok(client.post("/v2/embed", json=body))
    assert "texts" not in answer
    assert answer["images"] == [
        {"width": 320, "height": 240, "format": "jpeg", "bit_depth": 8},
        {"width": 200, "height": 150, "format": "png", "bit_depth": 16},
    ]
    assert answer["meta"]["billed_units"] == {"input_tokens": 0, "images": 2}
    assert same_direction(answer["embeddings"]["float"][0], raw_image(client, JPEG))
    assert same_direction(answer["embeddings"]["float"][1], raw_image(client, PNG16))


def test_v2_inputs_one_part_each(client: TestClient) -> None:
    inputs = [
        {"content": [{"type": "text", "text": "a cat"}]},
        {"content": [{"type": "image_url", "image_url": {"url": JPEG_URI}}]},
        {"content": [{"type": "text", "text": ""}, {"type": "image_url", "image_url": JPEG_URI}]},
    ]
    answer = ok(client.post("/v2/embed", json={"model": "m", "input_type": "search_document", "inputs": inputs}))
    floats = answer["embeddings"]["float"]
    assert len(floats) == 3 and "texts" not in answer and len(answer["images"]) == 2
    assert same_direction(floats[0], raw_text(client, "a cat"))
    assert same_direction(floats[1], raw_image(client, JPEG)) and same_direction(floats[2], raw_image(client, JPEG))


def test_truncate_end_by_default_start_and_none(client: TestClient, model: Model) -> None:
    ids = model.preprocessor.tokenizer.encode(LONG).ids
    end = ok(client.post("/v2/embed", json={"texts": [LONG]}))
    assert end["meta"]["billed_units"]["input_tokens"] == 77
    assert same_direction(end["embeddings"]["float"][0], model.embed_texts([ids[:76] + ids[-1:]])[0])
    start = ok(client.post("/v2/embed", json={"texts": [LONG], "truncate": "START", "max_tokens": 12}))
    assert start["meta"]["billed_units"]["input_tokens"] == 12
    assert same_direction(start["embeddings"]["float"][0], model.embed_texts([ids[:1] + ids[-11:]])[0])
    message = error(client.post("/v2/embed", json={"texts": ["ok", LONG], "truncate": "NONE"}), 400, "too many tokens:")
    assert "index 1" in message
    error(
        client.post("/v2/embed", json={"texts": ["a b c d e f"], "truncate": "NONE", "max_tokens": 4}), 400, "too many"
    )
    assert ok(client.post("/v2/embed", json={"texts": ["a b"], "truncate": "NONE", "max_tokens": 4}))


def test_v1_without_embedding_types_answers_floats(client: TestClient) -> None:
    answer = ok(client.post("/v1/embed", json={"texts": ["a cat", "a dog"], "model": "embed-english-v3.0"}))
    assert answer["response_type"] == "embeddings_floats"
    assert len(answer["embeddings"]) == 2 and len(answer["embeddings"][0]) == DIM
    assert answer["texts"] == ["a cat", "a dog"]
    assert answer["meta"]["api_version"] == {"version": "1"}
    typed = ok(
        client.post(
            "/v1/embed", json={"texts": ["a cat"], "embedding_types": ["float"], "input_type": "search_document"}
        )
    )
    assert typed["response_type"] == "embeddings_by_type"
    assert same_direction(typed["embeddings"]["float"][0], answer["embeddings"][0])  # a batch of 1, then of 2
    images = ok(client.post("/v1/embed", json={"images": [JPEG_URI], "input_type": "image"}))
    assert images["texts"] == [] and len(images["embeddings"]) == 1


def test_normalize_off_gives_raw_vectors(model: Model) -> None:
    with TestClient(create_app(make_config(cohere={"normalize": False}), model)) as client:
        floats = ok(client.post("/v2/embed", json={"texts": ["a cat"]}))["embeddings"]["float"][0]
        np.testing.assert_allclose(floats, raw_text(client, "a cat"), rtol=0, atol=1e-6)


BAD = {
    "not an object": ["a"],
    "nothing": {"model": "m"},
    "texts and images": {"texts": ["a"], "images": [JPEG_URI]},
    "empty texts": {"texts": []},
    "texts not strings": {"texts": [1]},
    "image not a data uri": {"images": ["https://example.com/a.jpg"]},
    "image raw base64": {"images": [base64.b64encode(JPEG).decode()]},
    "image not an image": {"images": ["data:image/png;base64,aGVsbG8="]},
    "input with two parts": {"inputs": [{"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
    "input with text and image": {
        "inputs": [{"content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": JPEG_URI}}]}]
    },
    "input empty": {"inputs": [{"content": []}]},
    "input part type": {"inputs": [{"content": [{"type": "audio"}]}]},
    "input_type": {"texts": ["a"], "input_type": "query"},
    "int8": {"texts": ["a"], "embedding_types": ["int8"]},
    "uint8": {"texts": ["a"], "embedding_types": ["float", "uint8"]},
    "unknown type": {"texts": ["a"], "embedding_types": ["float16"]},
    "truncate": {"texts": ["a"], "truncate": "MIDDLE"},
    "max_tokens": {"texts": ["a"], "max_tokens": 0},
    "max_tokens one": {"texts": ["a"], "max_tokens": 1},
    "output_dimension": {"texts": ["a"], "output_dimension": 1024},
    "url while urls are off": {
        "inputs": [{"content": [{"type": "image_url", "image_url": "https://example.com/a.jpg"}]}]
    },
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_requests_are_400_in_cohere_shape(client: TestClient, name: str) -> None:
    message = error(client.post("/v2/embed", json=BAD[name]), 400, "invalid request: ")
    if name in ("int8", "uint8"):
        assert "is not supported by this model" in message


def test_v1_has_no_inputs(client: TestClient) -> None:
    error(client.post("/v1/embed", json={"inputs": [{"content": [{"type": "text", "text": "a"}]}]}), 400)


def test_output_dimension_is_refused_before_anything_is_embedded(client: TestClient) -> None:
    """With truncate NONE a text over 77 tokens would be refused by the embedding; the width is
    checked first."""
    long = " ".join(f"w{n}" for n in range(100))
    body = {"texts": ["a", long], "truncate": "NONE", "output_dimension": 1024}
    assert "output_dimension 1024" in error(client.post("/v2/embed", json=body), 400, "invalid request: ")


def test_output_dimension_of_the_model_is_accepted(client: TestClient) -> None:
    assert ok(client.post("/v2/embed", json={"texts": ["a"], "output_dimension": DIM}))


@pytest.fixture
def keyed(model: Model) -> Iterator[TestClient]:
    with TestClient(create_app(make_config(cohere={"keys": ("co-key",), "strict_model": True}), model)) as client:
        yield client


def test_auth_and_strict_model(keyed: TestClient) -> None:
    error(keyed.post("/v2/embed", json={"texts": ["a"]}), 401, "invalid api token")
    error(keyed.post("/v2/embed", json={"texts": ["a"]}, headers={"Authorization": "Bearer nope"}), 401)
    good = {"Authorization": "Bearer co-key"}
    error(keyed.post("/v2/embed", json={"texts": ["a"], "model": "embed-v4.0"}, headers=good), 404, "model not found")
    assert ok(keyed.post("/v2/embed", json={"texts": ["a"], "model": "ViT-B-32"}, headers=good))


def test_wrong_method_is_405_in_cohere_shape(client: TestClient) -> None:
    error(client.get("/v2/embed"), 405)
