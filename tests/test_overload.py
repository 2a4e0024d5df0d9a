"""Overload: a bounded queue answered with 503 + Retry-After (429 on Azure), a per-request
deadline, an in-flight request limit, and callers that go away having their work dropped.
Every request ends with an answer."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import uvicorn
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.engine import Model
from clipgate.state import AppState
from tests.conftest import make_config


class GatedModel(Model):
    """The real model, except that text batches wait at a gate and are recorded."""

    def __init__(self, inner: Model) -> None:
        super().__init__(inner.preprocessor, inner.encoder)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[list[int]]] = []

    def embed_texts(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(20), "the test never opened the gate"
        self.batches.append([list(row) for row in batch])
        return super().embed_texts(batch)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextlib.contextmanager
def live(app: Any) -> Iterator[int]:
    """`app` on a real uvicorn server on 127.0.0.1, in a thread; yields its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "uvicorn to start")
        yield port
    finally:
        server.should_exit = True
        thread.join(20)


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.clipgate  # type: ignore[attr-defined]
    return state


def in_threads(calls: list[Callable[[], Any]]) -> tuple[list[threading.Thread], dict[int, Any]]:
    results: dict[int, Any] = {}

    def run(i: int, call: Callable[[], Any]) -> None:
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    return threads, results


@pytest.fixture
def gated(model: Model) -> Iterator[GatedModel]:
    gated = GatedModel(model)
    yield gated
    gated.gate.set()


def test_past_the_queue_bound_every_vendor_gets_its_overload_answer(gated: GatedModel) -> None:
    config = make_config(server={"max_queued_texts": 3}, batching={"max_batch_texts": 1})
    with TestClient(create_app(config, gated)) as client:
        batcher = state_of(client).service.batcher  # type: ignore[union-attr]
        post = lambda text: lambda: client.post("/clip/embed_text", json={"text": text})  # noqa: E731
        threads, results = in_threads([post("running")])
        assert gated.entered.wait(10)  # the first text holds the model
        more, more_results = in_threads([post(f"queued {i}") for i in range(3)])
        wait_until(lambda: batcher.pending("text") == 3, "three queued texts")

        roboflow = client.post("/clip/embed_text", json={"text": "one too many"})
        assert roboflow.status_code == 503
        assert int(roboflow.headers["retry-after"]) >= 1
        assert "limit is 3" in roboflow.json()["message"]
        azure = client.post("/score", json={"input_data": {"columns": ["image", "text"], "data": [["", "x"]]}})
        assert azure.status_code == 429 and int(azure.headers["retry-after"]) >= 1
        assert azure.json()["message"].startswith("Too many pending requests.")
        samba = client.post("/api/predict/nlp/p/e", json={"inputs": ["x"]})
        assert samba.status_code == 503 and samba.json()["status_code"] == 503
        assert set(samba.json()) == {"error", "status_code"}

        gated.gate.set()
        for t in threads + more:
            t.join(20)
        assert [r.status_code for r in results.values()] == [200]
        assert [r.status_code for r in more_results.values()] == [200, 200, 200]
        assert client.post("/clip/embed_text", json={"text": "after"}).status_code == 200


def test_a_request_past_its_deadline_is_answered_and_its_work_dropped(gated: GatedModel) -> None:
    config = make_config(server={"request_timeout_s": 0.5}, batching={"max_batch_texts": 1})
    with TestClient(create_app(config, gated)) as client:
        threads, results = in_threads([lambda: client.post("/clip/embed_text", json={"text": "holds the model"})])
        assert gated.entered.wait(10)
        started = time.monotonic()
        late = client.post("/clip/embed_text", json={"text": "a text that waits too long"})
        assert time.monotonic() - started < 5
        assert late.status_code == 503 and "0.5 s" in late.json()["message"]
        assert int(late.headers["retry-after"]) >= 1
        azure = client.post("/score", json={"input_data": {"columns": ["image", "text"], "data": [["", "x"]]}})
        assert azure.status_code == 429

        gated.gate.set()
        threads[0].join(20)
        after = client.post("/clip/embed_text", json={"text": "after"})
        assert after.status_code == 200, after.text
        # The holder outlived its deadline too, inside a running batch: answered 503 all the same.
        assert results[0].status_code == 503, results[0].text
    late_tokens = gated.preprocessor.tokenize(["a text that waits too long"])[0]
    assert late_tokens not in [row for batch in gated.batches for row in batch]  # never reached the model


