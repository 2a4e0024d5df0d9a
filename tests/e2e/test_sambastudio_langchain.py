"""SambaStudio clients against a live clipgate: langchain_community's `SambaStudioEmbeddings` on every
API family it speaks, and the ai-starter-kit `image_search` calls made with plain `requests`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import requests
from langchain_core._api.deprecation import LangChainDeprecationWarning

from tests import imagegen

with warnings.catch_warnings():
    # langchain-community warns on import that it is being sunset; that is not ours to fix.
    warnings.filterwarnings("ignore", message="`langchain-community` is being sunset", category=DeprecationWarning)
    from langchain_community.embeddings import SambaStudioEmbeddings

pytestmark = pytest.mark.e2e

API_KEY = "test-api-key"
PROJECT, ENDPOINT = "clip-project", "clip-endpoint"
URIS = {"v1": "api/predict/generic", "v2": "api/v2/predict/generic", "nlp": "api/predict/nlp"}
DOCUMENTS = ["a photo of a cat", "a red car parked on the street", "sunset over the sea", "a bowl of fruit", "x"]
TIMEOUT_S = 30


def embeddings_client(base_url: str, base_uri: str, **extra: Any) -> SambaStudioEmbeddings:
    with warnings.catch_warnings():
        # The class is deprecated in favour of langchain_sambanova; it warns once, on first use.
        warnings.filterwarnings(
            "ignore", message="The class `SambaStudioEmbeddings` was deprecated", category=LangChainDeprecationWarning
        )
        return SambaStudioEmbeddings(
            sambastudio_embeddings_base_url=base_url,
            sambastudio_embeddings_base_uri=base_uri,
            sambastudio_embeddings_project_id=PROJECT,
            sambastudio_embeddings_endpoint_id=ENDPOINT,
            sambastudio_embeddings_api_key=API_KEY,
            **extra,
        )


@pytest.mark.parametrize("trailing_slash", [False, True], ids=["base", "base-with-slash"])
@pytest.mark.parametrize("family", list(URIS))
def test_langchain_embed_documents_and_query(
    live_server: str, reference: Any, family: str, trailing_slash: bool
) -> None:
    # A base URL with a trailing slash makes the client send `//api/...`; the server must route it.
    base_url = live_server + "/" if trailing_slash else live_server
    client = embeddings_client(base_url, URIS[family])
    expected = reference.texts(DOCUMENTS)
    vectors = client.embed_documents(DOCUMENTS, batch_size=2)  # three requests: 2 + 2 + 1
    assert len(vectors) == len(DOCUMENTS)
    for i, (vector, want) in enumerate(zip(vectors, expected, strict=True)):
        reference.check(vector, want, f"{family} document {i}")
    query = client.embed_query("a photo of a dog")
    reference.check(query, reference.text("a photo of a dog"), f"{family} query")


def test_langchain_default_base_uri_is_generic_v1(
    live_server: str, reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No base_uri given and none in the environment: the client defaults to api/predict/generic.
    monkeypatch.delenv("SAMBASTUDIO_EMBEDDINGS_BASE_URI", raising=False)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The class `SambaStudioEmbeddings` was deprecated", category=LangChainDeprecationWarning
        )
        client = SambaStudioEmbeddings(
            sambastudio_embeddings_base_url=live_server,
            sambastudio_embeddings_project_id=PROJECT,
            sambastudio_embeddings_endpoint_id=ENDPOINT,
            sambastudio_embeddings_api_key=API_KEY,
        )
    assert client.sambastudio_embeddings_base_uri == "api/predict/generic"
    reference.check(client.embed_query("a bowl of fruit"), reference.text("a bowl of fruit"), "default base_uri")


@pytest.mark.parametrize("family", list(URIS))
def test_langchain_model_kwargs_are_sent_as_params_and_accepted(live_server: str, reference: Any, family: str) -> None:
    # v1 and nlp send typed params ({"type": "str", "value": ...}); v2 sends them as they are.
    client = embeddings_client(
        live_server, URIS[family], model_kwargs={"select_expert": "clip-vit-b-32", "max_tokens": 77}
    )
    vectors = client.embed_documents(["a cat", "a dog"])
    assert len(vectors) == 2
    for vector, want in zip(vectors, reference.texts(["a cat", "a dog"]), strict=True):
        reference.check(vector, want, f"{family} with params")
    reference.check(client.embed_query("a cat"), reference.text("a cat"), f"{family} query with params")


def test_langchain_error_surfaces_as_runtime_error(live_server: str) -> None:
    # The client raises RuntimeError carrying the body for any non-200. A text longer than the
    # model's 77 tokens is refused (no silent truncation by default) with SambaStudio's shape.
    client = embeddings_client(live_server, URIS["nlp"])
    with pytest.raises(RuntimeError, match="status code 400") as caught:
        client.embed_query("word " * 200)
    assert '"status_code":400' in str(caught.value).replace(" ", "")


# --- ai-starter-kit image_search: plain requests, header `key`, reads json()["data"][0] ---------


def starter_kit_url(base_url: str, family: str) -> str:
    # CLIP_BASE_URL is the nlp URL; images go to CLIP_BASE_URL.replace("nlp", "file").
    clip_base_url = f"{base_url}/api/predict/nlp/{PROJECT}/{ENDPOINT}"
    return clip_base_url if family == "nlp" else clip_base_url.replace("nlp", "file")


def test_starter_kit_image_file(live_server: str, reference: Any, tmp_path: Path) -> None:
    data = imagegen.jpeg(seed=51)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    with open(path, "rb") as fh:
        response = requests.post(
            starter_kit_url(live_server, "file"),
            headers={"key": API_KEY},
            files={"predict_file": fh},
            timeout=TIMEOUT_S,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status_code"] == 200 and len(body["data"]) == 1
    reference.check(body["data"][0], reference.image(data), "starter kit file upload")


def test_starter_kit_image_png_bytes(live_server: str, reference: Any) -> None:
    # From a numpy array the kit sends PNG bytes; requests then names the file `predict_file`
    # and gives the part no Content-Type.
    data = imagegen.sample("png", seed=52)
    response = requests.post(
        starter_kit_url(live_server, "file"), headers={"key": API_KEY}, files={"predict_file": data}, timeout=TIMEOUT_S
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status_code"] == 200 and len(body["data"]) == 1
    reference.check(body["data"][0], reference.image(data), "starter kit PNG bytes")


def test_starter_kit_text(live_server: str, reference: Any) -> None:
    text = "a photo of a metal can"
    response = requests.post(
        starter_kit_url(live_server, "nlp"),
        headers={"key": API_KEY, "Content-Type": "application/json"},
        json={"inputs": [text]},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status_code"] == 200 and len(body["data"]) == 1
    reference.check(body["data"][0], reference.text(text), "starter kit text")
