"""https through the pinned connection: TCP to the checked address, SNI and certificate for the name.

A loopback TLS server with a throw-away certificate for images.example.test (from a trustme CA)
stands in for a public host; the fetcher is pointed at that CA as its only trust anchor.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from clipgate import urls
from clipgate.errors import ImageError
from clipgate.urls import fetch
from tests.test_urls import JPEG, FakeDNS, Network, Server, install_network, url_config

HOST = "images.example.test"
POLICY = url_config(allow_private_addresses=True, url_timeout_s=5, max_bytes=len(JPEG) + 10)


class TlsServer(Server):
    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__()
        self.server_names: list[str | None] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = self._record_sni
        self.socket = context.wrap_socket(self.socket, server_side=True)

    def _record_sni(self, sock: Any, name: str | None, context: Any) -> None:
        self.server_names.append(name)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate it issued for HOST: (chain, key, CA certificate)."""
    authority = trustme.CA()
    issued = authority.issue_cert(HOST)
    folder = tmp_path_factory.mktemp("tls")
    chain, key, ca = folder / "chain.pem", folder / "key.pem", folder / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    ca.write_bytes(authority.cert_pem.bytes())
    return chain, key, ca


@pytest.fixture(scope="module")
def tls_server(certificate: tuple[Path, Path, Path]) -> Iterator[TlsServer]:
    server = TlsServer(certificate[0], certificate[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> Network:
    return install_network(monkeypatch)


@pytest.fixture
def trust_test_certificate(certificate: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urls, "_CA_BUNDLE", str(certificate[2]))


DNS = {HOST: [["127.0.0.1"]], "other.example.test": [["127.0.0.1"]]}


@pytest.mark.usefixtures("trust_test_certificate")
def test_https_connects_to_the_checked_address_and_verifies_the_name(tls_server: TlsServer, network: Network) -> None:
    dns = FakeDNS(DNS)
    tls_server.hits.clear()
    tls_server.server_names.clear()
    assert fetch(f"https://{HOST}:{tls_server.port}/cat.jpg", POLICY, dns) == JPEG
    assert dns.calls == [HOST] and network.lookups == []
    assert network.connects == [("127.0.0.1", tls_server.port)]
    assert tls_server.server_names == [HOST]  # SNI carries the name, not the address
    assert tls_server.hits == [("/cat.jpg", f"{HOST}:{tls_server.port}")]


@pytest.mark.usefixtures("trust_test_certificate")
def test_https_refuses_a_certificate_for_another_name(tls_server: TlsServer, network: Network) -> None:
    tls_server.hits.clear()
    with pytest.raises(ImageError, match="certificate is not valid"):
        fetch(f"https://other.example.test:{tls_server.port}/cat.jpg", POLICY, FakeDNS(DNS))
    assert tls_server.hits == []


def test_https_refuses_an_untrusted_certificate(tls_server: TlsServer, network: Network) -> None:
    tls_server.hits.clear()
    with pytest.raises(ImageError, match="certificate is not valid"):
        fetch(f"https://{HOST}:{tls_server.port}/cat.jpg", POLICY, FakeDNS(DNS))
    assert tls_server.hits == []


@pytest.mark.usefixtures("trust_test_certificate")
def test_a_redirect_from_https_to_http_is_refused(tls_server: TlsServer, network: Network) -> None:
    tls_server.hits.clear()
    location = f"http://{HOST}:{tls_server.port}/cat.jpg"
    with pytest.raises(ImageError, match="Only https"):
        fetch(f"https://{HOST}:{tls_server.port}/to?url={location}", POLICY, FakeDNS(DNS))
    assert len(tls_server.hits) == 1
