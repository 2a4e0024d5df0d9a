"""The OpenAI-compatible routes driven by the real clients against a live `random:tiny` server:
openai's `OpenAI` (base64 by default, and float; texts; images by `modality`, data URIs and
content parts) and `AzureOpenAI`, and langchain-openai's `OpenAIEmbeddings` (cl100k token ids by
default, plain texts with check_embedding_ctx_length=False). Every vector at reference parity:
cosine >= 0.9999 to the Hugging Face pipeline, unit length."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests import imagegen
from tests.e2e.conftest import unit_at_parity as at_parity

TEXTS = ["a photo of a cat", "a dog on a skateboard", "red"]
JPEG = imagegen.sample("jpeg", seed=31)
PNG = imagegen.sample("png", seed=32)
JPEG_URI = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.fixture(scope="module")
def client(live_server: str) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{live_server}/v1", api_key="EMPTY", max_retries=0) as opened:
        yield opened


def close(embeddings: Any) -> None:
    """langchain's OpenAIEmbeddings holds an openai client it never closes."""
    embeddings.client._client.close()


def test_default_base64_texts(client: Any, reference: Any) -> None:
    response = client.embeddings.create(model="text-embedding-3-small", input=TEXTS)
    assert response.model == "random:tiny" and response.usage.prompt_tokens > len(TEXTS) * 2
    expected = reference.texts(TEXTS)
    assert [row.index for row in response.data] == [0, 1, 2]
    for row, want, text in zip(response.data, expected, TEXTS, strict=True):
        assert isinstance(row.embedding, list)  # the client decoded the base64 itself
        at_parity(reference, row.embedding, want, text)


def test_float_and_base64_agree(client: Any) -> None:
    floats = client.embeddings.create(model="m", input="a photo of a cat", encoding_format="float")
    encoded = client.embeddings.create(model="m", input="a photo of a cat", encoding_format="base64")
    raw = np.frombuffer(base64.b64decode(encoded.data[0].embedding), "<f4")
    np.testing.assert_allclose(raw, np.asarray(floats.data[0].embedding, dtype=np.float32), rtol=0, atol=0)


def test_images_by_modality_data_uris_and_content_parts(client: Any, reference: Any) -> None:
    want_jpeg, want_png = reference.image(JPEG), reference.image(PNG)
    modality = client.embeddings.create(
        model="clip", input=[JPEG_URI, base64.b64encode(PNG).decode()], extra_body={"modality": "image"}
    )
    at_parity(reference, modality.data[0].embedding, want_jpeg, "modality image, data URI")
    at_parity(reference, modality.data[1].embedding, want_png, "modality image, bare base64")
    mixed = client.embeddings.create(model="clip", input=["a photo of a cat", PNG_URI])  # LiteLLM's convention
    at_parity(reference, mixed.data[0].embedding, reference.text("a photo of a cat"), "text beside a data URI")
    at_parity(reference, mixed.data[1].embedding, want_png, "data URI string")
    parts = client.embeddings.create(
        model="clip",
        input=[{"type": "image_url", "image_url": {"url": JPEG_URI}}, {"type": "text", "text": "red"}],  # type: ignore[list-item]
        encoding_format="float",
    )
    at_parity(reference, parts.data[0].embedding, want_jpeg, "image_url content part")
    at_parity(reference, parts.data[1].embedding, reference.text("red"), "text content part")


def test_base_url_without_v1_and_models(live_server: str, reference: Any) -> None:
    with openai.OpenAI(base_url=live_server, api_key="EMPTY", max_retries=0) as bare:
        response = bare.embeddings.create(model="clip", input=["red"])
        at_parity(reference, response.data[0].embedding, reference.text("red"), "POST /embeddings")
        models = bare.models.list()
        assert [m.id for m in models.data] == ["random:tiny"]
        assert bare.models.retrieve("random:tiny").id == "random:tiny"


def test_vllm_chat_form_through_the_clients_post(client: Any, reference: Any) -> None:
    body = {
        "model": "clip",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_URI}}]}],
    }
    response = client.post("/embeddings", cast_to=object, body={**body, "encoding_format": "float"})
    at_parity(reference, response["data"][0]["embedding"], reference.image(PNG), "vLLM messages")


def test_azure_openai(live_server: str, reference: Any) -> None:
    with openai.AzureOpenAI(
        azure_endpoint=live_server, azure_deployment="clip", api_version="2024-02-01", api_key="k", max_retries=0
    ) as azure:
        response = azure.embeddings.create(model="clip", input=TEXTS[:2])
    for row, want, text in zip(response.data, reference.texts(TEXTS[:2]), TEXTS[:2], strict=True):
        at_parity(reference, row.embedding, want, f"azure {text}")


def test_errors_map_to_the_clients_exceptions(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="clip", input=[" ".join(["photograph"] * 200)])
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "input"
    with pytest.raises(openai.BadRequestError) as dims:
        client.embeddings.create(model="clip", input=["a"], dimensions=256)
    assert dims.value.param == "dimensions"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("text-embedding-3-large")


# --- langchain-openai -----------------------------------------------------------------------------


def test_langchain_default_sends_token_ids_and_gets_the_texts_vectors(
    live_server: str, reference: Any, tiktoken_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_openai import OpenAIEmbeddings
    from openai.resources.embeddings import Embeddings

    sent: list[Any] = []
    create = Embeddings.create

    def recording(self: Any, **kwargs: Any) -> Any:
        sent.append(kwargs["input"])
        return create(self, **kwargs)

    monkeypatch.setattr(Embeddings, "create", recording)
    embeddings = OpenAIEmbeddings(base_url=f"{live_server}/v1", api_key="EMPTY", max_retries=0)  # type: ignore[arg-type]
    documents = ["a photo of a cat", "", "a dog on a skateboard"]
    try:
        vectors = embeddings.embed_documents(documents)
        query = embeddings.embed_query("red")
    finally:
        close(embeddings)
    # what went on the wire: cl100k ids for the two texts, then "" for the empty document
    assert sent[0] == [[64, 6685, 315, 264, 8415], [64, 5679, 389, 264, 99082]] and sent[1] == ""
    assert len(vectors) == 3
    expected = reference.texts(documents)
    for vector, want, text in zip(vectors, expected, documents, strict=True):
        at_parity(reference, vector, want, f"langchain default: {text!r}")
    at_parity(reference, query, reference.text("red"), "langchain embed_query")


def test_langchain_plain_texts(live_server: str, reference: Any) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        base_url=f"{live_server}/v1",
        api_key="EMPTY",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    try:
        vectors = embeddings.embed_documents(TEXTS)
    finally:
        close(embeddings)
    for vector, want, text in zip(vectors, reference.texts(TEXTS), TEXTS, strict=True):
        at_parity(reference, vector, want, f"langchain plain: {text}")
