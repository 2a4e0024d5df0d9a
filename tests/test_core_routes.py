"""The core's own routes and routing: probes whatever protocols are enabled, 404s in the shape of
the protocol a path falls under, and an adapter whose hook fails still answers in its own shape."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import adapters
from clipgate.adapter import Adapter, Body, Operation, ProtocolSettings, Reply
from clipgate.app import create_app
from clipgate.canonical import EmbedRequest, EmbedResult, RequestMeta, TextInput
from clipgate.config import Config, load_config
from clipgate.engine import Model
from clipgate.errors import ClipgateError, InvalidRequest
from clipgate.state import AppState
from tests.conftest import make_config

ALL_OFF = {name: {"enabled": False} for name in ("sambastudio", "azureml", "roboflow")}


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.clipgate  # type: ignore[attr-defined]
    return state


def test_probes_answer_with_every_protocol_disabled(model: Model) -> None:
    with TestClient(create_app(make_config(**ALL_OFF), model)) as client:
        assert client.get("/livez").json() == {"status": "alive"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        gone = client.post("/clip/embed_text", json={"text": "x"})
        assert gone.status_code == 404 and gone.json() == {"message": "Not found."}


def test_readyz_is_503_while_loading_and_while_draining(model: Model, tmp_path: Path) -> None:
    with TestClient(create_app(make_config(model={"id": str(tmp_path / "missing")}), on_fatal=lambda _: None)) as c:
        loading = c.get("/readyz")
        assert loading.status_code == 503 and loading.json() == {"status": "not ready", "reason": "loading"}
        assert loading.headers["retry-after"] == "1"
        assert c.get("/livez").status_code == 200  # alive is not ready
    with TestClient(create_app(make_config(), model)) as client:
        state_of(client).draining = True
        draining = client.get("/readyz")
        assert draining.status_code == 503 and draining.json()["reason"] == "draining"
        assert client.get("/readiness").status_code == 503  # Roboflow's probe reads the same state
        assert client.post("/clip/embed_text", json={"text": "still served"}).status_code == 200


def test_probes_are_never_prefixed(model: Model) -> None:
    config = make_config(roboflow={"prefix": "/rf"}, sambastudio={"prefix": "/ss"}, azureml={"prefix": "/az"})
    with TestClient(create_app(config, model)) as client:
        assert client.get("/livez").status_code == client.get("/readyz").status_code == 200
        assert client.get("/rf/readiness").json() == {"status": "ready"}
        assert client.get("/rf/livez").status_code == 404


def test_a_protocol_route_on_a_probe_path_is_a_startup_error(model: Model) -> None:
    # Under the prefix "/livez", Azure's liveness route GET / lands on the core's probe.
    with pytest.raises(ValueError, match="/livez is served by both clipgate's probes and azureml"):
        create_app(make_config(azureml={"prefix": "/livez"}), model)


def test_wrong_method_on_a_probe_is_a_neutral_405(client: TestClient) -> None:
    wrong = client.post("/readyz")
    assert wrong.status_code == 405 and wrong.json() == {"message": "Method not allowed."}
    assert "GET" in wrong.headers["allow"]


@pytest.mark.parametrize(
    ("path", "body", "header"),
    [
        pytest.param("/rf/nope", {"message": "Not found."}, None, id="roboflow"),
        pytest.param("/ss/api/predict/none", {"error": "Not found.", "status_code": 404}, None, id="sambastudio"),
        pytest.param("/az/nope", {"message": "Not found."}, ("x-ms-run-function-failed", "True"), id="azureml"),
        pytest.param("/nope", {"message": "Not found."}, None, id="no-protocol"),
        pytest.param("/rfx", {"message": "Not found."}, None, id="prefix-is-a-whole-segment"),
    ],
)
def test_unknown_path_is_a_404_in_the_shape_of_its_prefix(
    model: Model, path: str, body: dict[str, Any], header: tuple[str, str] | None
) -> None:
    config = make_config(roboflow={"prefix": "/rf"}, sambastudio={"prefix": "/ss"}, azureml={"prefix": "/az"})
    with TestClient(create_app(config, model)) as client:
        response = client.get(path)
    assert response.status_code == 404 and response.json() == body
    if header is not None:
        assert response.headers[header[0]] == header[1]
    else:
        assert "x-ms-run-function-failed" not in response.headers


def test_waiting_for_the_model_in_the_lifespan(model: Model, tmp_path: Path) -> None:
    """With wait_ready, startup completes only when the model is warm, and fails when it cannot load."""
    with TestClient(create_app(make_config(), wait_ready=True)) as client:
        assert client.get("/readyz").status_code == 200  # ready the moment startup returns
    app = create_app(make_config(model={"id": str(tmp_path / "missing")}), wait_ready=True)
    with pytest.raises(Exception, match="does not exist"), TestClient(app):
        pass


# --- an adapter whose hooks fail ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FaultySettings(ProtocolSettings):
    broken: str = ""  # which hook raises: response_headers, credential, parse, render, respond, render_error


def _maybe_fail(meta: RequestMeta, hook: str) -> None:
    if meta.settings.broken == hook:
        raise RuntimeError(f"{hook} is broken")


def _parse(body: Body, meta: RequestMeta) -> EmbedRequest:
    _maybe_fail(meta, "parse")
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise InvalidRequest("text must be a string")
    if body["text"] == "break render_error":
        raise InvalidRequest("this message breaks render_error")
    return EmbedRequest(items=[TextInput(body["text"])], context=meta.settings.broken)


def _render(result: EmbedResult, request: EmbedRequest) -> Any:
    if request.context == "render":
        raise RuntimeError("render is broken")
    return {"vector": result.vectors[0]}


def _respond(state: Any, meta: RequestMeta) -> Reply:
    _maybe_fail(meta, "respond")
    return Reply(200, {"ok": True})


def _headers(meta: RequestMeta) -> dict[str, str]:
    _maybe_fail(meta, "response_headers")
    return {"x-faulty": "1"}


def _credential(body: Body, meta: RequestMeta) -> str | None:
    _maybe_fail(meta, "credential")
    return meta.headers.get("x-key")


def _render_error(err: ClipgateError) -> Reply:
    if "render_error" in err.message:
        raise RuntimeError("render_error is broken")
    return Reply(err.status, {"faulty_error": err.message, "code": err.status})


FAULTY = Adapter(
    name="faulty",
    operations=(
        Operation("/faulty/embed", parse=_parse, render=_render),
        Operation("/faulty/info", methods=("GET",), body="none", respond=_respond, public=True),
    ),
    render_error=_render_error,
    credential=_credential,
    response_headers=_headers,
    settings=FaultySettings,
)


def faulty_config(**table: Any) -> Config:
    protocols = {name: a.settings for name, a in adapters.REGISTRY.items()} | {"faulty": FaultySettings}
    config = load_config(None, {}, protocols=protocols).replace("model", id="random:tiny", device="cpu")
    return config.replace("faulty", **table)


@pytest.fixture
def with_faulty(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(adapters.REGISTRY, "faulty", FAULTY)
    yield


@pytest.mark.parametrize("hook", ["response_headers", "credential", "parse", "render"])
def test_a_hook_that_raises_is_answered_in_the_adapters_shape(model: Model, with_faulty: None, hook: str) -> None:
    config = faulty_config(broken=hook, keys=("k",))
    with TestClient(create_app(config, model)) as client:
        response = client.post("/faulty/embed", json={"text": "a cat"}, headers={"x-key": "k"})
        assert response.status_code == 500
        assert response.json() == {"faulty_error": "Internal error.", "code": 500}
        assert "is broken" not in response.text  # the traceback goes to the log only
        healthy = TestClient(create_app(faulty_config(keys=("k",)), model))
    with healthy:
        ok = healthy.post("/faulty/embed", json={"text": "a cat"}, headers={"x-key": "k"})
        assert ok.status_code == 200 and len(ok.json()["vector"]) == 512 and ok.headers["x-faulty"] == "1"
        refused = healthy.post("/faulty/embed", json={"text": "a cat"})
        assert refused.status_code == 401 and refused.json()["code"] == 401


def test_a_respond_hook_that_raises_and_a_broken_renderer_still_answer(model: Model, with_faulty: None) -> None:
    with TestClient(create_app(faulty_config(broken="respond"), model)) as client:
        response = client.get("/faulty/info")
        assert response.status_code == 500 and response.json() == {"faulty_error": "Internal error.", "code": 500}
    with TestClient(create_app(faulty_config(), model)) as client:
        shaped = client.post("/faulty/embed", json={"text": 5})
        assert shaped.status_code == 400 and shaped.json() == {"faulty_error": "text must be a string", "code": 400}
        # The error's own renderer fails: a plain {"message"} body, still the right status.
        plain = client.post("/faulty/embed", json={"text": "break render_error"})
        assert plain.status_code == 400 and plain.json() == {"message": "this message breaks render_error"}
        assert client.post("/faulty/embed", json={"text": "a cat"}).status_code == 200