def test_in_flight_requests_are_bounded_before_their_bodies_are_read(gated: GatedModel) -> None:
    config = make_config(server={"max_inflight_requests": 2})
    with TestClient(create_app(config, gated)) as client:
        threads, results = in_threads(
            [lambda i=i: client.post("/clip/embed_text", json={"text": f"text {i}"}) for i in range(2)]
        )
        wait_until(lambda: state_of(client).inflight == 2, "two requests in flight")
        refused = client.post("/clip/embed_text", json={"text": "third"})
        assert refused.status_code == 503 and "retry" in refused.json()["message"]
        gated.gate.set()
        for t in threads:
            t.join(20)
        assert [r.status_code for r in results.values()] == [200, 200]
        assert state_of(client).inflight == 0


def test_a_client_that_disconnects_has_its_queued_work_dropped(gated: GatedModel) -> None:
    """On a real uvicorn server: a caller that hangs up while queued never reaches the model."""
    config = make_config(batching={"max_batch_texts": 1})
    app = create_app(config, gated)
    with live(app) as port:
        gateway: AppState = app.state.clipgate
        batcher = gateway.service.batcher  # type: ignore[union-attr]

        def send(text: str) -> socket.socket:
            body = json.dumps({"text": text}).encode()
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            sock.sendall(
                b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            return sock

        holder = send("holds the model")
        assert gated.entered.wait(10)
        leaver = send("a caller who hangs up")
        wait_until(lambda: batcher.pending("text") == 1, "the second text to be queued")
        leaver.close()
        wait_until(lambda: gateway.inflight == 1, "the abandoned request to end")
        gated.gate.set()
        reply = holder.recv(65536)
        holder.close()
        assert reply.startswith(b"HTTP/1.1 200")
        wait_until(lambda: gateway.inflight == 0, "the server to go idle")
        leaver_tokens = gated.preprocessor.tokenize(["a caller who hangs up"])[0]
        assert leaver_tokens not in [row for batch in gated.batches for row in batch]
        metrics = gateway.metrics.exposition().decode()
        assert 'clipgate_rejections_total{reason="client_gone"} 1.0' in metrics


def test_a_body_slower_than_the_deadline_is_a_408_not_an_overload(model: Model) -> None:
    app = create_app(make_config(server={"request_timeout_s": 0.5}), model)
    with live(app) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = b'{"text": "a photo of a cat"}'
        head = "POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        reply = sock.recv(65536)  # the rest never comes
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"did not arrive within 0.5 s" in reply and b"retry-after" not in reply.lower()


def test_a_failed_request_leaves_no_decoding_behind() -> None:
    """When one image of a request fails, its images still waiting for a decode thread are
    cancelled: a request that has failed costs nothing more."""
    from concurrent.futures import ThreadPoolExecutor

    from clipgate.service import EmbeddingService

    ran: list[str] = []
    release = threading.Event()

    def decode(arg: str) -> str:
        ran.append(arg)
        if arg == "bad":
            raise ValueError("not an image")
        release.wait(5)
        return arg

    async def main() -> None:
        with ThreadPoolExecutor(max_workers=2) as pool:
            with pytest.raises(ValueError):
                await EmbeddingService._all_in(pool, decode, ["slow", "bad", "later 1", "later 2", "later 3"])
            for _ in range(10):  # the cancellations are delivered by the event loop's callbacks:
                await asyncio.sleep(0)  # a few turns of the loop, however busy the machine is
            release.set()

    import asyncio

    asyncio.run(main())
    # The thread "bad" freed may pick up "later 1" before the failure is seen; nothing after it runs.
    assert "later 2" not in ran and "later 3" not in ran and {"slow", "bad"} <= set(ran)
