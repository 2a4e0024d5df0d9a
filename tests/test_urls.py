"""Fetching image URLs from loopback servers: every hop checked and pinned, size and time capped.

No test here reaches past 127.0.0.1: names resolve through fake resolvers, `socket.getaddrinfo` refuses
names outright, and connections to any other address are either routed to a loopback server or
refused before a packet is sent (see the `network` fixture).
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
import urllib3.util.connection
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.config import ImagesConfig
from clipgate.engine import Model
from clipgate.errors import ImageError, PayloadTooLarge
from clipgate.urls import fetch
from tests import imagegen
from tests.conftest import make_config

JPEG = imagegen.jpeg(seed=9)


def url_config(**images: Any) -> ImagesConfig:
    """The [images] config section, image URLs enabled, with `images` changed: what `fetch` reads."""
    return ImagesConfig(allow_url=True, **images)


LOOPBACK = url_config(
    allow_http_url=True, allow_ip_hosts=True, allow_private_addresses=True, url_timeout_s=5, max_bytes=len(JPEG) + 10
)
# Names and loopback allowed, as for an operator who fetches from an internal image store.
PRIVATE_NAMES = url_config(allow_http_url=True, allow_private_addresses=True, url_timeout_s=5, max_bytes=len(JPEG) + 10)
# The default address rules, http allowed so loopback servers can stand in for public ones.
PUBLIC_ONLY = url_config(allow_http_url=True, url_timeout_s=5, max_bytes=len(JPEG) + 10)
PUBLIC_IP = "93.184.216.34"  # never contacted: the `network` fixture routes it to a loopback server


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: list[tuple[str, str | None]] = []  # (path, Host header)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that hung up on a trickle is what those tests want


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.server.hits.append((self.path, self.headers.get("Host")))
        port = self.server.port
        path, _, query = self.path.partition("?")
        if path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            return self._redirect(f"/chain/{left - 1}") if left else self._send(200, JPEG)
        routes: dict[str, Callable[[], None]] = {
            "/cat.jpg": lambda: self._send(200, JPEG),
            "/hop": lambda: self._redirect(f"http://127.0.0.1:{port}/cat.jpg"),
            "/loop": lambda: self._redirect("/loop"),
            "/to-file": lambda: self._redirect("file:///etc/passwd"),
            "/to": lambda: self._redirect(parse_qs(query)["url"][0]),
            "/big": lambda: self._send(200, JPEG + b"x" * 100),
            "/big-unannounced": self._unannounced,
            "/missing": lambda: self._send(404, b"no"),
            "/slow": self._trickle,
            "/slow-headers": self._trickle_headers,
            "/silent": lambda: time.sleep(2),
        }
        routes.get(path, lambda: self._send(404, b"no"))()

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

    def _unannounced(self) -> None:
        # HTTP/1.0 with no Content-Length: the body ends when the connection does, so only the
        # streaming count can stop it.
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(64):
                self.wfile.write(JPEG)
        except OSError:
            return

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        try:
            for i in range(0, 40):  # a byte every 0.1 s: each read is quick, the whole is not
                self.wfile.write(JPEG[i : i + 1])
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            return

    def _trickle_headers(self) -> None:
        # Headers a byte every 0.1 s: no socket timeout ever fires, only the overall deadline can.
        try:
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
            for _ in range(30):
                self.wfile.write(b"z")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            return

    def log_message(self, format: str, *args: object) -> None:
        return


def _serve() -> Iterator[Server]:
    server = Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """The loopback server: in the rebinding tests, the internal service an attacker is after."""
    yield from _serve()


@pytest.fixture(scope="module")
def public_server() -> Iterator[Server]:
    """A second loopback server that plays the public host PUBLIC_IP (see `network`)."""
    yield from _serve()


@pytest.fixture
def origin(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


@dataclass
class Network:
    """What the fetcher asked of the network during a test."""

    connects: list[tuple[str, int]] = field(default_factory=list)  # addresses it opened a TCP connection to
    lookups: list[str] = field(default_factory=list)  # names it asked the system to resolve
    routes: dict[tuple[str, int], int] = field(default_factory=dict)  # (address, port) -> loopback port


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> Network:
    return install_network(monkeypatch)


def install_network(monkeypatch: pytest.MonkeyPatch) -> Network:
    """Record every connection and name lookup. Loopback connections go through; an address in
    `routes` is connected to a loopback server instead; anything else is refused unsent."""
    net = Network()
    real_connect = urllib3.util.connection.create_connection
    real_getaddrinfo = socket.getaddrinfo

    def connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        host, port = address
        net.connects.append((host, port))
        if (host, port) in net.routes:
            return real_connect(("127.0.0.1", net.routes[(host, port)]), *args, **kwargs)
        if not ipaddress.ip_address(host.strip("[]")).is_loopback:
            raise ConnectionRefusedError(f"test network: {host} is not reachable from tests")
        return real_connect(address, *args, **kwargs)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            ipaddress.ip_address(str(host).strip("[]"))
        except ValueError:
            net.lookups.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, "test network: names are not resolved here") from None
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return net


class FakeDNS:
    """A resolver from a table; each name may answer differently on successive lookups."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answers = self.table.get(host)
        if answers is None:
            raise OSError("no such host")
        return answers[min(self.calls.count(host), len(answers)) - 1]


