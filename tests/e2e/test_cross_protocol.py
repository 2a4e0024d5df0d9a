"""One model behind five vendors' wire formats: the same input gives the same vector, bit for bit,
whichever door it comes in by; the OpenAI and Cohere doors scale it to unit length, as those
vendors do (the same direction, cosine >= 0.99999), and give it bit for bit when asked for the raw
vector. Requests go one at a time, so each is a batch of one. Each vendor's requests and answers are
built and read by its profile (tests/vendors.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import requests

from tests import imagegen, vendors
from tests.vendors import Endpoint

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30
KEY = "k"  # the live server takes no key; each vendor's client sends one anyway, the way it does
IMAGE_ENDPOINTS = [e for e in vendors.endpoints() if e.takes_images and not e.compare]
TEXT_ENDPOINTS = [e for e in vendors.endpoints() if e.takes_texts and not e.compare]


def post(base: str, endpoint: Endpoint, call: dict[str, Any]) -> list[float]:
    """The one vector `endpoint` answers `call` with, read by its vendor's profile."""
    headers = vendors.vendor(endpoint.vendor).auth_headers(KEY)
    response = requests.post(base + endpoint.path, **call, headers=headers, timeout=TIMEOUT_S)
    assert response.status_code == 200, (
        f"{response.request.method} {response.url}: {response.status_code} {response.text[:300]}"
    )
    (vector,) = endpoint.assert_served(response, count=1, sent=call.get("json"))
    return vector


def image_vectors(base: str, data: bytes) -> dict[str, list[float]]:
    return {str(e): post(base, e, e.image_call(data)) for e in IMAGE_ENDPOINTS}


def text_vectors(base: str, text: str) -> dict[str, list[float]]:
    return {str(e): post(base, e, e.text_call([text])) for e in TEXT_ENDPOINTS}


def same(name: str, endpoint: Endpoint, vector: list[float], raw: list[float], reference: Any) -> None:
    """The raw vector, bit for bit; or from a unit-length door, its direction at unit length."""
    if not endpoint.unit:
        assert vector == raw, f"{name} differs from roboflow"
        return
    assert reference.cosine(vector, raw) >= 0.99999, f"{name} points elsewhere than roboflow's vector"
    assert abs(math.sqrt(sum(v * v for v in vector)) - 1) < 1e-5, f"{name} is not unit length"


def test_the_routes_compared_are_every_vendors() -> None:
    assert [str(e) for e in IMAGE_ENDPOINTS] == [
        "roboflow embed_image",
        "sambastudio file",
        "azureml score",
        "openai embeddings",
        "openai embeddings-no-v1",
        "openai kserve",
        "openai azure",
        "cohere v2",
        "cohere v1",
    ]
    assert len(TEXT_ENDPOINTS) == 11 and {e.vendor for e in TEXT_ENDPOINTS} == set(vendors.PROFILES)
    # Azure's sample client sends base64 broken into lines, and so does its profile here.
    score = vendors.AZUREML.endpoint("score")
    encoded = score.image_call(imagegen.sample("jpeg"))["json"]["input_data"]["data"][0][0]
    assert "\n" in encoded[:-1]


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_same_image_bytes_same_vector_on_every_protocol(live_server: str, reference: Any, fmt: str) -> None:
    data = imagegen.sample(fmt, seed=71)
    vectors = image_vectors(live_server, data)
    first = vectors["roboflow embed_image"]
    reference.check(first, reference.image(data), f"{fmt} via roboflow")
    for endpoint in IMAGE_ENDPOINTS:
        same(str(endpoint), endpoint, vectors[str(endpoint)], first, reference)


def test_same_text_same_vector_on_every_protocol(live_server: str, reference: Any) -> None:
    text = "a photo of a metal can"
    vectors = text_vectors(live_server, text)
    first = vectors["roboflow embed_text"]
    reference.check(first, reference.text(text), "text via roboflow")
    for endpoint in TEXT_ENDPOINTS:
        same(str(endpoint), endpoint, vectors[str(endpoint)], first, reference)


def test_the_openai_door_gives_the_raw_vector_bit_for_bit_when_asked(live_server: str) -> None:
    data, text = imagegen.sample("jpeg", seed=74), "a photo of a metal can"
    embeddings = vendors.OPENAI.endpoint("embeddings")
    for call, raw in (
        (embeddings.image_call(data), image_vectors(live_server, data)["roboflow embed_image"]),
        (embeddings.text_call([text]), text_vectors(live_server, text)["roboflow embed_text"]),
    ):
        call["json"]["normalize"] = False
        assert post(live_server, embeddings, call) == raw


def test_different_inputs_give_different_vectors(live_server: str) -> None:
    # Guards the equality tests above against a server that answers everything with one vector.
    file, nlp = vendors.SAMBASTUDIO.endpoint("file"), vendors.SAMBASTUDIO.endpoint("nlp")
    a = post(live_server, file, file.image_call(imagegen.jpeg(seed=72)))
    b = post(live_server, file, file.image_call(imagegen.jpeg(seed=73)))
    assert a != b
    t = post(live_server, nlp, nlp.text_call(["a cat"]))
    u = post(live_server, nlp, nlp.text_call(["a dog"]))
    assert t != u
