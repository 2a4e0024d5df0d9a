"""HTTP behaviour beyond the golden cases: auth, limits, readiness, routing, faults, error shapes."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.canonical import ModelCard
from clipgate.engine import Encoder, Model, load_model
from tests import imagegen
from tests.conftest import make_config

KEY = "s3cret-key-value"
JPEG_B64 = base64.b64encode(imagegen.jpeg(seed=1)).decode()


def rf_text(text: Any = "a photo of a cat", **extra: Any) -> dict[str, Any]:
    return {"text": text, **extra}


def azure_text(*texts: str) -> dict[str, Any]:
    return {"input_data": {"columns": ["image", "text"], "data": [["", t] for t in texts]}}


@pytest.fixture
def auth_client(model: Model) -> Iterator[TestClient]:
    config = make_config(sambastudio={"keys": ("other", KEY)}, azureml={"keys": (KEY,)}, roboflow={"keys": (KEY,)})
    with TestClient(create_app(config, model)) as client:
        yield client


# --- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        pytest.param({"params": {"api_key": KEY}}, 200, id="query"),
        pytest.param({"headers": {"Authorization": f"Bearer {KEY}"}}, 200, id="bearer"),
        pytest.param({"body_key": KEY}, 200, id="body"),
        pytest.param({}, 401, id="missing"),
        pytest.param({"body_key": None}, 401, id="body-null"),
        pytest.param({"params": {"api_key": "wrong"}}, 401, id="wrong-query"),
        pytest.param({"body_key": KEY + "x"}, 401, id="wrong-body"),
    ],
)
def test_roboflow_key_channels(auth_client: TestClient, kwargs: dict[str, Any], status: int) -> None:
    body = rf_text()
    if "body_key" in kwargs:
        body["api_key"] = kwargs.pop("body_key")
    response = auth_client.post("/clip/embed_text", json=body, **kwargs)
    assert response.status_code == status
    if status == 401:
        assert response.json() == {"status": 401, "message": "Unauthorized api_key"}
        assert KEY not in response.text


def test_sambastudio_key_header_any_of_the_configured_keys(auth_client: TestClient) -> None:
    ok = auth_client.post("/api/predict/nlp/p/e", json={"inputs": ["hi"]}, headers={"key": KEY})
    assert ok.status_code == 200
    bad = auth_client.post("/api/predict/nlp/p/e", json={"inputs": ["hi"]}, headers={"key": "nope"})
    assert bad.status_code == 401
    assert bad.json() == {"error": "The credential is not valid.", "status_code": 401}
    missing = auth_client.post("/api/predict/file/p/e", files={"predict_file": imagegen.jpeg()})
    assert missing.status_code == 401 and missing.json()["status_code"] == 401


def test_azure_bearer(auth_client: TestClient) -> None:
    ok = auth_client.post("/score", json=azure_text("hi"), headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    bad = auth_client.post("/score", json=azure_text("hi"), headers={"Authorization": f"Basic {KEY}"})
    assert bad.status_code == 401
    assert set(bad.json()) == {"message"}


@pytest.mark.parametrize("path", ["/", "/readiness", "/healthz", "/info", "/model/registry", "/swagger.json"])
def test_probes_stay_open_with_auth_on(auth_client: TestClient, path: str) -> None:
    assert auth_client.get(path).status_code == 200


def test_keys_never_reach_the_log(auth_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth_client.post("/clip/embed_text", json=rf_text(api_key=KEY + "-wrong"))
    auth_client.post("/score", json=azure_text("x"), headers={"Authorization": f"Bearer {KEY}"})
    assert KEY not in caplog.text


# --- limits -----------------------------------------------------------------------------------


@pytest.fixture
def small_client(model: Model) -> Iterator[TestClient]:
    config = make_config(server={"max_body_bytes": 4096, "max_texts": 3, "max_images": 1, "max_text_chars": 100})
    with TestClient(create_app(config, model)) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        pytest.param("/clip/embed_text", {"message"}, id="roboflow"),
        pytest.param("/api/predict/nlp/p/e", {"error", "status_code"}, id="sambastudio"),
        pytest.param("/score", {"message"}, id="azureml"),
    ],
)
def test_body_over_the_limit_is_413(small_client: TestClient, path: str, shape: set[str]) -> None:
    body = b'{"text": "' + b"a" * 8000 + b'"}'
    declared = small_client.post(path, content=body, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and set(declared.json()) == shape

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b" " * 1000

    streamed = small_client.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and set(streamed.json()) == shape


def test_too_many_items_is_413_in_each_shape(small_client: TestClient) -> None:
    texts = ["a", "b", "c", "d"]
    assert small_client.post("/clip/embed_text", json=rf_text(texts)).status_code == 413
    response = small_client.post("/api/predict/generic/p/e", json={"instances": texts})
    assert response.status_code == 413 and response.json()["status_code"] == 413
    assert small_client.post("/score", json=azure_text(*texts)).status_code == 413
    assert small_client.post("/clip/embed_text", json=rf_text(texts[:3])).status_code == 200
    two_images = {"image": [{"type": "base64", "value": JPEG_B64}] * 2}
    assert small_client.post("/clip/embed_image", json=two_images).status_code == 413


def test_text_over_the_character_limit_is_refused_before_tokenizing(small_client: TestClient) -> None:
    response = small_client.post("/api/predict/nlp/p/e", json={"inputs": ["ok", "x" * 101]})
    assert response.status_code == 400
    assert response.json() == {"error": "Text at index 1 is 101 characters long; the limit is 100.", "status_code": 400}


def test_long_text_is_400_unless_truncation_is_on(client: TestClient, tiny_dir: object) -> None:
    long_text = "photograph " * 100
    refused = client.post("/clip/embed_text", json=rf_text(long_text))
    assert refused.status_code == 400 and "77" in refused.json()["message"]
    truncating = load_model(make_config(model={"truncate_text": True}).model)
    with TestClient(create_app(make_config(), truncating)) as other:
        accepted = other.post("/clip/embed_text", json=rf_text(long_text))
    assert accepted.status_code == 200 and len(accepted.json()["embeddings"][0]) == 512


# --- routing ----------------------------------------------------------------------------------


def test_prefix_moves_and_disable_removes_a_vendor(model: Model) -> None:
    config = make_config(roboflow={"prefix": "/rf"}, sambastudio={"enabled": False})
    with TestClient(create_app(config, model)) as client:
        assert client.post("/rf/clip/embed_text", json=rf_text()).status_code == 200
        assert client.post("/clip/embed_text", json=rf_text()).status_code == 404
        assert client.post("/api/predict/nlp/p/e", json={"inputs": ["x"]}).status_code == 404
        assert client.get("/rf/readiness").json() == {"status": "ready"}


def test_two_vendors_on_one_path_is_a_startup_error(model: Model) -> None:
    # Under the prefix "/info", Azure's liveness route GET / lands on Roboflow's GET /info.
    with pytest.raises(ValueError, match="/info is served by both"):
        create_app(make_config(azureml={"prefix": "/info"}), model)


def test_unknown_route_and_method(client: TestClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json() == {"message": "Not found."}
    wrong = client.get("/clip/embed_text")
    assert wrong.status_code == 405 and wrong.json() == {"message": "Method not allowed."}
    assert wrong.headers["allow"] == "POST"
    samba = client.put("/api/predict/nlp/p/e", json={"inputs": ["x"]})
    assert samba.status_code == 405 and samba.json() == {"error": "Method not allowed.", "status_code": 405}
    azure = client.post("/")
    assert azure.status_code == 405 and azure.headers["allow"] == "GET"
    assert client.head("/").status_code == 200


def test_doubled_slashes_reach_the_route(client: TestClient) -> None:
    response = client.post("http://testserver//api/predict/generic//p/e", json={"instances": ["x"]})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1


# --- readiness and faults ---------------------------------------------------------------------


def test_not_ready_until_loaded_and_a_failed_load_is_reported(tmp_path: Any) -> None:
    lines: list[str] = []
    config = make_config(model={"id": str(tmp_path / "missing")})
    with TestClient(create_app(config, on_fatal=lines.append)) as client:
        assert client.get("/readiness").status_code == 503
        assert client.get("/readiness").json() == {"status": "not ready"}
        busy = client.post("/clip/embed_text", json=rf_text())
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json() == {"message": "Model is temporarily not ready - retry request."}
        assert client.post("/score", json=azure_text("x")).status_code == 503
        assert client.get("/").text == "Healthy"  # liveness is not readiness
    assert len(lines) == 1 and "--model DIR" in lines[0] and "random:tiny" in lines[0]


class FlakyModel(Model):
    """The real model; fails the text batches it is told to."""

    def __init__(self, inner: Model) -> None:
        super().__init__(inner.preprocessor, inner.encoder)
        self.fail_next = threading.Event()

    def embed_texts(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        if self.fail_next.is_set():
            self.fail_next.clear()
            raise RuntimeError("CUDA error: secret internals /srv/model/weights")
        return super().embed_texts(batch)


def test_a_model_error_fails_its_request_and_the_server_goes_on(model: Model) -> None:
    flaky = FlakyModel(model)
    with TestClient(create_app(make_config(), flaky)) as client:
        flaky.fail_next.set()
        failed = client.post("/clip/embed_text", json=rf_text())
        assert failed.status_code == 500 and failed.json() == {"message": "Internal error."}
        flaky.fail_next.set()
        azure = client.post("/score", json=azure_text("x"))
        assert azure.status_code == 500
        assert azure.json() == {"message": "An unexpected internal error occurred. Check the logs for more info."}
        assert azure.headers["x-ms-run-function-failed"] == "True"
        flaky.fail_next.set()
        samba = client.post("/api/predict/nlp/p/e", json={"inputs": ["x"]})
        assert samba.status_code == 500 and "secret" not in samba.text
        assert client.post("/clip/embed_text", json=rf_text()).status_code == 200


def test_a_bad_image_fails_only_its_own_request(client: TestClient) -> None:
    results: dict[str, int] = {}

    def call(name: str, value: str) -> None:
        body = {"image": {"type": "base64", "value": value}}
        results[name] = client.post("/clip/embed_image", json=body).status_code

    threads = [threading.Thread(target=call, args=(f"good{i}", JPEG_B64)) for i in range(4)]
    threads.append(threading.Thread(target=call, args=("bad", base64.b64encode(b"not an image").decode())))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.pop("bad") == 400
    assert set(results.values()) == {200}


# --- vendor details ---------------------------------------------------------------------------


def test_url_images_are_off_by_default_with_a_way_to_turn_them_on(client: TestClient) -> None:
    response = client.post("/clip/embed_image", json={"image": {"type": "url", "value": "https://example.com/a.jpg"}})
    assert response.status_code == 400
    assert "images.allow_url" in response.json()["message"]
    azure = client.post(
        "/score", json={"input_data": {"columns": ["image", "text"], "data": [["https://example.com/a.jpg", ""]]}}
    )
    assert azure.status_code == 400 and "allow_url" in azure.json()["message"]


def test_azure_content_type_and_request_ids(client: TestClient) -> None:
    plain = client.post("/score", content=b'{"input_data": {}}', headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    assert plain.json() == {"message": "Expects Content-Type to be application/json"}
    charset = client.post(
        "/score",
        content=b'{"input_data": {"columns": ["image", "text"], "data": [["", "x"]]}}',
        headers={
            "content-type": "application/json; charset=utf-8",
            "x-ms-client-request-id": "abc",
            "azureml-model-deployment": "blue",
        },
    )
    assert charset.status_code == 200
    assert charset.headers["x-ms-client-request-id"] == "abc"
    assert charset.headers["x-ms-request-id"] == charset.headers["x-request-id"]
    bad_json = client.post("/score", content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["message"].startswith(
        "POST body could not be decoded as JSON: "
    )


def test_swagger_describes_score(client: TestClient) -> None:
    doc = client.get("/swagger.json").json()
    assert doc["swagger"] == "2.0" and "post" in doc["paths"]["/score"]


def test_compare_similarity_is_the_cosine_of_the_embeddings(client: TestClient) -> None:
    texts = ["a photo of a cat", "a photo of a dog"]
    image = client.post("/clip/embed_image", json={"image": {"type": "base64", "value": JPEG_B64}}).json()[
        "embeddings"
    ][0]
    vectors = client.post("/clip/embed_text", json=rf_text(texts)).json()["embeddings"]
    compare = client.post(
        "/clip/compare", json={"subject": {"type": "base64", "value": JPEG_B64}, "prompt": texts}
    ).json()
    a = np.asarray(image)
    expected = [float(a @ np.asarray(v) / np.linalg.norm(a) / np.linalg.norm(v)) for v in vectors]
    assert compare["similarity"] == pytest.approx(expected, abs=1e-5)
    reverse = client.post(
        "/clip/compare",
        json={
            "subject": texts[0],
            "subject_type": "text",
            "prompt": {"only": {"type": "base64", "value": JPEG_B64}},
            "prompt_type": "image",
        },
    ).json()
    assert reverse["similarity"]["only"] == pytest.approx(expected[0], abs=1e-5)


def test_roboflow_model_names(client: TestClient) -> None:
    assert client.post("/clip/embed_text", json=rf_text(clip_version_id=None)).status_code == 200
    assert client.post("/clip/embed_text", json=rf_text(clip_version_id="ViT-B-32")).status_code == 200
    assert client.post("/clip/embed_text", json=rf_text(clip_version_id="ViT-L-14")).status_code == 404
    registry = client.get("/model/registry").json()
    assert registry["models"][0]["model_id"] == "clip/ViT-B-32"


def test_vectors_are_raw_float32_values(client: TestClient, model: Model) -> None:
    vector = client.post("/api/predict/nlp/p/e", json={"inputs": ["a cat"]}).json()["data"][0]
    direct = model.embed_texts(model.preprocessor.tokenize(["a cat"]))[0]
    assert np.array_equal(np.asarray(vector, dtype=np.float32), direct)
    assert abs(float(np.linalg.norm(direct)) - 1.0) > 1e-3  # not normalized


# --- multipart --------------------------------------------------------------------------------


def multipart(
    parts: list[tuple[str, str | None, bytes]], boundary: str = "clipgate-test-boundary"
) -> tuple[bytes, str]:
    """Build a multipart/form-data body by hand: (name, filename or None, data) per part."""
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_image_in_a_plain_field_keeps_its_bytes(client: TestClient, model: Model) -> None:
    # curl -F 'predict_file=<cat.jpg' sends the image as a field with no filename.
    jpeg = imagegen.jpeg(seed=3)
    assert b"\xff" in jpeg  # bytes that are not valid UTF-8 survive
    body, content_type = multipart([("predict_file", None, jpeg)])
    plain = client.post("/api/predict/file/p/e", content=body, headers={"content-type": content_type})
    named = client.post("/api/predict/file/p/e", files={"predict_file": ("cat.jpg", jpeg)})
    assert plain.status_code == 200 and named.status_code == 200
    assert plain.json()["data"] == named.json()["data"]


def test_several_predict_file_parts_give_one_row_each_in_order(client: TestClient) -> None:
    images = [imagegen.jpeg(seed=s) for s in (1, 2)]
    body, content_type = multipart(
        [("predict_file", "a.jpg", images[0]), ("note", None, b"x"), ("predict_file", "b.jpg", images[1])]
    )
    both = client.post("/api/predict/file/p/e", content=body, headers={"content-type": content_type}).json()["data"]
    second = client.post("/api/predict/file/p/e", files={"predict_file": ("b.jpg", images[1])}).json()["data"]
    assert len(both) == 2 and both[0] != both[1]
    assert np.allclose(both[1], second[0], atol=1e-5)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        pytest.param(b'{"inputs": ["x"]}', "application/json", 400, id="json-body"),
        pytest.param(
            b"--b\r\nContent-Disposition: form-data; name=predict_file\r\n\r\nabc",
            "multipart/form-data; boundary=b",
            400,
            id="unterminated",
        ),
        pytest.param(b"garbage", "multipart/form-data", 400, id="no-boundary"),
        pytest.param(b"--b--\r\n", "multipart/form-data; boundary=b", 400, id="no-parts"),
    ],
)
def test_broken_multipart_is_400(client: TestClient, body: bytes, content_type: str, status: int) -> None:
    response = client.post("/api/predict/file/p/e", content=body, headers={"content-type": content_type})
    assert response.status_code == status
    assert set(response.json()) == {"error", "status_code"} and response.json()["status_code"] == status


def test_too_many_parts_is_413(client: TestClient) -> None:
    body, content_type = multipart([("f", None, b"x")] * 40)
    response = client.post("/api/predict/file/p/e", content=body, headers={"content-type": content_type})
    assert response.status_code == 413 and response.json()["status_code"] == 413


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"", "The request body is empty; a JSON object is expected.", id="empty"),
        pytest.param(b"{nope", None, id="not-json"),
        pytest.param(b"[1, 2]", "The request body must be a JSON object.", id="not-an-object"),
    ],
)
def test_sambastudio_body_errors_are_400(client: TestClient, body: bytes, message: str | None) -> None:
    response = client.post("/api/predict/nlp/p/e", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["status_code"] == 400
    if message is not None:
        assert response.json()["error"] == message


class WarmupFails:
    """An encoder whose warm-up fails, as a GPU out of memory would."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.card: ModelCard = inner.card

    def embed_texts(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.inner.embed_texts(ids, mask)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        return self.inner.embed_images(pixels)

    def warmup(self) -> None:
        raise RuntimeError("CUDA out of memory")

    def health(self) -> str | None:
        return None


def test_a_failed_warm_up_is_fatal_not_a_silent_503(model: Model) -> None:
    lines: list[str] = []
    with TestClient(
        create_app(make_config(), Model(model.preprocessor, WarmupFails(model.encoder)), on_fatal=lines.append)
    ) as client:
        assert client.get("/readiness").status_code == 503
    assert len(lines) == 1 and "CUDA out of memory" in lines[0]


def test_header_credentials_are_checked_before_the_body_is_read(auth_client: TestClient) -> None:
    # An unauthenticated caller learns nothing about body validation and costs no parsing.
    junk = b"{not json"
    samba = auth_client.post("/api/predict/nlp/p/e", content=junk, headers={"content-type": "application/json"})
    assert samba.status_code == 401
    azure = auth_client.post("/score", content=junk, headers={"content-type": "text/plain"})
    assert azure.status_code == 401
    roboflow = auth_client.post(
        "/clip/embed_text?api_key=wrong", content=junk, headers={"content-type": "application/json"}
    )
    assert roboflow.status_code == 401


def test_request_ids_over_100_characters_are_refused(client: TestClient) -> None:
    response = client.post("/score", json=azure_text("x"), headers={"x-request-id": "r" * 101})
    assert response.status_code == 431 and set(response.json()) == {"message"}
    assert response.headers["x-request-id"] != "r" * 101  # not echoed: a fresh id instead
    exactly = client.post("/score", json=azure_text("x"), headers={"x-request-id": "r" * 100})
    assert exactly.status_code == 200 and exactly.headers["x-request-id"] == "r" * 100


def test_unknown_model_is_reported_before_the_images_are_read(client: TestClient) -> None:
    body = {"image": {"type": "base64", "value": "not base64!"}, "clip_version_id": "RN50"}
    response = client.post("/clip/embed_image", json=body)
    assert response.status_code == 404
    assert response.json()["message"].startswith("Requested Roboflow resource not found.")


def test_base64_over_the_image_byte_limit_is_413_before_decoding(model: Model) -> None:
    with TestClient(create_app(make_config(images={"max_bytes": 1000}), model)) as client:
        response = client.post("/clip/embed_image", json={"image": {"type": "base64", "value": "A" * 8000}})
    assert response.status_code == 413


def test_json_nested_past_the_limit_is_refused_in_each_vendors_shape(model: Model) -> None:
    deep: Any = "a photo of a cat"
    for _ in range(40):
        deep = {"x": deep}
    with TestClient(create_app(make_config(server={"max_json_depth": 32}), model)) as client:
        roboflow = client.post("/clip/embed_text", json={"text": "x", "extra": deep})
        assert roboflow.status_code == 422 and "deeper than 32" in str(roboflow.json())
        azure = client.post("/score", json={"input_data": deep})
        assert azure.status_code == 400 and "deeper than 32" in azure.json()["message"]
        samba = client.post("/api/predict/nlp/p/e", json={"inputs": ["x"], "params": deep})
        assert samba.status_code == 400 and set(samba.json()) == {"error", "status_code"}
        shallow = {"text": "x", "extra": {"a": {"b": {"c": 1}}}}
        assert client.post("/clip/embed_text", json=shallow).status_code == 200
