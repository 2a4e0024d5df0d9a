"""Roboflow's own `inference_sdk.InferenceHTTPClient` against a live clipgate: every CLIP call it has."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from inference_sdk import InferenceConfiguration, InferenceHTTPClient
from inference_sdk.http.errors import HTTPCallErrorError
from inference_sdk.http.utils.encoding import numpy_array_to_base64_jpeg, pillow_image_to_base64_jpeg

import clipgate
from tests import imagegen

pytestmark = pytest.mark.e2e

COMPARE_TOLERANCE = 1e-4


def make_client(base_url: str, **config: Any) -> InferenceHTTPClient:
    # api_key_transport is set explicitly: left unset, the SDK warns once per process that the
    # legacy channel is the default (the wire is the same: the key goes in the JSON body).
    client = InferenceHTTPClient(api_url=base_url, api_key=None)
    return client.configure(InferenceConfiguration(**{"api_key_transport": "legacy", **config}))


@pytest.fixture
def client(live_server: str) -> InferenceHTTPClient:
    return make_client(live_server)


def sdk_jpeg_of_pil(image: Any) -> bytes:
    """The bytes the SDK puts on the wire for a PIL image (it re-encodes it as JPEG)."""
    return base64.b64decode(pillow_image_to_base64_jpeg(image))


def sdk_jpeg_of_array(array: np.ndarray) -> bytes:
    """The bytes the SDK puts on the wire for a numpy (BGR) image (cv2.imencode to JPEG)."""
    return base64.b64decode(numpy_array_to_base64_jpeg(array))


def bgr(image: Any) -> np.ndarray:
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)


def single_embedding(result: Any) -> list[float]:
    """One image/text result as the SDK returns it: a dict with frame_id, time and one row."""
    assert isinstance(result, dict), f"expected one result dict, got {type(result).__name__}"
    assert "frame_id" in result and "time" in result
    assert isinstance(result["time"], (int, float)) and result["time"] >= 0
    assert len(result["embeddings"]) == 1
    row: list[float] = result["embeddings"][0]
    return row


def test_image_embedding_of_a_pil_image(client: InferenceHTTPClient, reference: Any) -> None:
    image = imagegen.picture(seed=11)
    result = client.get_clip_image_embeddings(image)
    reference.check(single_embedding(result), reference.image(sdk_jpeg_of_pil(image)), "PIL image")


def test_image_embedding_of_a_bgr_numpy_array(client: InferenceHTTPClient, reference: Any) -> None:
    image = imagegen.picture(seed=12)
    array = bgr(image)
    result = client.get_clip_image_embeddings(array)
    sent = sdk_jpeg_of_array(array)
    reference.check(single_embedding(result), reference.image(sent), "numpy BGR image")


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_image_embedding_of_a_file_path(client: InferenceHTTPClient, reference: Any, tmp_path: Path, fmt: str) -> None:
    data = imagegen.sample(fmt, seed=13)
    path = tmp_path / f"picture.{'jpg' if fmt == 'jpeg' else fmt}"
    path.write_bytes(data)
    result = client.get_clip_image_embeddings(str(path))
    reference.check(single_embedding(result), reference.image(data), f"{fmt} file")


def test_image_embedding_of_a_base64_string(client: InferenceHTTPClient, reference: Any) -> None:
    data = imagegen.sample("png", seed=14)
    result = client.get_clip_image_embeddings(base64.b64encode(data).decode())
    reference.check(single_embedding(result), reference.image(data), "base64 string")


def test_image_embeddings_of_a_list_one_request_each(
    client: InferenceHTTPClient, reference: Any, tmp_path: Path
) -> None:
    # Default configuration: max_batch_size 1, so the SDK sends one request per image.
    pil, array = imagegen.picture(seed=21), bgr(imagegen.picture(seed=22))
    png = imagegen.sample("png", seed=23)
    path = tmp_path / "third.png"
    path.write_bytes(png)
    results = client.get_clip_image_embeddings([pil, array, str(path)])
    assert isinstance(results, list) and len(results) == 3
    expected = [reference.image(sdk_jpeg_of_pil(pil)), reference.image(sdk_jpeg_of_array(array)), reference.image(png)]
    for i, (result, want) in enumerate(zip(results, expected, strict=True)):
        reference.check(single_embedding(result), want, f"list item {i}")


def test_image_embeddings_of_a_list_in_one_request(live_server: str, reference: Any) -> None:
    # max_batch_size 8: one request with an image list; the server answers with one row per
    # image and the SDK splits them (combine_clip_embeddings), copying frame_id and time.
    client = make_client(live_server, max_batch_size=8)
    images = [imagegen.picture(seed=s) for s in (31, 32, 33)]
    results = client.get_clip_image_embeddings(images)
    assert isinstance(results, list) and len(results) == 3
    assert len({r["time"] for r in results}) == 1, "the three rows should come from one response"
    for i, (result, image) in enumerate(zip(results, images, strict=True)):
        reference.check(single_embedding(result), reference.image(sdk_jpeg_of_pil(image)), f"batched item {i}")


def test_text_embedding_of_a_string(client: InferenceHTTPClient, reference: Any) -> None:
    result = client.get_clip_text_embeddings("a photo of a cat")
    reference.check(single_embedding(result), reference.text("a photo of a cat"), "text")


def test_text_embeddings_of_a_list(client: InferenceHTTPClient, reference: Any) -> None:
    # More than Roboflow's 8 per batch: the vendor accepts long text lists and so must we.
    texts = [f"a photo of {n} dogs" for n in range(9)] + ["a red car", "sunset over the sea"]
    result = client.get_clip_text_embeddings(texts)
    assert isinstance(result, dict) and "frame_id" in result and "time" in result
    rows = result["embeddings"]
    assert len(rows) == len(texts)
    for i, (row, want) in enumerate(zip(rows, reference.texts(texts), strict=True)):
        reference.check(row, want, f"text {i}")


def test_text_embedding_with_clip_version_vit_b_32(client: InferenceHTTPClient, reference: Any) -> None:
    result = client.get_clip_text_embeddings("a cat", clip_version="ViT-B-32")
    reference.check(single_embedding(result), reference.text("a cat"), "text, clip_version ViT-B-32")


def test_unknown_clip_version_is_a_404_to_the_sdk(client: InferenceHTTPClient) -> None:
    with pytest.raises(HTTPCallErrorError) as caught:
        client.get_clip_text_embeddings("a cat", clip_version="RN50")
    assert caught.value.status_code == 404


def test_key_in_the_authorization_header(live_server: str, reference: Any) -> None:
    client = InferenceHTTPClient(api_url=live_server, api_key="some-key")
    client.configure(InferenceConfiguration(api_key_transport="header"))
    result = client.get_clip_text_embeddings("a cat")
    reference.check(single_embedding(result), reference.text("a cat"), "text, key in header")


def test_compare_image_subject_with_text_prompts(client: InferenceHTTPClient, reference: Any) -> None:
    image = imagegen.picture(seed=41)
    prompts = ["a dog", "a cat", "a photo of a metal can"]
    result = client.clip_compare(subject=image, prompt=prompts)
    assert "frame_id" in result and "time" in result
    similarity = result["similarity"]
    assert isinstance(similarity, list) and len(similarity) == len(prompts)
    subject = reference.image(sdk_jpeg_of_pil(image))
    for got, text in zip(similarity, reference.texts(prompts), strict=True):
        assert got == pytest.approx(reference.cosine(subject, text), abs=COMPARE_TOLERANCE)


def test_compare_with_one_prompt_gives_a_list_of_one(client: InferenceHTTPClient, reference: Any) -> None:
    image = imagegen.picture(seed=42)
    result = client.clip_compare(subject=image, prompt="a dog")
    similarity = result["similarity"]
    assert isinstance(similarity, list) and len(similarity) == 1
    want = reference.cosine(reference.image(sdk_jpeg_of_pil(image)), reference.text("a dog"))
    assert similarity[0] == pytest.approx(want, abs=COMPARE_TOLERANCE)


def test_compare_text_subject_with_image_prompts(client: InferenceHTTPClient, reference: Any, tmp_path: Path) -> None:
    pil = imagegen.picture(seed=43)
    jpeg = imagegen.jpeg(seed=44)
    path = tmp_path / "prompt.jpg"
    path.write_bytes(jpeg)
    result = client.clip_compare(subject="a dog", prompt=[pil, str(path)], subject_type="text", prompt_type="image")
    similarity = result["similarity"]
    assert isinstance(similarity, list) and len(similarity) == 2
    subject = reference.text("a dog")
    for got, image in zip(similarity, [reference.image(sdk_jpeg_of_pil(pil)), reference.image(jpeg)], strict=True):
        assert got == pytest.approx(reference.cosine(subject, image), abs=COMPARE_TOLERANCE)


def test_compare_image_with_images(client: InferenceHTTPClient, reference: Any) -> None:
    same, other = imagegen.picture(seed=45), imagegen.picture(seed=46)
    result = client.clip_compare(subject=same, prompt=[same, other], prompt_type="image")
    similarity = result["similarity"]
    assert similarity[0] == pytest.approx(1.0, abs=1e-5)  # the SDK encodes the same picture to the same bytes
    want = reference.cosine(reference.image(sdk_jpeg_of_pil(same)), reference.image(sdk_jpeg_of_pil(other)))
    assert similarity[1] == pytest.approx(want, abs=COMPARE_TOLERANCE)
    assert similarity[1] < 0.999


def test_compare_with_named_prompts(client: InferenceHTTPClient, reference: Any) -> None:
    # The SDK passes a text prompt through as it is, so a dict of name -> prompt reaches the
    # server, which answers with the similarities keyed the same way.
    image = imagegen.picture(seed=47)
    prompts = {"dog": "a dog", "cat": "a cat", "can": "a metal can"}
    result = client.clip_compare(subject=image, prompt=prompts)  # type: ignore[arg-type]
    similarity = result["similarity"]
    assert isinstance(similarity, dict) and list(similarity) == list(prompts)
    subject = reference.image(sdk_jpeg_of_pil(image))
    for (name, got), text in zip(similarity.items(), reference.texts(list(prompts.values())), strict=True):
        assert got == pytest.approx(reference.cosine(subject, text), abs=COMPARE_TOLERANCE), name


def test_server_info(client: InferenceHTTPClient) -> None:
    info = client.get_server_info()
    assert info.name == "clipgate"
    assert info.version == clipgate.__version__
    assert info.uuid and client.get_server_info().uuid == info.uuid


def test_list_loaded_models(client: InferenceHTTPClient) -> None:
    registered = client.list_loaded_models()
    assert [m.model_id for m in registered.models] == ["clip/ViT-B-32"]
    model = registered.models[0]
    assert model.task_type == "embedding"
    assert (model.input_height, model.input_width) == (224, 224)
