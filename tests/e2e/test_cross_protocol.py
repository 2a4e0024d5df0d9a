"""One model behind five vendors' wire formats: the same input gives the same vector, bit for bit,
whichever door it comes in by (the OpenAI and Cohere doors scale it to unit length, as those
vendors do: the same direction). Requests go one at a time, so each is a batch of one."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests

from tests import imagegen

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30
P, E = "proj", "endp"


def ok(response: requests.Response) -> Any:
    assert response.status_code == 200, (
        f"{response.request.method} {response.url}: {response.status_code} {response.text[:300]}"
    )
    return response.json()


def image_via_roboflow(base: str, data: bytes) -> list[float]:
    body = ok(
        requests.post(
            f"{base}/clip/embed_image",
            json={"image": {"type": "base64", "value": base64.b64encode(data).decode()}},
            timeout=TIMEOUT_S,
        )
    )
    assert len(body["embeddings"]) == 1
    return body["embeddings"][0]


def image_via_sambastudio(base: str, data: bytes) -> list[float]:
    body = ok(
        requests.post(
            f"{base}/api/predict/file/{P}/{E}", headers={"key": "k"}, files={"predict_file": data}, timeout=TIMEOUT_S
        )
    )
    assert len(body["data"]) == 1
    return body["data"][0]


def image_via_azureml(base: str, data: bytes) -> list[float]:
    encoded = base64.encodebytes(data).decode()
    assert "\n" in encoded[:-1]
    rows = ok(
        requests.post(
            f"{base}/score",
            json={"input_data": {"columns": ["image", "text"], "index": [0], "data": [[encoded, ""]]}},
            headers={"Authorization": "Bearer k"},
            timeout=TIMEOUT_S,
        )
    )
    assert len(rows) == 1
    return rows[0]["image_features"]


def text_routes(base: str, text: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    body = ok(requests.post(f"{base}/clip/embed_text", json={"text": text}, timeout=TIMEOUT_S))
    out["roboflow /clip/embed_text"] = body["embeddings"][0]
    body = ok(
        requests.post(
            f"{base}/api/predict/nlp/{P}/{E}", json={"inputs": [text]}, headers={"key": "k"}, timeout=TIMEOUT_S
        )
    )
    out["sambastudio nlp"] = body["data"][0]
    body = ok(
        requests.post(
            f"{base}/api/predict/generic/{P}/{E}",
            json={"instances": [text], "params": {}},
            headers={"key": "k"},
            timeout=TIMEOUT_S,
        )
    )
    out["sambastudio generic v1"] = body["predictions"][0]
    body = ok(
        requests.post(
            f"{base}/api/v2/predict/generic/{P}/{E}",
            json={"items": [{"id": "item0", "value": text}], "params": {}},
            headers={"key": "k"},
            timeout=TIMEOUT_S,
        )
    )
    assert body["items"][0]["id"] == "item0"
    out["sambastudio generic v2"] = body["items"][0]["value"]
    rows = ok(
        requests.post(
            f"{base}/score",
            json={"input_data": {"columns": ["image", "text"], "index": [0], "data": [["", text]]}},
            headers={"Authorization": "Bearer k"},
            timeout=TIMEOUT_S,
        )
    )
    out["azureml /score"] = rows[0]["text_features"]
    return out


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_same_image_bytes_same_vector_on_every_protocol(live_server: str, reference: Any, fmt: str) -> None:
    data = imagegen.sample(fmt, seed=71)
    vectors = {
        "roboflow": image_via_roboflow(live_server, data),
        "sambastudio": image_via_sambastudio(live_server, data),
        "azureml": image_via_azureml(live_server, data),
    }
    first = vectors["roboflow"]
    reference.check(first, reference.image(data), f"{fmt} via roboflow")
    for name, vector in vectors.items():
        assert vector == first, f"{name} differs from roboflow"


def test_same_text_same_vector_on_every_protocol(live_server: str, reference: Any) -> None:
    text = "a photo of a metal can"
    vectors = text_routes(live_server, text)
    assert len(vectors) == 5
    first = vectors["roboflow /clip/embed_text"]
    reference.check(first, reference.text(text), "text via roboflow")
    for name, vector in vectors.items():
        assert vector == first, f"{name} differs from roboflow"


def test_different_inputs_give_different_vectors(live_server: str) -> None:
    # Guards the equality tests above against a server that answers everything with one vector.
    a = image_via_sambastudio(live_server, imagegen.jpeg(seed=72))
    b = image_via_sambastudio(live_server, imagegen.jpeg(seed=73))
    assert a != b
    t = text_routes(live_server, "a cat")["sambastudio nlp"]
    u = text_routes(live_server, "a dog")["sambastudio nlp"]
    assert t != u


def unit_routes(base: str, image: bytes, text: str) -> dict[str, list[float]]:
    """The OpenAI-compatible and Cohere routes, which answer unit vectors by default."""
    uri = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    out: dict[str, list[float]] = {}
    for kind, value in (("image", uri), ("text", text)):
        body = ok(
            requests.post(
                f"{base}/v1/embeddings", json={"input": [value], "encoding_format": "float"}, timeout=TIMEOUT_S
            )
        )
        out[f"openai {kind}"] = body["data"][0]["embedding"]
        field = {"image": "images", "text": "texts"}[kind]
        body = ok(
            requests.post(f"{base}/v2/embed", json={field: [value], "input_type": "search_document"}, timeout=TIMEOUT_S)
        )
        out[f"cohere {kind}"] = body["embeddings"]["float"][0]
    return out


def test_same_direction_on_all_five_protocols(live_server: str, reference: Any) -> None:
    """OpenAI and Cohere normalize (as their vendors do): the same direction as the raw vectors of
    the other three, cosine >= 0.99999, unit length; with normalization off, the same vector."""
    data, text = imagegen.sample("jpeg", seed=74), "a photo of a metal can"
    raw = {
        "image": image_via_roboflow(live_server, data),
        "text": text_routes(live_server, text)["roboflow /clip/embed_text"],
    }
    assert (
        image_via_sambastudio(live_server, data) == raw["image"]
        and image_via_azureml(live_server, data) == raw["image"]
    )
    for name, vector in unit_routes(live_server, data, text).items():
        kind = name.split()[1]
        assert reference.cosine(vector, raw[kind]) >= 0.99999, name
        assert abs(sum(v * v for v in vector) ** 0.5 - 1) < 1e-5, name
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    for value, kind in ((uri, "image"), (text, "text")):
        body = {"input": [value], "encoding_format": "float", "normalize": False}
        unnormalized = ok(requests.post(f"{live_server}/v1/embeddings", json=body, timeout=TIMEOUT_S))
        assert unnormalized["data"][0]["embedding"] == raw[kind], f"openai normalize=false {kind}"
