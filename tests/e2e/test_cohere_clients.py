"""The Cohere Embed routes driven by the real `cohere` clients against a live `random:tiny` server:
`ClientV2.embed` with texts, images and inputs and every embedding type, and the v1 `Client.embed`
with more texts than its batch of 96. Every vector at reference parity: cosine >= 0.9999 to the
Hugging Face pipeline, unit length."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import cohere
import numpy as np
import pytest

from tests import imagegen
from tests.e2e.conftest import unit_at_parity as at_parity

TEXTS = ["a photo of a cat", "a dog on a skateboard"]
JPEG = imagegen.sample("jpeg", seed=41)
PNG = imagegen.sample("png", seed=42)
JPEG_URI = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.fixture(scope="module")
def v2(live_server: str) -> Iterator[Any]:
    client = cohere.ClientV2(api_key="unused", base_url=live_server)
    yield client
    client._client_wrapper.httpx_client.httpx_client.close()


def test_v2_texts_every_embedding_type(v2: Any, reference: Any) -> None:
    response = v2.embed(
        model="embed-v4.0",
        input_type="search_document",
        texts=TEXTS,
        embedding_types=["float", "base64", "binary", "ubinary"],
    )
    embeddings = response.embeddings
    assert response.texts == TEXTS and response.meta.api_version.version == "2"
    for i, (want, text) in enumerate(zip(reference.texts(TEXTS), TEXTS, strict=True)):
        floats = np.asarray(embeddings.float_[i], dtype=np.float32)
        at_parity(reference, floats, want, text)
        decoded = np.frombuffer(base64.b64decode(embeddings.base64[i]), "<f4")
        np.testing.assert_array_equal(decoded, floats)
        unpacked = np.unpackbits(np.asarray(embeddings.ubinary[i], dtype=np.uint8))
        np.testing.assert_array_equal(unpacked, (floats >= 0).astype(np.uint8))
        assert embeddings.binary[i] == [b - 128 for b in embeddings.ubinary[i]]
    assert embeddings.int8 is None and embeddings.uint8 is None


def test_v2_images_and_inputs(v2: Any, reference: Any) -> None:
    images = v2.embed(model="embed-v4.0", input_type="image", images=[JPEG_URI, PNG_URI], embedding_types=["float"])
    at_parity(reference, images.embeddings.float_[0], reference.image(JPEG), "image jpeg")
    at_parity(reference, images.embeddings.float_[1], reference.image(PNG), "image png")
    assert [(i.width, i.height, i.format, i.bit_depth) for i in images.images] == [
        (320, 240, "jpeg", 8),
        (320, 240, "png", 8),
    ]
    inputs = v2.embed(
        model="embed-v4.0",
        input_type="search_document",
        inputs=[
            {"content": [{"type": "text", "text": "a photo of a cat"}]},
            {"content": [{"type": "image_url", "image_url": {"url": PNG_URI}}]},
        ],
        embedding_types=["float"],
    )
    at_parity(reference, inputs.embeddings.float_[0], reference.text("a photo of a cat"), "input text")
    at_parity(reference, inputs.embeddings.float_[1], reference.image(PNG), "input image")


def test_v2_errors_map_to_the_clients_exceptions(v2: Any) -> None:
    with pytest.raises(cohere.errors.BadRequestError) as caught:
        v2.embed(model="m", input_type="search_query", texts=["a"], embedding_types=["int8"])
    assert "int8" in caught.value.body["message"]
    with pytest.raises(cohere.errors.BadRequestError):
        v2.embed(model="m", input_type="search_query", texts=[" ".join(["photograph"] * 200)], truncate="NONE")


def test_v1_client_batches_more_than_96_texts(live_server: str, reference: Any) -> None:
    texts = [f"photo number {n} of a small cat" for n in range(100)]
    client = cohere.Client(api_key="unused", base_url=live_server)
    try:
        response = client.embed(texts=texts, model="embed-english-v3.0", input_type="search_document")
    finally:
        client._client_wrapper.httpx_client.httpx_client.close()
    assert response.response_type == "embeddings_floats"
    assert len(response.embeddings) == 100 and response.texts == texts
    assert ", " in response.id  # the client merged two answers (96 + 4)
    expected = reference.texts(texts)
    for n in (0, 95, 96, 99):
        at_parity(reference, response.embeddings[n], expected[n], texts[n])
