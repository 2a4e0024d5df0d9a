"""Which server answered: the X-Clipgate-Replica header on every response, and Roboflow's /info."""

from __future__ import annotations

import os
import socket

import pytest
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.engine import Model
from tests.conftest import make_config


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/livez", id="probe"),
        pytest.param("GET", "/info", id="info"),
        pytest.param("POST", "/clip/embed_text", id="embedding"),
        pytest.param("POST", "/score", id="azure-error"),
        pytest.param("GET", "/no/such/route", id="unmatched"),
        pytest.param("GET", "/metrics", id="metrics"),
    ],
)
def test_every_response_names_the_replica(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, json={"text": ["a cat"]} if method == "POST" else None)
    assert response.headers["X-Clipgate-Replica"] == f"{socket.gethostname()}:{os.getpid()}"


def test_info_names_the_replica(client: TestClient) -> None:
    info = client.get("/info")
    assert info.status_code == 200
    assert info.json()["replica"] == info.headers["X-Clipgate-Replica"]


def test_a_configured_replica_id_is_used(model: Model) -> None:
    app = create_app(make_config(server={"replica_id": "edge-7"}), model)
    with TestClient(app) as named:
        assert named.get("/readyz").headers["X-Clipgate-Replica"] == "edge-7"
        assert named.get("/info").json()["replica"] == "edge-7"
