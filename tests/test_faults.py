"""Fault injection: one vocabulary from Python, the header and the admin route; selection that
repeats exactly from its seed; error statuses in each vendor's own shape; and nothing at all
unless faults are enabled, nor for requests no fault matches."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.engine import Model
from clipgate.faults import Fault, FaultPlan, FaultSyntaxError
from clipgate.state import AppState
from tests.conftest import make_config

TEXT = {"text": "a photo of a cat"}
AZURE = {"input_data": {"columns": ["image", "text"], "data": [["", "a cat"]]}}


def test_the_vocabulary_parses() -> None:
    fault = Fault.parse("status=503; retry-after=2; delay-ms=100-300; protocol=roboflow; route=/clip/embed_text")
    assert (fault.status, fault.retry_after, fault.delay_ms) == (503, 2, (100, 300))
    assert (fault.protocol, fault.route, fault.kind) == ("roboflow", "/clip/embed_text", "status")
    assert Fault.parse("hang").kind == "hang" and Fault.parse("reset;delay-ms=5").delay_ms == (5, 5)
    assert Fault.parse("truncate=10;dribble=1024").kind == "truncate"
    assert Fault.parse("first=3;status=500") == Fault(status=500, first=3)
    assert Fault.from_json({"status": 429, "delay_ms": 50}) == Fault(status=429, delay_ms=(50, 50))
    assert Fault.from_json(Fault(dribble=10, every=2).to_json()) == Fault(dribble=10, every=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("status=abc", "invalid literal"),
        ("status=200", "status must be 400-599"),
        ("colour=red", "unknown fault 'colour'"),
        ("first=2", "a fault needs something to do"),
        ("hang;reset", "one of status, hang and reset"),
        ("p=2;status=500", "p must be 0-1"),
        ("status", "'status' needs a value"),
        ("delay-ms=300-100", "delay-ms"),
    ],
)
def test_mistakes_in_a_fault_are_named(text: str, message: str) -> None:
    with pytest.raises(FaultSyntaxError, match=message):
        Fault.parse(text)


def applied(plan: FaultPlan, n: int, route: str = "/r") -> list[bool]:
    return [plan.pick("p", route, None) is not None for _ in range(n)]


def test_first_every_and_probability_select_and_repeat_exactly_from_the_seed() -> None:
    plan = FaultPlan(enabled=True)
    plan.set(status=503, first=2)
    assert applied(plan, 4) == [True, True, False, False]
    plan.clear()
    plan.set(status=503, every=3)
    assert applied(plan, 6) == [False, False, True, False, False, True]
    runs = []
    for _ in range(2):
        plan.clear()
        plan.set(status=500, probability=0.5, seed=11)
        runs.append(applied(plan, 40))
    assert runs[0] == runs[1] and 8 < sum(runs[0]) < 32  # the same draws, and about half
    plan.clear()
    plan.set(status=500, route="/only/this")
    assert applied(plan, 2, route="/other") == [False, False] and applied(plan, 1, route="/only/this") == [True]
    assert plan.rules()[0]["matched"] == 1 and plan.rules()[0]["applied"] == 1
    assert FaultPlan(enabled=False).pick("p", "/r", "status=500") is None  # off: nothing, not even the header


def test_random_latency_is_drawn_from_the_seed() -> None:
    delays = []
    for _ in range(2):
        plan = FaultPlan(enabled=True)
        plan.set(delay_ms=(100, 200), seed=5)
        delays.append([plan.pick("p", "/r", None)[1] for _ in range(5)])  # type: ignore[index]
    assert delays[0] == delays[1] and all(0.1 <= d <= 0.2 for d in delays[0]) and len(set(delays[0])) == 5


@pytest.fixture
def faulty(model: Model) -> Iterator[TestClient]:
    config = make_config(faults={"enabled": True, "admin_key": "adm1n"}, sambastudio={"keys": ("k",)})
    with TestClient(create_app(config, model)) as client:
        yield client


def plan_of(client: TestClient) -> FaultPlan:
    state: AppState = client.app.state.clipgate  # type: ignore[attr-defined]
    return state.faults


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "shape"),
    [
        pytest.param("/clip/embed_text", TEXT, {}, 503, {"message": "Injected fault: HTTP 503."}, id="roboflow"),
        pytest.param("/api/predict/nlp/p/e", {"inputs": ["x"]}, {"key": "k"}, 503,
                     {"error": "Injected fault: HTTP 503.", "status_code": 503}, id="sambastudio"),
        pytest.param("/score", AZURE, {}, 503, {"message": "Injected fault: HTTP 503."}, id="azureml"),
    ],
)  # fmt: skip
def test_a_header_fault_answers_in_the_vendors_shape(
    faulty: TestClient, path: str, body: Any, headers: dict[str, str], status: int, shape: dict[str, Any]
) -> None:
    response = faulty.post(path, json=body, headers={**headers, "X-Clipgate-Fault": "status=503;retry-after=7"})
    assert response.status_code == status and response.json() == shape
    assert response.headers["retry-after"] == "7"
    assert faulty.post(path, json=body, headers=headers).status_code == 200  # the next request is untouched


@pytest.mark.parametrize(
    ("status", "roboflow_body"),
    [
        (401, {"status": 401, "message": "Unauthorized api_key"}),
        (500, {"message": "Internal error."}),
        (429, {"message": "Injected fault: HTTP 429."}),
    ],
)
def test_statuses_take_the_vendors_own_answer_for_them(faulty: TestClient, status: int, roboflow_body: Any) -> None:
    response = faulty.post("/clip/embed_text", json=TEXT, headers={"X-Clipgate-Fault": f"status={status}"})
    assert response.status_code == status and response.json() == roboflow_body
    azure = faulty.post("/score", json=AZURE, headers={"X-Clipgate-Fault": f"status={status}"})
    assert azure.status_code == status and azure.headers["x-ms-run-function-failed"] == "True"


def test_faults_set_from_python_match_their_route_and_are_counted(faulty: TestClient) -> None:
    plan_of(faulty).set(status=500, route="/clip/embed_text", first=2)
    statuses = [faulty.post("/clip/embed_text", json=TEXT).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert faulty.post("/api/predict/nlp/p/e", json={"inputs": ["x"]}, headers={"key": "k"}).status_code == 200
    metrics = faulty.get("/metrics").text
    assert 'clipgate_faults_injected_total{kind="status"} 2.0' in metrics
    assert 'clipgate_rejections_total{reason="invalid"} 0.0' in metrics  # a fault is not a refusal


def test_a_delay_delays_and_a_truncated_body_is_cut(faulty: TestClient) -> None:
    started = time.perf_counter()
    slow = faulty.post("/clip/embed_text", json=TEXT, headers={"X-Clipgate-Fault": "delay-ms=300"})
    assert slow.status_code == 200 and time.perf_counter() - started >= 0.3
    with pytest.raises(ConnectionError, match="truncated body: 40 of"):  # in process: the client sees it raise
        faulty.post("/clip/embed_text", json=TEXT, headers={"X-Clipgate-Fault": "truncate=40"})
    with pytest.raises(ConnectionResetError):
        faulty.post("/clip/embed_text", json=TEXT, headers={"X-Clipgate-Fault": "reset"})
    assert faulty.post("/clip/embed_text", json=TEXT).status_code == 200


def test_a_bad_fault_header_is_a_400_in_the_vendors_shape(faulty: TestClient) -> None:
    response = faulty.post("/clip/embed_text", json=TEXT, headers={"X-Clipgate-Fault": "status=ok"})
    assert response.status_code == 400 and response.json()["message"].startswith("X-Clipgate-Fault: 'status=ok'")


def test_without_the_switch_the_header_is_ignored_and_no_admin_route(client: TestClient) -> None:
    response = client.post("/clip/embed_text", json=TEXT, headers={"X-Clipgate-Fault": "status=503"})
    assert response.status_code == 200
    assert client.get("/admin/faults").status_code == 404


def test_the_admin_route_sets_lists_and_clears_behind_its_key(faulty: TestClient) -> None:
    admin = {"Authorization": "Bearer adm1n"}
    assert faulty.get("/admin/faults").status_code == 401
    assert faulty.get("/admin/faults", headers={"Authorization": "Bearer guess"}).status_code == 401
    added = faulty.post("/admin/faults", json=[{"status": 429, "retry_after": 3, "first": 1}], headers=admin)
    assert added.status_code == 200 and added.json()["faults"][0]["status"] == 429
    text = faulty.post("/admin/faults", content=b"status=500;every=2", headers={**admin, "content-type": "text/plain"})
    assert len(text.json()["faults"]) == 2
    refused = faulty.post("/clip/embed_text", json=TEXT)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
    listed = faulty.get("/admin/faults", headers=admin).json()["faults"]
    assert listed[0]["applied"] == 1 and listed[1]["matched"] == 0
    bad = faulty.post("/admin/faults", json={"status": "x", "colour": 1}, headers=admin)
    assert bad.status_code == 400 and "colour" in bad.json()["message"]
    assert faulty.delete("/admin/faults", headers=admin).json() == {"faults": []}
    assert faulty.post("/clip/embed_text", json=TEXT).status_code == 200


def test_an_admin_route_without_a_key_refuses_everyone(model: Model) -> None:
    with TestClient(create_app(make_config(faults={"enabled": True}), model)) as client:
        response = client.get("/admin/faults", headers={"Authorization": "Bearer "})
        assert response.status_code == 401 and "faults.admin_key" in response.json()["message"]