def test_fetch_follows_a_checked_redirect(origin: str) -> None:
    assert fetch(f"{origin}/cat.jpg", LOOPBACK) == JPEG
    assert fetch(f"{origin}/hop", LOOPBACK) == JPEG


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        pytest.param("/loop", ImageError, "redirected too many times", id="redirect-loop"),
        pytest.param("/to-file", ImageError, "https", id="redirect-to-file"),
        pytest.param("/big", PayloadTooLarge, "larger than", id="too-big"),
        pytest.param("/big-unannounced", PayloadTooLarge, "larger than", id="too-big-while-streaming"),
        pytest.param("/missing", ImageError, "HTTP 404", id="not-found"),
    ],
)
def test_fetch_refusals(origin: str, path: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        fetch(f"{origin}{path}", LOOPBACK)


def test_a_slow_trickle_hits_the_overall_deadline(origin: str) -> None:
    started = time.monotonic()
    with pytest.raises(ImageError, match="too long"):
        fetch(
            f"{origin}/slow",
            url_config(allow_http_url=True, allow_ip_hosts=True, allow_private_addresses=True, url_timeout_s=0.5),
        )
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("path", ["/slow-headers", "/silent"])
def test_a_server_that_stalls_before_the_body_hits_the_deadline(origin: str, path: str) -> None:
    policy = url_config(allow_http_url=True, allow_ip_hosts=True, allow_private_addresses=True, url_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ImageError, match="too long"):
        fetch(f"{origin}{path}", policy)
    assert time.monotonic() - started < 1.5


def test_default_policy_refuses_loopback(origin: str) -> None:
    with pytest.raises(ImageError):
        fetch(f"{origin}/cat.jpg", url_config())


def test_a_name_only_the_fake_resolver_knows_is_fetched_from_the_checked_address(
    server: Server, network: Network
) -> None:
    # The system cannot resolve images.example.test (and `network` refuses every name lookup), so
    # this only works when the connection goes to the address the checks saw, with no second lookup.
    dns = FakeDNS({"images.example.test": [["127.0.0.1"]]})
    server.hits.clear()
    assert fetch(f"http://images.example.test:{server.port}/cat.jpg", PRIVATE_NAMES, dns) == JPEG
    assert dns.calls == ["images.example.test"]
    assert network.lookups == []
    assert network.connects == [("127.0.0.1", server.port)]
    assert server.hits == [("/cat.jpg", f"images.example.test:{server.port}")]  # the original Host header


def test_dns_rebinding_never_reaches_the_loopback_server(
    server: Server, public_server: Server, network: Network
) -> None:
    # First answer public (the check passes), every later answer loopback: a fetcher that resolved
    # the name again to connect would land on `server`.
    network.routes[(PUBLIC_IP, server.port)] = public_server.port
    dns = FakeDNS({"rebind.example.test": [[PUBLIC_IP], ["127.0.0.1"]]})
    server.hits.clear()
    public_server.hits.clear()
    assert fetch(f"http://rebind.example.test:{server.port}/cat.jpg", PUBLIC_ONLY, dns) == JPEG
    assert network.connects == [(PUBLIC_IP, server.port)]
    assert network.lookups == []
    assert server.hits == []
    assert public_server.hits == [("/cat.jpg", f"rebind.example.test:{server.port}")]


def test_dns_rebinding_between_redirect_hops_is_caught(server: Server, public_server: Server, network: Network) -> None:
    network.routes[(PUBLIC_IP, server.port)] = public_server.port
    dns = FakeDNS({"rebind.example.test": [[PUBLIC_IP], ["127.0.0.1"]]})
    server.hits.clear()
    public_server.hits.clear()
    # /chain/1 redirects to /chain/0 on the same host: the second hop resolves again, and is refused.
    with pytest.raises(ImageError, match="not public"):
        fetch(f"http://rebind.example.test:{server.port}/chain/1", PUBLIC_ONLY, dns)
    assert dns.calls == ["rebind.example.test", "rebind.example.test"]
    assert network.connects == [(PUBLIC_IP, server.port)]  # the second hop never connected
    assert [path for path, _ in public_server.hits] == ["/chain/1"]
    assert server.hits == []


NON_GLOBAL = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback-range"),
    ("::1", "ipv6-loopback"),
    ("10.1.2.3", "rfc1918-10"),
    ("172.16.0.1", "rfc1918-172"),
    ("192.168.1.1", "rfc1918-192"),
    ("169.254.169.254", "link-local-metadata"),
    ("fe80::1", "ipv6-link-local"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat-top"),
    ("fc00::1", "ula-fc"),
    ("fd12:3456::1", "ula-fd"),
    ("::ffff:127.0.0.1", "ipv4-mapped-loopback"),
    ("::ffff:169.254.169.254", "ipv4-mapped-metadata"),
    ("::ffff:8.8.8.8", "ipv4-mapped-even-public"),
    ("::7f00:1", "ipv4-compatible"),
    ("64:ff9b::7f00:1", "nat64"),
    ("2002:7f00:1::", "6to4-loopback"),
    ("2001::1", "teredo"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast-ssdp"),
    ("ff02::1", "ipv6-multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "ipv6-unspecified"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("0.1.2.3", "this-network"),
]


@pytest.mark.parametrize("address", [pytest.param(a, id=i) for a, i in NON_GLOBAL])
def test_every_non_global_address_class_is_refused_without_connecting(address: str, network: Network) -> None:
    for answer in ([address], [PUBLIC_IP, address], [address, PUBLIC_IP]):  # one bad answer is enough
        dns = FakeDNS({"images.example.test": [answer]})
        with pytest.raises(ImageError, match="not public|cannot be fetched"):
            fetch("https://images.example.test/cat.jpg", url_config(), dns)
    assert network.connects == []


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "not-an-address"])
def test_unusable_answers_are_refused_even_when_private_addresses_are_allowed(address: str, network: Network) -> None:
    dns = FakeDNS({"images.example.test": [[address]]})
    with pytest.raises(ImageError, match="cannot be fetched|not an IP address"):
        fetch("http://images.example.test/cat.jpg", PRIVATE_NAMES, dns)
    assert network.connects == []


def test_a_mapped_address_is_connected_to_as_ipv4_when_private_addresses_are_allowed(
    server: Server, network: Network
) -> None:
    dns = FakeDNS({"images.example.test": [["::ffff:127.0.0.1"]]})
    assert fetch(f"http://images.example.test:{server.port}/cat.jpg", PRIVATE_NAMES, dns) == JPEG
    assert network.connects == [("127.0.0.1", server.port)]


@pytest.mark.parametrize(
    ("location", "policy", "message"),
    [
        pytest.param("http://internal.example.test/x", PUBLIC_ONLY, "not public", id="name-resolving-private"),
        pytest.param("http://metadata.example.test/x", PUBLIC_ONLY, "not public", id="name-resolving-metadata"),
        pytest.param("http://127.0.0.1/x", PUBLIC_ONLY, "IP address", id="ip-literal"),
        pytest.param("http://[::1]/x", PUBLIC_ONLY, "IP address", id="ipv6-literal"),
        pytest.param("http://2130706433/x", PUBLIC_ONLY, "valid IP address", id="decimal-ip"),
        pytest.param("http://localhost/x", PUBLIC_ONLY, "fully qualified", id="single-label"),
        pytest.param("http://nowhere.example.test/x", PUBLIC_ONLY, "cannot be resolved", id="nxdomain"),
        pytest.param(
            "http://images.example.test/x",
            url_config(allow_http_url=True, url_deny_hosts=("images.example.test",)),
            "not allowed",
            id="denied-host",
        ),
        pytest.param(
            "http://images.example.test/x",
            url_config(allow_http_url=True, url_allow_hosts=("public.example.test",)),
            "not allowed",
            id="outside-allow-list",
        ),
        pytest.param("http://u:hunter2@images.example.test/x", PUBLIC_ONLY, "credentials", id="userinfo"),
        pytest.param("http://localhost:1\\@images.example.test/x", PUBLIC_ONLY, "backslash", id="backslash"),
        pytest.param("gopher://images.example.test/x", PUBLIC_ONLY, "https", id="gopher"),
    ],
)
def test_a_redirect_to_a_refused_destination_is_refused(
    location: str, policy: ImagesConfig, message: str, server: Server, public_server: Server, network: Network
) -> None:
    # public.example.test is the routed "public" server, which redirects to `location`.
    network.routes[(PUBLIC_IP, 80)] = public_server.port
    network.routes[(PUBLIC_IP, 443)] = public_server.port
    dns = FakeDNS(
        {
            "public.example.test": [[PUBLIC_IP]],
            "images.example.test": [["93.184.216.35"]],
            "internal.example.test": [["10.0.0.5"]],
            "metadata.example.test": [["169.254.169.254"]],
        }
    )
    public_server.hits.clear()
    start = f"http://public.example.test/to?url={quote(location, safe='')}"
    with pytest.raises(ImageError, match=message) as refused:
        fetch(start, policy, dns)
    assert "hunter2" not in str(refused.value)
    assert network.connects == [(PUBLIC_IP, 80)]  # the refused hop was never connected to
    assert len(public_server.hits) == 1


def test_http_is_refused_unless_allowed(network: Network) -> None:
    dns = FakeDNS({"images.example.test": [[PUBLIC_IP]]})
    with pytest.raises(ImageError, match="https"):
        fetch("http://images.example.test/cat.jpg", url_config(), dns)
    assert dns.calls == [] and network.connects == []


def test_redirects_are_bounded(server: Server, network: Network) -> None:
    policy = url_config(allow_http_url=True, allow_ip_hosts=True, allow_private_addresses=True, url_max_redirects=3)
    server.hits.clear()
    assert fetch(f"http://127.0.0.1:{server.port}/chain/3", policy) == JPEG  # exactly url_max_redirects hops
    assert len(server.hits) == 4
    server.hits.clear()
    with pytest.raises(ImageError, match="redirected too many times"):
        fetch(f"http://127.0.0.1:{server.port}/chain/4", policy)
    assert [path for path, _ in server.hits] == ["/chain/4", "/chain/3", "/chain/2", "/chain/1"]
    server.hits.clear()
    with pytest.raises(ImageError, match="redirected too many times"):
        fetch(f"http://127.0.0.1:{server.port}/loop", policy)
    assert len(server.hits) == 4
    no_redirects = url_config(
        allow_http_url=True, allow_ip_hosts=True, allow_private_addresses=True, url_max_redirects=0
    )
    with pytest.raises(ImageError, match="redirected too many times"):
        fetch(f"http://127.0.0.1:{server.port}/hop", no_redirects)


TRICKS = [
    ("https://localhost:6666\\@images.example.test/cat.jpg", "backslash", "roboflow-ghsa-rv25"),
    ("http://127.0.0.1:{port}\\@images.example.test/cat.jpg", "backslash", "backslash-to-loopback"),
    ("https://images.example.test\\.evil.test/", "backslash", "backslash-in-host"),
    ("http://images.example.test:{port}@127.0.0.1:{port}/cat.jpg", "credentials", "host-as-userinfo"),
    ("https://admin:hunter2@images.example.test/cat.jpg", "credentials", "user-and-password"),
    ("https://hunter2@images.example.test/cat.jpg", "credentials", "user-only"),
    ("https://@images.example.test/cat.jpg", "credentials", "empty-userinfo"),
    ("https://images.example.test%2F@127.0.0.1/", "credentials", "encoded-slash-userinfo"),
    ("https://im%61ges.example.test/cat.jpg", "parsers", "percent-encoded-host"),
    ("https://images.example.test%00.evil.test/", "malformed", "nul-in-host"),
    ("https://images.example.test\t.evil.test/", "whitespace", "tab-in-host"),
    ("https://images.example.test\n/cat.jpg", "whitespace", "newline"),
    (" https://images.example.test/cat.jpg", "whitespace", "leading-space"),
    ("https://images.example.test\uff0eevil.test/", "malformed", "fullwidth-dot"),
    ("https://0x7f.1/cat.jpg", "valid IP address", "hex-ip"),
    ("https://0177.0.0.1/cat.jpg", "IP address", "octal-ip"),
    ("https://images.example.test:0/cat.jpg", "malformed", "port-zero"),
    ("https://images.example.test:99999/cat.jpg", "malformed", "port-out-of-range"),
    ("https:///images.example.test/cat.jpg", "no host", "empty-authority"),
    ("//images.example.test/cat.jpg", "https", "scheme-relative"),
    ("file:///etc/passwd", "https", "file"),
]


@pytest.mark.parametrize(("url", "message"), [pytest.param(u, m, id=i) for u, m, i in TRICKS])
def test_authority_tricks_are_refused_before_any_lookup(
    url: str, message: str, server: Server, network: Network
) -> None:
    dns = FakeDNS({"images.example.test": [["127.0.0.1"]], "localhost": [["127.0.0.1"]]})
    server.hits.clear()
    with pytest.raises(ImageError, match=message) as refused:
        fetch(url.format(port=server.port), PRIVATE_NAMES, dns)
    text = str(refused.value)
    assert "hunter2" not in text and "admin" not in text and "\n" not in text
    assert dns.calls == [] and network.connects == [] and server.hits == []


def test_environment_proxies_are_ignored(server: Server, network: Network, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://proxy.example.test:3128")
    monkeypatch.setenv("NO_PROXY", "")
    dns = FakeDNS({"images.example.test": [["127.0.0.1"]]})
    assert fetch(f"http://images.example.test:{server.port}/cat.jpg", PRIVATE_NAMES, dns) == JPEG
    assert network.connects == [("127.0.0.1", server.port)] and network.lookups == []


def test_the_next_checked_address_is_tried_when_one_does_not_answer(server: Server, network: Network) -> None:
    # 127.0.0.2 is loopback but nothing listens on it (the server is bound to 127.0.0.1 only).
    dns = FakeDNS({"images.example.test": [["127.0.0.2", "127.0.0.1"]]})
    assert fetch(f"http://images.example.test:{server.port}/cat.jpg", PRIVATE_NAMES, dns) == JPEG
    assert network.connects == [("127.0.0.2", server.port), ("127.0.0.1", server.port)]
    assert dns.calls == ["images.example.test"]


def test_query_and_path_are_sent_and_the_fragment_is_not(server: Server) -> None:
    server.hits.clear()
    fetch(f"http://127.0.0.1:{server.port}/cat.jpg?size=2&x=%2F#frag", LOOPBACK)
    assert server.hits == [("/cat.jpg?size=2&x=%2F", f"127.0.0.1:{server.port}")]


def test_roboflow_url_images_when_enabled(origin: str, model: Model) -> None:
    images = {"allow_url": True, "allow_http_url": True, "allow_ip_hosts": True, "allow_private_addresses": True}
    with TestClient(create_app(make_config(images=images), model)) as client:
        by_url = client.post("/clip/embed_image", json={"image": {"type": "url", "value": f"{origin}/cat.jpg"}})
        by_file = client.post("/api/predict/file/p/e", files={"predict_file": JPEG})
        assert by_url.status_code == 200
        assert by_url.json()["embeddings"] == by_file.json()["data"]
        missing = client.post("/clip/embed_image", json={"image": {"type": "url", "value": f"{origin}/missing"}})
        assert missing.status_code == 400
        assert missing.json()["message"].startswith("Could not load input image. Cause: ")
