"""Base64 image strings in the forms clients send them, and the URL policy with a fake resolver."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipgate.config import ImagesConfig
from clipgate.errors import ImageError
from clipgate.images import decode_base64
from clipgate.urls import NOT_RETRIEVED, fetch
from tests.test_urls import Network, install_network, url_config


@given(st.binary(min_size=1, max_size=600))
@settings(max_examples=200, deadline=None)
def test_every_client_encoding_round_trips(data: bytes) -> None:
    plain = base64.b64encode(data).decode()
    forms = [
        plain,
        base64.encodebytes(data).decode(),  # Azure samples: a newline every 76 characters
        "data:image/png;base64," + plain,  # browsers and some SDKs
        base64.urlsafe_b64encode(data).decode().rstrip("="),
        plain.rstrip("="),
        "\r\n".join(plain[i : i + 64] for i in range(0, len(plain), 64)),
    ]
    for form in forms:
        assert decode_base64(form) == data


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_string_decodes_or_is_an_image_error(value: str) -> None:
    try:
        result = decode_base64(value)
    except ImageError:
        return
    assert result


@pytest.mark.parametrize("value", ["", "   ", "\n", "data:image/png;base64,", "=", "=="])
def test_empty_payload(value: str) -> None:
    with pytest.raises(ImageError, match="Empty image payload"):
        decode_base64(value)


@pytest.mark.parametrize("value", ["abc!", "a", "zzzzz", "ab=c", "héllo", "abcd===="])
def test_malformed(value: str) -> None:
    with pytest.raises(ImageError, match="Malformed base64"):
        decode_base64(value)


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> Network:
    return install_network(monkeypatch)


DNS = resolver(
    {
        "images.example.com": ["93.184.216.34"],
        "internal.example.com": ["10.0.0.5"],
        "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
        "mapped.example.com": ["::ffff:169.254.169.254"],
        "cgnat.example.com": ["100.64.1.1"],
        "ula.example.com": ["fd00::1"],
    }
)


@pytest.mark.parametrize(
    ("url", "policy", "problem"),
    [
        pytest.param("https://images.example.com/a.jpg", url_config(), None, id="ok"),
        pytest.param("http://images.example.com/a.jpg", url_config(), "https", id="http-refused"),
        pytest.param("http://images.example.com/a.jpg", url_config(allow_http_url=True), None, id="http-allowed"),
        pytest.param("file:///etc/passwd", url_config(), "https", id="file-scheme"),
        pytest.param("https://127.0.0.1/a.jpg", url_config(), "IP address", id="ip-literal"),
        pytest.param("https://[::1]/a.jpg", url_config(), "IP address", id="ipv6-literal"),
        pytest.param("https://localhost/a.jpg", url_config(), "fully qualified", id="single-label"),
        pytest.param("https://internal.example.com/a", url_config(), "not public", id="private"),
        pytest.param("https://mixed.example.com/a", url_config(), "not public", id="one-private-answer"),
        pytest.param("https://mapped.example.com/a", url_config(), "not public", id="ipv4-mapped-link-local"),
        pytest.param("https://cgnat.example.com/a", url_config(), "not public", id="cgnat"),
        pytest.param("https://ula.example.com/a", url_config(), "not public", id="ula"),
        pytest.param("https://nowhere.example.com/a", url_config(), "cannot be resolved", id="nxdomain"),
        pytest.param(
            "https://localhost:6666\\@images.example.com/", url_config(), "backslash", id="backslash-authority"
        ),
        pytest.param("https://user:pw@images.example.com/", url_config(), "credentials", id="userinfo"),
        pytest.param(
            "https://images.example.com/", url_config(url_deny_hosts=("example.com",)), "not allowed", id="denied"
        ),
        pytest.param(
            "https://images.example.com/", url_config(url_allow_hosts=("other.org",)), "not allowed", id="not-allowed"
        ),
        pytest.param(
            "https://images.example.com/", url_config(url_allow_hosts=("example.com",)), None, id="allowed-subdomain"
        ),
        pytest.param(
            "https://evilexample.com/", url_config(url_allow_hosts=("example.com",)), "not allowed", id="suffix-trick"
        ),
    ],
)
def test_url_policy(url: str, policy: ImagesConfig, problem: str | None, network: Network) -> None:
    if problem is None:
        # Past every check, the fetch connects to the address the resolver gave; the test network
        # refuses it, unsent, and that is the only way it may fail.
        with pytest.raises(ImageError, match=re.escape(NOT_RETRIEVED)):
            fetch(url, policy, DNS)
        assert [address for address, _ in network.connects] == ["93.184.216.34"]
    else:
        with pytest.raises(ImageError, match=problem):
            fetch(url, policy, DNS)
        assert network.connects == []
