"""The budget of request body bytes in flight: reserved before a body is read, FIFO with a bounded
wait, refused in the vendor's overload shape, and always given back; and the per-route body limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.budget import GIB, BodyBudget, auto_capacity
from clipgate.engine import Model
from clipgate.errors import Overloaded
from clipgate.state import AppState
from tests.conftest import make_config


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_auto_capacity_is_a_fraction_of_memory_within_bounds() -> None:
    assert auto_capacity(24 * GIB) == GIB
    assert auto_capacity(2 * GIB) == GIB // 4  # never below 256 MiB
    assert auto_capacity(1024 * GIB) == 8 * GIB  # never above 8 GiB
    assert GIB // 4 <= auto_capacity() <= 8 * GIB  # this machine's


def test_reservations_fit_wait_in_order_and_are_refused_after_the_wait() -> None:
    async def main() -> None:
        budget = BodyBudget(100, wait_s=0.2)
        await budget.take(60)
        order: list[str] = []

        async def taker(name: str, size: int) -> None:
            await budget.take(size)
            order.append(name)

        first = asyncio.ensure_future(taker("first", 50))
        second = asyncio.ensure_future(taker("second", 30))  # would fit now, but waits its turn
        await asyncio.sleep(0.01)
        assert order == [] and budget.used == 60
        budget.give_back(60)
        await asyncio.gather(first, second)
        assert order == ["first", "second"] and budget.used == 80
        with pytest.raises(Overloaded, match="holding 80 bytes of request bodies, its limit is 100"):
            await budget.take(50)
        assert budget.used == 80 and not budget._waiters

    run(main())


def test_a_small_body_does_not_queue_behind_a_large_one() -> None:
    async def main() -> None:
        budget = BodyBudget(256 * 100, wait_s=0.5)
        await budget.take(256 * 90)
        large = asyncio.ensure_future(budget.take(256 * 50))  # waits for room
        await asyncio.sleep(0.01)
        await asyncio.wait_for(budget.take(100), 0.05)  # a small one fits at once
        budget.give_back(256 * 90)
        await large
        assert budget.used == 256 * 50 + 100

    run(main())


def test_a_body_larger_than_the_budget_runs_alone_and_a_cancelled_wait_frees_its_place() -> None:
    async def main() -> None:
        budget = BodyBudget(100, wait_s=5)
        await budget.take(500)  # the budget was empty: admitted, alone
        waiting = asyncio.ensure_future(budget.take(10))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not budget._waiters
        budget.give_back(500)
        assert budget.used == 0

    run(main())


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.clipgate  # type: ignore[attr-defined]
    return state


@pytest.fixture
def small_budget(model: Model) -> Iterator[TestClient]:
    config = make_config(server={"max_inflight_body_bytes": 10_000, "body_budget_wait_s": 0.1})
    with TestClient(create_app(config, model)) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "body", "status", "shape"),
    [
        pytest.param("/clip/embed_text", {"text": "a cat"}, 503, {"message"}, id="roboflow"),
        pytest.param("/api/predict/nlp/p/e", {"inputs": ["a cat"]}, 503, {"error", "status_code"}, id="samba"),
        pytest.param("/score", {"input_data": {"columns": ["image", "text"], "data": [["", "a cat"]]}}, 429,
                     {"message"}, id="azureml"),
    ],
)  # fmt: skip
def test_a_body_that_does_not_fit_is_refused_as_overload(
    small_budget: TestClient, path: str, body: dict[str, Any], status: int, shape: set[str]
) -> None:
    padded = orjson.dumps(body)[:-1] + b" " * 3000 + b"}"  # 3 KB: twice that does not fit in 1 KB of room
    headers = {"content-type": "application/json"}
    state = state_of(small_budget)
    small_budget.portal.call(state.body_budget.take, 9_000)  # type: ignore[union-attr]  # another request's body
    try:
        refused = small_budget.post(path, content=padded, headers=headers)
        assert refused.status_code == status and set(refused.json()) == shape
        assert refused.headers["retry-after"] == "1"
        assert "request bodies" in refused.text
        small = small_budget.post("/clip/embed_text", json={"text": "a cat"})  # 2 x 17 bytes still fit
        assert small.status_code == 200
    finally:
        small_budget.portal.call(state.body_budget.give_back, 9_000)  # type: ignore[union-attr]
    assert small_budget.post(path, content=padded, headers=headers).status_code == 200  # room again
    assert state.body_budget.used == 0


def test_every_way_a_request_ends_gives_its_reservation_back(small_budget: TestClient) -> None:
    budget = state_of(small_budget).body_budget
    ok = small_budget.post("/clip/embed_text", json={"text": "a cat"})
    bad = small_budget.post("/clip/embed_text", json={"text": 5})
    broken = small_budget.post("/clip/embed_text", content=b'{"text": ', headers={"content-type": "application/json"})

    def chunks() -> Iterator[bytes]:
        yield b'{"text": "a cat"}'

    chunked = small_budget.post("/clip/embed_text", content=chunks(), headers={"content-type": "application/json"})
    too_big = small_budget.post("/clip/embed_image", json={"image": {"type": "base64", "value": "A" * 4000}})
    assert [r.status_code for r in (ok, bad, broken, chunked, too_big)] == [200, 422, 422, 200, 400]
    assert budget.used == 0 and not budget._waiters


def test_a_route_refuses_a_body_larger_than_it_could_need(model: Model) -> None:
    # One image of at most 1,000 bytes: a Roboflow image body can need ~1.4 KB of base64 plus
    # overhead, far under the 64 MiB body limit; a text route keeps its own, larger bound.
    config = make_config(server={"max_images": 1, "max_texts": 1, "max_text_chars": 10}, images={"max_bytes": 1000})
    with TestClient(create_app(config, model)) as client:
        body = b'{"image": {"type": "base64", "value": "' + b"A" * 200_000 + b'"}}'
        refused = client.post("/clip/embed_image", content=body, headers={"content-type": "application/json"})
        assert refused.status_code == 413
        assert "for this route (image at their per-request limits)" in refused.json()["message"]
        multipart = client.post("/api/predict/file/p/e", files={"predict_file": ("a.jpg", b"x" * 200_000)})
        assert multipart.status_code == 413 and multipart.json()["status_code"] == 413
        assert client.post("/clip/embed_text", json={"text": "a cat"}).status_code == 200


def test_the_allocator_is_trimmed_when_a_burst_of_bodies_is_over() -> None:
    async def main() -> int:
        budget = BodyBudget(1 << 30, wait_s=0.1)
        trims: list[int] = []
        budget._trim = lambda: trims.append(budget.used)  # type: ignore[method-assign]
        await budget.take(1 << 20)
        budget.give_back(1 << 20)  # a small request: not worth a trim
        await budget.take(40 << 20)
        await budget.take(40 << 20)
        budget.give_back(40 << 20)  # still in use: not yet
        budget.give_back(40 << 20)  # over, after 81 MiB: trimmed, off the event loop
        await asyncio.sleep(0.05)
        return len(trims)

    assert run(main()) == 1
