"""/metrics: every figure moves when its cause happens, by the right amount; labels are route
templates; the metrics can be turned off or served on a port of their own."""

from __future__ import annotations

import base64
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.engine import Model
from clipgate.metrics import Metrics, duration_buckets
from clipgate.state import AppState
from tests import imagegen
from tests.conftest import make_config
from tests.test_overload import GatedModel, in_threads, live, wait_until

JPEG_B64 = base64.b64encode(imagegen.jpeg(seed=3)).decode()


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def metrics_of(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return scrape(response.text)


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.clipgate  # type: ignore[attr-defined]
    return state


@pytest.fixture
def client(model: Model) -> Iterator[TestClient]:
    config = make_config(sambastudio={"prefix": "/ss", "keys": ("k",)})
    with TestClient(create_app(config, model)) as test_client:
        yield test_client


TEXT_ROUTE = ("roboflow", "/clip/embed_text")


def test_traffic_moves_the_request_item_batch_and_token_figures(client: TestClient) -> None:
    before = metrics_of(client)
    for _ in range(3):
        assert client.post("/clip/embed_text", json={"text": ["a cat", "a dog"]}).status_code == 200
    assert client.post("/clip/embed_image", json={"image": {"type": "base64", "value": JPEG_B64}}).status_code == 200
    samba = client.post("/ss/api/predict/nlp/p/e", json={"inputs": ["one"]}, headers={"key": "k"})
    assert samba.status_code == 200
    after = metrics_of(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    labels = {"protocol": "roboflow", "route": "/clip/embed_text"}
    assert grew("clipgate_requests_total", **labels, status="200") == 3
    assert grew("clipgate_request_duration_seconds_count", **labels) == 3
    assert grew("clipgate_request_duration_seconds_sum", **labels) > 0
    samba_route = {"protocol": "sambastudio", "route": "/ss/api/predict/nlp/{project}/{endpoint}"}
    assert grew("clipgate_requests_total", **samba_route, status="200") == 1  # the template, prefix included
    assert grew("clipgate_items_total", kind="text") == 7 and grew("clipgate_items_total", kind="image") == 1
    assert grew("clipgate_batch_size_sum", kind="text") == 7 and grew("clipgate_batch_size_count", kind="text") >= 1
    assert grew("clipgate_batch_seconds_count", kind="image") == 1
    assert grew("clipgate_queue_wait_seconds_count", kind="text") == 7
    assert grew("clipgate_text_tokens_count") == 7 and grew("clipgate_text_tokens_sum") >= 7 * 3
    assert grew("clipgate_decode_seconds_count") == 1 and grew("clipgate_decode_seconds_sum") > 0
    assert value(after, "clipgate_inflight_requests") == 0
    assert value(after, "clipgate_ready") == 1
    card = state_of(client).card
    assert card is not None
    assert value(
        after, "clipgate_model_info", model=card.name, alias=card.alias, device="cpu", dtype="float32", backend="torch"
    ) == 1  # fmt: skip


@pytest.mark.parametrize(
    ("call", "status", "reason"),
    [
        pytest.param(lambda c: c.post("/clip/embed_text", json={"text": 5}), 422, "invalid", id="invalid"),
        pytest.param(lambda c: c.post("/ss/api/predict/nlp/p/e", json={"inputs": ["x"]}), 401, "unauthorized",
                     id="unauthorized"),
        pytest.param(lambda c: c.post("/clip/embed_text", content=b"x" * 100, headers={"content-length": str(1 << 30)}),
                     413, "too_large", id="too-large"),
        pytest.param(lambda c: c.get("/nope"), 404, "invalid", id="no-route"),
    ],
)  # fmt: skip
def test_each_refusal_counts_its_reason(client: TestClient, call: object, status: int, reason: str) -> None:
    before = metrics_of(client)
    response = call(client)  # type: ignore[operator]
    assert response.status_code == status
    after = metrics_of(client)
    for other in ("overloaded", "timeout", "too_large", "invalid", "unauthorized", "not_ready", "client_gone"):
        moved = value(after, "clipgate_rejections_total", reason=other) - value(
            before, "clipgate_rejections_total", reason=other
        )
        assert moved == (1 if other == reason else 0), other
    route = "<unmatched>" if status == 404 else None
    if route is not None:
        assert value(after, "clipgate_requests_total", protocol="none", route=route, status="404") == 1


def test_overload_queue_depth_and_inflight_show_while_the_model_is_held(model: Model) -> None:
    gated = GatedModel(model)
    config = make_config(server={"max_queued_texts": 2}, batching={"max_batch_texts": 1})
    try:
        with TestClient(create_app(config, gated)) as client:
            state = state_of(client)

            def post(i: int) -> Any:
                return client.post("/clip/embed_text", json={"text": f"held {i}"})

            first, results_first = in_threads([lambda: post(0)])
            assert gated.entered.wait(20)  # the first is in the model before the others queue behind it
            threads, results = in_threads([lambda: post(1), lambda: post(2)])
            threads += first
            wait_until(lambda: state.queue_depth("text") == 2, "two texts queued behind the held batch")
            held = metrics_of(client)
            assert value(held, "clipgate_queue_depth", kind="text") == 2
            assert value(held, "clipgate_inflight_requests") == 3
            refused = client.post("/clip/embed_text", json={"text": "no room"})
            assert refused.status_code == 503
            assert value(metrics_of(client), "clipgate_rejections_total", reason="overloaded") == 1
            gated.gate.set()
            for thread in threads:
                thread.join(20)
            assert [r.status_code for r in [*results_first.values(), *results.values()]] == [200, 200, 200]
            drained = metrics_of(client)
            assert value(drained, "clipgate_queue_depth", kind="text") == 0
            assert value(drained, "clipgate_queue_wait_seconds_count", kind="text") == 3
            state.draining = True
            assert value(metrics_of(client), "clipgate_ready") == 0
    finally:
        gated.gate.set()


def test_metrics_off_and_on_a_port_of_their_own(model: Model) -> None:
    with TestClient(create_app(make_config(server={"metrics": False}), model)) as client:
        assert client.get("/metrics").status_code == 404
        assert client.post("/clip/embed_text", json={"text": "a cat"}).status_code == 200
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    app = create_app(make_config(server={"metrics_port": metrics_port}), model)
    with live(app) as port:
        main = urllib.request.Request(f"http://127.0.0.1:{port}/clip/embed_text", data=b'{"text": "a"}')
        main.add_header("Content-Type", "application/json")
        assert urllib.request.urlopen(main, timeout=10).status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as scraped:
            samples = scrape(scraped.read().decode())
        labels = {"protocol": "roboflow", "route": "/clip/embed_text", "status": "200"}
        assert value(samples, "clipgate_requests_total", **labels) == 1
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
            raise AssertionError("/metrics is also on the main port")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404


def test_duration_buckets_end_at_the_deadline_and_disabled_metrics_record_nothing() -> None:
    assert duration_buckets(60.0)[-1] == 60.0 and duration_buckets(7.5)[-2:] == (5, 7.5)
    off = Metrics.disabled()
    off.request_done("roboflow", "/clip/embed_text", 200, 0.1)
    off.batch_done("text", 3, 0.01, [0.001] * 3)
    assert value(scrape(off.exposition().decode()), "clipgate_items_total", kind="text") == 0
