"""Fetch an image by URL, when the operator allows it: scheme, host and address checks on every hop.

The defences, after Roboflow inference's fixes for GHSA-rv25-cq3f-x5f2 and GHSA-hjmm-hr52-vrp2:

- the URL is refused when it could mean two things: a backslash, whitespace or userinfo in it, or a
  host that urllib.parse, requests and urllib3 do not all read the same way;
- the host is resolved once, every address is checked, and the TCP connection goes to a checked
  address (pinned): nothing resolves the name a second time, so DNS rebinding cannot swap in
  another address between the check and the connection. https still verifies the certificate
  and sends SNI against the host name, and the request carries the original Host header;
- no proxy is ever used (a proxy would resolve the name itself);
- each redirect goes through the same checks and the same pinned connection, at most
  `url_max_redirects` times;
- the body is capped at `max_bytes` while it streams, and the whole fetch, redirects and a slow
  trickle of bytes included, has `url_timeout_s`: a watchdog shuts the socket down at the deadline.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urljoin, urlsplit

import idna
import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.response import HTTPResponse
from urllib3.util.ssl_match_hostname import CertificateError

from clipgate.config import ImagesConfig
from clipgate.errors import ImageError, PayloadTooLarge

Resolver = Callable[[str, int], list[str]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
# requests' bundle (certifi), as requests itself would use; tests point this at their own CA.
_CA_BUNDLE: str = requests.utils.DEFAULT_CA_BUNDLE_PATH
_USER_AGENT: str = requests.utils.default_user_agent()
_CHUNK = 64 * 1024

TOO_LONG = "The image URL took too long to download."
NOT_RETRIEVED = "Data pointed by URL could not be retrieved."
MALFORMED = "The image URL is malformed."


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL that passed the checks, with the addresses the connection may go to."""

    url: str  # as requests prepares it: what redirects are resolved against
    scheme: str
    host: str  # ASCII, lower case, no trailing dot, no brackets: for SNI and the certificate
    port: int
    addresses: tuple[str, ...]  # checked, in the resolver's order
    request_uri: str  # path and query
    host_header: str


def fetch(url: str, policy: ImagesConfig, resolve: Resolver = system_resolver) -> bytes:
    """Download the image at `url`, re-checking and pinning each redirect, capping the size, and giving
    the whole fetch (redirects and a slow trickle of bytes included) `url_timeout_s` to finish.

    `policy` is the [images] config section: its allow_http_url, allow_ip_hosts, allow_private_addresses,
    url_allow_hosts, url_deny_hosts, url_timeout_s, url_max_redirects and max_bytes apply here (its
    allow_url does not: whether URLs are fetched at all is the caller's to decide)."""
    with _Deadline(policy.url_timeout_s) as deadline:
        for _ in range(policy.url_max_redirects + 1):
            deadline.remaining()
            target = _check(url, policy, resolve)
            conn, response = _open(target, deadline)
            try:
                location = response.headers.get("location")
                if response.status in _REDIRECTS and location:
                    # http.client decodes headers as latin-1; servers send UTF-8 (requests does the same).
                    try:
                        location = location.encode("latin-1").decode("utf-8")
                    except UnicodeError:
                        pass
                    url = urljoin(target.url, location)
                    continue
                if response.status != 200:
                    raise ImageError(f"The image URL answered HTTP {response.status}.")
                return _read_capped(response, policy.max_bytes, deadline)
            finally:
                response.close()
                conn.close()
                deadline.unwatch()
        raise ImageError("The image URL redirected too many times.")


