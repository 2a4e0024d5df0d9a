"""Azure ML's sample clients against a live clipgate: `requests.post` to /score with `input_data` in
pandas split form, images made with `base64.encodebytes` (a newline every 76 characters)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import requests

from tests import imagegen

pytestmark = pytest.mark.e2e

HEADERS = {
    "Authorization": "Bearer test-api-key",
    "Content-Type": "application/json",
    "azureml-model-deployment": "blue",
}
TIMEOUT_S = 30


def score(base_url: str, rows: list[list[str]], *, index: bool = True) -> requests.Response:
    table: dict[str, Any] = {"columns": ["image", "text"], "data": rows}
    if index:
        table["index"] = list(range(len(rows)))
    return requests.post(base_url + "/score", json={"input_data": table}, headers=HEADERS, timeout=TIMEOUT_S)


def b64(data: bytes) -> str:
    encoded = base64.encodebytes(data).decode()
    assert "\n" in encoded[:-1]  # the samples' encoding really has line breaks inside
    return encoded


def rows_of(response: requests.Response, count: int) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    rows = json.loads(response.text)
    assert isinstance(rows, list) and len(rows) == count
    return rows


def test_image_rows(live_server: str, reference: Any) -> None:
    images = [imagegen.jpeg(seed=61), imagegen.sample("png", seed=62)]
    response = score(live_server, [[b64(img), ""] for img in images])
    rows = rows_of(response, 2)
    for i, (row, img) in enumerate(zip(rows, images, strict=True)):
        assert set(row) == {"image_features"}
        reference.check(row["image_features"], reference.image(img), f"image row {i}")
    # the sample notebook's own read
    reference.check(json.loads(response.text)[0]["image_features"], reference.image(images[0]), "sample read")


def test_text_rows(live_server: str, reference: Any) -> None:
    texts = ["a photo of a metal can", "a photo of a water bottle", "milk"]
    rows = rows_of(score(live_server, [["", text] for text in texts]), 3)
    for i, (row, want) in enumerate(zip(rows, reference.texts(texts), strict=True)):
        assert set(row) == {"text_features"}
        reference.check(row["text_features"], want, f"text row {i}")


def test_text_row_without_index(live_server: str, reference: Any) -> None:
    # The model card's text example leaves "index" out.
    rows = rows_of(score(live_server, [["", "a photo of a metal can"]], index=False), 1)
    assert set(rows[0]) == {"text_features"}
    reference.check(rows[0]["text_features"], reference.text("a photo of a metal can"), "text without index")


def test_both_columns(live_server: str, reference: Any) -> None:
    # Row i pairs image i with text i; both are embedded, independently.
    images = [imagegen.jpeg(seed=63), imagegen.jpeg(seed=64)]
    texts = ["a dog", "a cat on a sofa"]
    rows = rows_of(score(live_server, [[b64(img), text] for img, text in zip(images, texts, strict=True)]), 2)
    text_refs = reference.texts(texts)
    for i, row in enumerate(rows):
        assert set(row) == {"image_features", "text_features"}
        reference.check(row["image_features"], reference.image(images[i]), f"row {i} image")
        reference.check(row["text_features"], text_refs[i], f"row {i} text")


def test_container_headers(live_server: str) -> None:
    response = requests.post(
        live_server + "/score",
        json={"input_data": {"columns": ["image", "text"], "index": [0], "data": [["", "a cat"]]}},
        headers={**HEADERS, "x-request-id": "req-123", "x-ms-client-request-id": "client-456"},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-123"
    assert response.headers["x-ms-client-request-id"] == "client-456"
    assert response.headers["x-ms-run-function-failed"] == "False"
