"""Fixtures of the hostile suite: the network guard, the shared servers the cases go to, and fresh
servers for the tests that must not depend on what ran before them."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.config import Config
from clipgate.engine import Model
from tests.conftest import make_config
from tests.hostile.checks import assert_serves
from tests.hostile.routes import ROUTES, SMALL_BODY_LIMIT


@pytest.fixture(scope="package", autouse=True)
def network_attempts() -> Iterator[list[str]]:
    """Every way out to the network raises and is recorded: URL inputs are off by default."""
    attempts: list[str] = []

    def blocked(name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{name}{args[:3]!r}")
            raise OSError(f"network access blocked by tests/hostile ({name})")

        return refuse

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", blocked("getaddrinfo"))
        patch.setattr(socket, "gethostbyname", blocked("gethostbyname"))
        patch.setattr(socket, "create_connection", blocked("create_connection"))
        patch.setattr(socket.socket, "connect", blocked("socket.connect"))
        patch.setattr(socket.socket, "connect_ex", blocked("socket.connect_ex"))
        patch.setattr(requests.Session, "send", blocked("requests.Session.send"))
        patch.setattr(httpx.HTTPTransport, "handle_request", blocked("httpx.HTTPTransport"))
        yield attempts


@pytest.fixture(autouse=True)
def no_network(network_attempts: list[str]) -> Iterator[None]:
    network_attempts.clear()
    yield
    assert network_attempts == [], f"the server tried to reach the network: {network_attempts}"


def _server(model: Model, config: Config, *, warm: bool = False) -> Iterator[TestClient]:
    with TestClient(create_app(config, model), raise_server_exceptions=False) as client:
        if warm:  # the first case's time and memory are then its own
            for route in ROUTES:
                assert_serves(client, route)
        yield client


@pytest.fixture(scope="package")
def gateway(model: Model, network_attempts: list[str]) -> Iterator[TestClient]:
    """The server the cases share. Each case checks it is unharmed after it (nothing left in
    flight, still ready); each group's `*_then_still_serves` test sends the group's cases again
    to a fresh server of its own, so what ran before never decides what those tests mean."""
    yield from _server(model, make_config(), warm=True)


@pytest.fixture(scope="package")
def small_gateway(model: Model, network_attempts: list[str]) -> Iterator[TestClient]:
    yield from _server(model, make_config(server={"max_body_bytes": SMALL_BODY_LIMIT}))


@pytest.fixture
def fresh_gateway(model: Model, network_attempts: list[str]) -> Iterator[TestClient]:
    """A server of this test's own, configured as `gateway` is: nothing before the test touched it."""
    yield from _server(model, make_config())


@pytest.fixture
def fresh_small_gateway(model: Model, network_attempts: list[str]) -> Iterator[TestClient]:
    yield from _server(model, make_config(server={"max_body_bytes": SMALL_BODY_LIMIT}))