def _check(url: str, policy: ImagesConfig, resolve: Resolver) -> _Target:
    if "\\" in url:
        raise ImageError("The image URL contains a backslash.")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ImageError("The image URL contains whitespace or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ImageError(MALFORMED) from exc
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or (scheme == "http" and not policy.allow_http_url):
        raise ImageError(
            "Only https:// image URLs are allowed" + ("" if policy.allow_http_url else " (images.allow_http_url)") + "."
        )
    if not parts.hostname:
        raise ImageError("The image URL has no host.")
    if "@" in parts.netloc:
        raise ImageError("The image URL must not carry credentials.")
    if port == 0:
        raise ImageError(MALFORMED)
    port = port or _DEFAULT_PORTS[scheme]

    # The host the checks see must be the host the request goes to: requests prepares the URL
    # (IDNA, quoting), urllib3 parses the prepared one, and all three readings must agree.
    try:
        prepared = str(requests.Request("GET", url).prepare().url)
        again = urlsplit(prepared)
        again_port = again.port or _DEFAULT_PORTS.get(again.scheme.lower(), 0)
        parsed = urllib3.util.parse_url(prepared)
        expected = _ascii_host(parts.hostname)
    except (requests.RequestException, ValueError, UnicodeError, idna.IDNAError) as exc:
        raise ImageError(MALFORMED) from exc
    if (
        again.hostname != expected
        or (parsed.host or "").strip("[]").lower() != expected
        or again_port != port
        or (parsed.port or _DEFAULT_PORTS.get(parsed.scheme or "", 0)) != port
        or again.scheme.lower() != scheme
        or "@" in again.netloc
        or "\\" in prepared
    ):
        raise ImageError("The image URL is ambiguous: its parts read differently to different URL parsers.")

    host = expected.rstrip(".")
    literal = _ip_literal(host)
    if literal is None and not _HOST_NAME.fullmatch(host):
        raise ImageError("The image URL's host name is malformed.")
    if literal is not None and not policy.allow_ip_hosts:
        raise ImageError("Image URLs must name a host, not an IP address.")
    if literal is None and "." not in host and not policy.allow_ip_hosts:
        raise ImageError("Image URLs must name a fully qualified host.")
    if any(_host_matches(host, rule) for rule in policy.url_deny_hosts):
        raise ImageError("The image URL's host is not allowed.")
    if policy.url_allow_hosts and not any(_host_matches(host, rule) for rule in policy.url_allow_hosts):
        raise ImageError("The image URL's host is not allowed.")

    if literal is not None:
        answers = [str(literal)]
    else:
        try:
            answers = list(resolve(host, port))
        except (OSError, UnicodeError, ValueError) as exc:
            raise ImageError("The image URL's host cannot be resolved.") from exc
        if not answers:
            raise ImageError("The image URL's host cannot be resolved.")
    addresses: list[str] = []
    for answer in answers:
        address = _connectable(answer, policy)
        if address not in addresses:
            addresses.append(address)

    bracketed = f"[{host}]" if ":" in host else host
    return _Target(
        url=prepared,
        scheme=scheme,
        host=host,
        port=port,
        addresses=tuple(addresses),
        request_uri=parsed.request_uri,
        host_header=bracketed if port == _DEFAULT_PORTS[scheme] else f"{bracketed}:{port}",
    )


def _ascii_host(host: str) -> str:
    """The host as requests sends it: lower case, IDNA-encoded when it is not ASCII."""
    if host.isascii():
        return host.lower()
    return idna.encode(host, uts46=True).decode("ascii").lower()


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names directly, or None for a name. The shorthand and hex forms that
    inet_aton reads (`2130706433`, `0x7f.1`) are refused rather than guessed at."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        raise ImageError("The image URL's host is not a valid IP address.")
    return None


def _connectable(answer: str, policy: ImagesConfig) -> str:
    """The address to connect to for one resolver answer, or ImageError when it may not be used."""
    try:
        ip = ipaddress.ip_address(answer)
    except ValueError as exc:
        raise ImageError("The image URL's host resolves to something that is not an IP address.") from exc
    if ip.is_unspecified or ip.is_multicast:
        raise ImageError("The image URL's host resolves to an address that cannot be fetched from.")
    if policy.allow_private_addresses:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return answer
    if not _is_public(ip):
        raise ImageError("The image URL's host resolves to an address that is not public.")
    return str(ip)


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global unicast only: no loopback, private, link-local, CGNAT, ULA, reserved or multicast
    address, and no IPv6 address that carries an IPv4 one (mapped, compatible, NAT64, 6to4, Teredo)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id or ip.ipv4_mapped is not None or ip.teredo is not None or ip.is_site_local:
            return False
        if ip.sixtofour is not None and not _is_public(ip.sixtofour):
            return False
    return (
        ip.is_global
        and not ip.is_multicast
        and not ip.is_reserved
        and not ip.is_private
        and not ip.is_loopback
        and not ip.is_link_local
        and not ip.is_unspecified
    )


def _host_matches(host: str, rule: str) -> bool:
    rule = rule.strip().lower().rstrip(".")
    return bool(rule) and (host == rule or host.endswith("." + rule))


class _Deadline:
    """The whole fetch's time limit. Checked between steps; and a watchdog thread shuts the current
    socket down when time is up, so a read blocked on a silent or trickling server (TLS handshake
    and headers included) returns at the deadline rather than at the next socket timeout."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._timer.cancel()
        self.unwatch()

    def remaining(self) -> float:
        """Seconds left; ImageError when none are."""
        left = self._end - time.monotonic()
        if left <= 0 or self.expired:
            raise ImageError(TOO_LONG)
        return left

    def passed(self) -> bool:
        """Whether time is up (a socket timeout set to the time left can fire just before the watchdog)."""
        return self.expired or time.monotonic() >= self._end - 0.01

    def watch(self, sock: socket.socket) -> None:
        # A duplicate descriptor: shutdown() acts on the connection whichever descriptor it is called
        # through, and this one stays valid while TLS wraps (and detaches) the original.
        dup = sock.dup()
        with self._lock:
            old, self._watched = self._watched, dup
            if self.expired:
                _shutdown(dup)
        if old is not None:
            old.close()

    def unwatch(self) -> None:
        """Release the duplicate: the connection only closes once every descriptor for it is closed."""
        with self._lock:
            old, self._watched = self._watched, None
        if old is not None:
            old.close()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._watched is not None:
                _shutdown(self._watched)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _PinnedHTTPConnection(HTTPConnection):
    """Connects to the checked address it is given as `host`, under the fetch's watchdog."""

    def __init__(self, address: str, port: int, *, deadline: _Deadline, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout)
        self._deadline = deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._deadline.watch(sock)
        return sock


class _PinnedHTTPSConnection(HTTPSConnection):
    """Connects to the checked address; SNI and the certificate check use the host name."""

    def __init__(self, address: str, port: int, host: str, *, deadline: _Deadline, timeout: float) -> None:
        super().__init__(
            address,
            port,
            timeout=timeout,
            server_hostname=host,
            assert_hostname=host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=_CA_BUNDLE,
        )
        self._deadline = deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._deadline.watch(sock)
        return sock


def _open(target: _Target, deadline: _Deadline) -> tuple[HTTPConnection, HTTPResponse]:
    """Connect to the first checked address that answers, send the GET, and return the response."""
    failure: BaseException | None = None
    for address in target.addresses:
        timeout = deadline.remaining()
        conn: HTTPConnection
        if target.scheme == "https":
            conn = _PinnedHTTPSConnection(address, target.port, target.host, deadline=deadline, timeout=timeout)
        else:
            conn = _PinnedHTTPConnection(address, target.port, deadline=deadline, timeout=timeout)
        try:
            conn.connect()
        except (ssl.SSLCertVerificationError, CertificateError) as exc:
            _abandon(conn, deadline, exc)
            raise ImageError("The image URL's TLS certificate is not valid for its host.") from exc
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            _abandon(conn, deadline, exc)
            failure = exc
            continue
        break
    else:
        raise ImageError(NOT_RETRIEVED) from failure
    try:
        conn.timeout = deadline.remaining()
        headers = {
            "Host": target.host_header,
            "User-Agent": _USER_AGENT,
            "Accept": "*/*",
            "Accept-Encoding": "identity",
            "Connection": "close",
        }
        conn.request("GET", target.request_uri, headers=headers, preload_content=False, decode_content=True)
        return conn, conn.getresponse()
    except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException, ImageError) as exc:
        _abandon(conn, deadline, exc)
        if isinstance(exc, ImageError):
            raise
        raise ImageError(NOT_RETRIEVED) from exc


def _abandon(conn: HTTPConnection, deadline: _Deadline, exc: BaseException) -> None:
    conn.close()
    deadline.unwatch()
    if deadline.passed():
        raise ImageError(TOO_LONG) from exc


def _read_capped(response: HTTPResponse, limit: int, deadline: _Deadline) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The image at the URL is larger than {limit} bytes.")
    # read1 returns whatever has arrived, so a server that trickles bytes meets the deadline
    # (a plain read waits for its whole chunk before the clock is looked at again).
    chunks, total = [], 0
    try:
        while True:
            deadline.remaining()
            chunk = response.read1(_CHUNK, decode_content=True)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"The image at the URL is larger than {limit} bytes.")
            chunks.append(chunk)
    except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException) as exc:
        raise ImageError(TOO_LONG if deadline.passed() else NOT_RETRIEVED) from exc
    if deadline.expired:  # the watchdog's shutdown can read as a clean end of a body with no length
        raise ImageError(TOO_LONG)
    return b"".join(chunks)
