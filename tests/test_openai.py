"""The OpenAI-compatible adapter over HTTP (in process): every input form, encodings, normalization,
usage, truncation, token ids, models, auth and its error shape."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from adapters.openai import CL100K_SPECIAL, cl100k_table, detokenize
from clipgate.app import create_app
from clipgate.engine import Model
from tests import imagegen
from tests.conftest import make_config

DIM = 512
JPEG = imagegen.sample("jpeg", seed=5)
PNG = imagegen.sample("png", seed=6)
JPEG_B64 = base64.b64encode(JPEG).decode()
JPEG_URI = "data:image/jpeg;base64," + JPEG_B64
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
# "a photo of a cat" and "" in cl100k_base, as tiktoken (and so langchain's OpenAIEmbeddings) encodes them
CAT_IDS = [64, 6685, 315, 264, 8415]


def vectors(response: Any) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and [row["index"] for row in body["data"]] == list(range(len(body["data"])))
    out = []
    for row in body["data"]:
        assert row["object"] == "embedding"
        value = row["embedding"]
        out.append(np.frombuffer(base64.b64decode(value), "<f4") if isinstance(value, str) else np.asarray(value))
    return out


def raw_text(client: TestClient, text: str) -> np.ndarray:
    """The raw vector of a text, through another protocol (Roboflow)."""
    return np.asarray(client.post("/clip/embed_text", json={"text": text}).json()["embeddings"][0])


def raw_image(client: TestClient, data: bytes) -> np.ndarray:
    body = {"image": {"type": "base64", "value": base64.b64encode(data).decode()}}
    return np.asarray(client.post("/clip/embed_image", json=body).json()["embeddings"][0])


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def same_direction(a: np.ndarray, b: np.ndarray) -> bool:
    return float(unit(a.astype(np.float64)) @ unit(b.astype(np.float64))) >= 0.99999


def error(response: Any, status: int, param: str | None = None, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param and body["error"]["code"] == code, body
    assert body["error"]["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


# --- the response -------------------------------------------------------------------------------


def test_a_text_gives_one_unit_vector_naming_the_served_model(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": "a photo of a cat", "model": "text-embedding-ada-002"})
    (vector,) = vectors(response)
    body = response.json()
    assert body["model"] == "random:tiny"
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}  # BOS + 5 + EOS
    assert vector.shape == (DIM,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    assert same_direction(vector, raw_text(client, "a photo of a cat"))
    assert response.headers["x-request-id"]


def test_base64_is_little_endian_float32_of_the_float_answer(client: TestClient) -> None:
    body = {"input": ["a cat", "a dog"], "model": "m"}
    floats = vectors(client.post("/v1/embeddings", json={**body, "encoding_format": "float"}))
    encoded = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    for row, want in zip(encoded["data"], floats, strict=True):
        assert len(base64.b64decode(row["embedding"])) == DIM * 4
        np.testing.assert_array_equal(np.frombuffer(base64.b64decode(row["embedding"]), "<f4"), want.astype("<f4"))


def test_normalize_false_gives_the_raw_vectors_of_the_other_protocols(client: TestClient, model: Model) -> None:
    for key in ("normalize", "use_activation"):
        (vector,) = vectors(client.post("/v1/embeddings", json={"input": "a cat", key: False}))
        np.testing.assert_allclose(vector, raw_text(client, "a cat"), rtol=0, atol=1e-6)
    with TestClient(create_app(make_config(openai={"normalize": False}), model)) as raw:
        (vector,) = vectors(raw.post("/v1/embeddings", json={"input": "a cat"}))
        assert abs(float(np.linalg.norm(vector)) - 1) > 1e-3
        (forced,) = vectors(raw.post("/v1/embeddings", json={"input": "a cat", "normalize": True}))
        assert abs(float(np.linalg.norm(forced)) - 1) < 1e-5


@pytest.mark.parametrize(
    "path", ["/v1/embeddings", "/embeddings", "/openai/v1/embeddings", "/openai/deployments/clip/embeddings"]
)
def test_every_route_serves(client: TestClient, path: str) -> None:
    response = client.post(path, params={"api-version": "2024-02-01"}, json={"input": ["a"], "model": "x"})
    assert len(vectors(response)) == 1


# --- input forms --------------------------------------------------------------------------------

FORMS = {
    "list of strings": ({"input": ["a cat", "a dog"]}, ["t:a cat", "t:a dog"]),
    "data uri string": ({"input": JPEG_URI}, ["i:jpeg"]),
    "data uri among texts": ({"input": ["a cat", PNG_URI]}, ["t:a cat", "i:png"]),
    "modality image": ({"input": [JPEG_B64, PNG_URI], "modality": "image"}, ["i:jpeg", "i:png"]),
    "content parts": (
        {
            "input": [
                {"type": "text", "text": "a cat"},
                {"type": "image_url", "image_url": {"url": JPEG_URI}},
                {"type": "image_url", "image_url": PNG_URI},
            ]
        },
        ["t:a cat", "i:jpeg", "i:png"],
    ),
    "jina objects": (
        {"input": [{"text": "a cat"}, {"image": JPEG_B64}, {"bytes": base64.b64encode(PNG).decode()}]},
        ["t:a cat", "i:jpeg", "i:png"],
    ),
    "strings and objects": ({"input": ["a dog", {"image": PNG_URI}]}, ["t:a dog", "i:png"]),
    "vllm messages, one": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": JPEG_URI}}]}]},
        ["i:jpeg"],
    ),
    "vllm messages, batched": (
        {
            "messages": [
                [{"role": "system", "content": ""}, {"role": "user", "content": "a cat"}],
                [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": ""}, {"type": "image_url", "image_url": {"url": PNG_URI}}],
                    }
                ],
            ]
        },
        ["t:a cat", "i:png"],
    ),
    "messages in input": ({"input": [{"role": "user", "content": "a dog"}]}, ["t:a dog"]),
    "empty string": ({"input": ""}, ["t:"]),
    "token ids": ({"input": CAT_IDS}, ["t:a photo of a cat"]),
    "token id arrays, one empty": ({"input": [CAT_IDS, []]}, ["t:a photo of a cat", "t:"]),
}


@pytest.mark.parametrize("name", list(FORMS))
def test_input_forms_give_the_vectors_of_their_items(client: TestClient, name: str) -> None:
    body, expected = FORMS[name]
    got = vectors(client.post("/v1/embeddings", json={"model": "m", **body}))
    assert len(got) == len(expected)
    images = {"jpeg": JPEG, "png": PNG}
    for vector, want in zip(got, expected, strict=True):
        kind, _, value = want.partition(":")
        raw = raw_text(client, value) if kind == "t" else raw_image(client, images[value])
        assert same_direction(vector, raw), f"{name}: {want}"


def test_usage_counts_the_clip_tokens_of_the_texts_only(client: TestClient) -> None:
    body = client.post("/v1/embeddings", json={"input": ["a cat", "", JPEG_URI]}).json()
    assert body["usage"] == {"prompt_tokens": 4 + 2, "total_tokens": 6}


def test_cl100k_table_is_tiktokens_own() -> None:
    table = cl100k_table()
    assert table is not None and len(table) == 100277
    assert detokenize(CAT_IDS, "input") == "a photo of a cat"
    assert detokenize([15339, 1917], "input") == "hello world"
    assert all(table[n] == text.encode() for n, text in CL100K_SPECIAL.items())
    assert table[100256] is None and table[100261] is None  # ids cl100k_base leaves unused


# --- truncation ---------------------------------------------------------------------------------

LONG = " ".join(f"w{n}" for n in range(100))


def test_text_over_77_tokens_is_context_length_exceeded(client: TestClient) -> None:
    message = error(
        client.post("/v1/embeddings", json={"input": ["ok", LONG]}), 400, "input", "context_length_exceeded"
    )
    assert "index 1" in message and "77" in message


@pytest.mark.parametrize(("side", "rule"), [(None, "end"), ("right", "end"), ("left", "start")])
def test_truncate_prompt_tokens_cuts_as_vllm_does(
    client: TestClient, model: Model, side: str | None, rule: str
) -> None:
    body: dict[str, Any] = {"input": [LONG], "truncate_prompt_tokens": 10}
    if side is not None:
        body["truncation_side"] = side
    response = client.post("/v1/embeddings", json=body)
    (vector,) = vectors(response)
    assert response.json()["usage"]["prompt_tokens"] == 10
    ids = model.preprocessor.tokenizer.encode(LONG).ids
    kept = ids[:9] + ids[-1:] if rule == "end" else ids[:1] + ids[-9:]
    expected = model.embed_texts([kept])[0]
    assert same_direction(vector, expected)
    (whole,) = vectors(client.post("/v1/embeddings", json={"input": [LONG], "truncate_prompt_tokens": -1}))
    assert (
        client.post("/v1/embeddings", json={"input": [LONG], "truncate_prompt_tokens": -1}).json()["usage"][
            "prompt_tokens"
        ]
        == 77
    )
    assert not same_direction(whole, vector)


# --- errors -------------------------------------------------------------------------------------

BAD = {
    "not an object": ([1, 2], None),
    "no input": ({"model": "m"}, "input"),
    "input null": ({"input": None}, "input"),
    "empty list": ({"input": []}, "input"),
    "number": ({"input": 5.5}, "input"),
    "ints mixed with strings": ({"input": [1, "a"]}, "input"),
    "token id out of range": ({"input": [[100256]]}, "input"),
    "negative token id": ({"input": [-1]}, "input"),
    "text and image in one object": ({"input": [{"text": "a", "image": JPEG_B64}]}, "input"),
    "typed part with both": ({"input": [{"type": "text", "text": "a", "image_url": JPEG_URI}]}, "input"),
    "unknown part type": ({"input": [{"type": "audio", "audio": "x"}]}, "input"),
    "image_url not an image": ({"input": [{"type": "image_url", "image_url": {"url": "cat.jpg"}}]}, "input"),
    "data uri not base64": ({"input": "data:image/png,abc"}, "input"),
    "bad base64 image": ({"input": "data:image/png;base64,@@@@"}, "input"),
    "not an image": ({"input": ["xx"], "modality": "image"}, "input"),
    "url while urls are off": ({"input": [{"image": "https://example.com/a.jpg"}]}, "input"),
    "conversation with two parts": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
        "input",
    ),
    "conversation with text and image": (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "image_url", "image_url": JPEG_URI}]},
            ]
        },
        "input",
    ),
    "empty conversation": ({"messages": [{"role": "user", "content": ""}]}, "input"),
    "input and messages": ({"input": "a", "messages": [{"role": "user", "content": "b"}]}, "input"),
    "encoding_format": ({"input": "a", "encoding_format": "binary"}, "encoding_format"),
    "dimensions": ({"input": "a", "dimensions": 256}, "dimensions"),
    "dimensions not int": ({"input": "a", "dimensions": "512"}, "dimensions"),
    "modality audio": ({"input": "a", "modality": "audio"}, "modality"),
    "normalize not bool": ({"input": "a", "normalize": "yes"}, "normalize"),
    "truncate_prompt_tokens 1": ({"input": "a", "truncate_prompt_tokens": 1}, "truncate_prompt_tokens"),
    "truncation_side": ({"input": "a", "truncation_side": "middle"}, "truncation_side"),
    "model not a string": ({"input": "a", "model": 3}, "model"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_requests_are_400_in_openai_shape(client: TestClient, name: str) -> None:
    body, param = BAD[name]
    error(client.post("/v1/embeddings", json=body), 400, param)


def test_dimensions_of_the_model_or_null_are_accepted(client: TestClient) -> None:
    for dimensions in (DIM, None):
        assert len(vectors(client.post("/v1/embeddings", json={"input": "a", "dimensions": dimensions}))) == 1


def test_dimensions_are_refused_before_anything_is_embedded(client: TestClient) -> None:
    """A text over 77 tokens would be refused by the embedding; the width is checked first."""
    response = client.post("/v1/embeddings", json={"input": ["a", LONG], "dimensions": 256})
    error(response, 400, "dimensions")


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post("/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"})
    error(response, 400)


@pytest.fixture
def strict_keyed(model: Model) -> Iterator[TestClient]:
    config = make_config(openai={"keys": ("sk-good",), "strict_model": True})
    with TestClient(create_app(config, model)) as client:
        yield client


def test_auth_takes_bearer_or_azures_api_key(strict_keyed: TestClient) -> None:
    body = {"input": "a", "model": "random:tiny"}
    for headers in ({}, {"Authorization": "Bearer sk-bad"}, {"api-key": "sk-bad"}):
        response = strict_keyed.post("/v1/embeddings", json=body, headers=headers)
        error(response, 401, code="invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert (
        strict_keyed.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer sk-good"}).status_code == 200
    )
    azure = strict_keyed.post(
        "/openai/deployments/ViT-B-32/embeddings", json={"input": "a"}, headers={"api-key": "sk-good"}
    )
    assert azure.status_code == 200


def test_strict_model_answers_404_model_not_found(strict_keyed: TestClient) -> None:
    headers = {"Authorization": "Bearer sk-good"}
    response = strict_keyed.post(
        "/v1/embeddings", json={"input": "a", "model": "text-embedding-ada-002"}, headers=headers
    )
    error(response, 404, "model", "model_not_found")
    azure = strict_keyed.post("/openai/deployments/ada/embeddings", json={"input": "a"}, headers={"api-key": "sk-good"})
    error(azure, 404, "model", "model_not_found")
    for name in ("random:tiny", "ViT-B-32"):
        assert (
            strict_keyed.post("/v1/embeddings", json={"input": "a", "model": name}, headers=headers).status_code == 200
        )


def test_models_list_and_retrieve(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert listed == {
        "object": "list",
        "data": [{"id": "random:tiny", "object": "model", "created": 0, "owned_by": "clipgate"}],
    }
    assert client.get("/models").json() == listed
    assert client.get("/v1/models/random:tiny").json()["id"] == "random:tiny"
    assert client.get("/models/ViT-B-32").json()["id"] == "random:tiny"
    error(client.get("/v1/models/text-embedding-3-small"), 404, "model", "model_not_found")
    error(client.get("/v1/models/openai/clip-vit-base-patch32"), 404, "model", "model_not_found")


def test_wrong_method_is_405_in_openai_shape(client: TestClient) -> None:
    response = client.get("/v1/embeddings")
    error(response, 405)
    assert response.headers["allow"] == "POST"


def test_vectors_are_finite(client: TestClient) -> None:
    for vector in vectors(client.post("/v1/embeddings", json={"input": ["", " ", "a"]})):
        assert all(math.isfinite(float(x)) for x in vector)


def test_not_ready_is_503_with_retry_after_in_both_shapes(tmp_path: Any) -> None:
    """A server whose model never loads: the clients retry 503s, honouring Retry-After."""
    config = make_config(model={"id": str(tmp_path / "absent")})
    with TestClient(create_app(config)) as client:
        response = client.post("/v1/embeddings", json={"input": "a"})
        error(response, 503)
        assert response.headers["retry-after"] == "1"
        cohere = client.post("/v2/embed", json={"texts": ["a"]})
        assert cohere.status_code == 503 and set(cohere.json()) == {"id", "message"}
        assert cohere.headers["retry-after"] == "1"
