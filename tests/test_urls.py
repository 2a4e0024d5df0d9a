"""Fetching image URLs from a loopback server: redirects re-checked, size and time capped."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.engine import ClipEngine
from clipgate.errors import ImageError, PayloadTooLarge
from clipgate.urls import UrlPolicy, fetch
from tests import imagegen
from tests.conftest import make_config

JPEG = imagegen.jpeg(seed=9)
LOOPBACK = UrlPolicy(
    allow_http=True, allow_ip_hosts=True, allow_private_addresses=True, timeout_s=5, max_bytes=len(JPEG) + 10
)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        port = self.server.server_address[1]
        routes = {
            "/cat.jpg": lambda: self._send(200, JPEG),
            "/hop": lambda: self._redirect(f"http://127.0.0.1:{port}/cat.jpg"),
            "/loop": lambda: self._redirect("/loop"),
            "/to-file": lambda: self._redirect("file:///etc/passwd"),
            "/big": lambda: self._send(200, JPEG + b"x" * 100),
            "/missing": lambda: self._send(404, b"no"),
            "/slow": self._trickle,
        }
        routes.get(self.path, lambda: self._send(404, b"no"))()

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        for i in range(0, 40):  # a byte every 0.1 s: each read is quick, the whole is not
            self.wfile.write(JPEG[i : i + 1])
            self.wfile.flush()
            time.sleep(0.1)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_follows_a_checked_redirect(origin: str) -> None:
    assert fetch(f"{origin}/cat.jpg", LOOPBACK) == JPEG
    assert fetch(f"{origin}/hop", LOOPBACK) == JPEG


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        pytest.param("/loop", ImageError, "redirected too many times", id="redirect-loop"),
        pytest.param("/to-file", ImageError, "https", id="redirect-to-file"),
        pytest.param("/big", PayloadTooLarge, "larger than", id="too-big"),
        pytest.param("/missing", ImageError, "HTTP 404", id="not-found"),
    ],
)
def test_fetch_refusals(origin: str, path: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        fetch(f"{origin}{path}", LOOPBACK)


def test_a_slow_trickle_hits_the_overall_deadline(origin: str) -> None:
    with pytest.raises(ImageError, match="too long"):
        fetch(
            f"{origin}/slow", UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_private_addresses=True, timeout_s=1)
        )


def test_default_policy_refuses_loopback(origin: str) -> None:
    with pytest.raises(ImageError):
        fetch(f"{origin}/cat.jpg", UrlPolicy())


def test_roboflow_url_images_when_enabled(origin: str, engine: ClipEngine) -> None:
    images = {"allow_url": True, "allow_http_url": True, "allow_ip_hosts": True, "allow_private_addresses": True}
    with TestClient(create_app(make_config(images=images), engine=engine)) as client:
        by_url = client.post("/clip/embed_image", json={"image": {"type": "url", "value": f"{origin}/cat.jpg"}})
        by_file = client.post("/api/predict/file/p/e", files={"predict_file": JPEG})
        assert by_url.status_code == 200
        assert by_url.json()["embeddings"] == by_file.json()["data"]
        missing = client.post("/clip/embed_image", json={"image": {"type": "url", "value": f"{origin}/missing"}})
        assert missing.status_code == 400
        assert missing.json()["message"].startswith("Could not load input image. Cause: ")
