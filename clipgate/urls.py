"""Fetch an image by URL, when the operator allows it: scheme, host and address checks on every hop."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from clipgate.errors import ImageError, PayloadTooLarge

Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    allow_http: bool = False
    allow_ip_hosts: bool = False
    allow_private_addresses: bool = False
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    timeout_s: float = 10.0
    max_redirects: int = 5
    max_bytes: int = 20 * 1024 * 1024


def check_url(url: str, policy: UrlPolicy, resolve: Resolver = system_resolver) -> None:
    """Raise ImageError unless `url` may be fetched under `policy`."""
    if "\\" in url:
        raise ImageError("The image URL contains a backslash.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ImageError("The image URL is malformed.") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or (scheme == "http" and not policy.allow_http):
        raise ImageError(
            "Only https:// image URLs are allowed" + ("" if policy.allow_http else " (images.allow_http_url)") + "."
        )
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ImageError("The image URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise ImageError("The image URL must not carry credentials.")
    is_ip = _is_ip(host)
    if is_ip and not policy.allow_ip_hosts:
        raise ImageError("Image URLs must name a host, not an IP address.")
    if not is_ip and "." not in host and not policy.allow_ip_hosts:
        raise ImageError("Image URLs must name a fully qualified host.")
    if any(_host_matches(host, rule) for rule in policy.deny_hosts):
        raise ImageError("The image URL's host is not allowed.")
    if policy.allow_hosts and not any(_host_matches(host, rule) for rule in policy.allow_hosts):
        raise ImageError("The image URL's host is not allowed.")
    if not policy.allow_private_addresses:
        try:
            addresses = resolve(host, port or (443 if scheme == "https" else 80))
        except OSError as exc:
            raise ImageError("The image URL's host cannot be resolved.") from exc
        if not addresses or not all(_is_global(a) for a in addresses):
            raise ImageError("The image URL's host resolves to an address that is not public.")


def fetch(url: str, policy: UrlPolicy, resolve: Resolver = system_resolver) -> bytes:
    """Download the image at `url`, re-checking each redirect, capping the size, and giving the
    whole fetch (redirects and a slow trickle of bytes included) `timeout_s` to finish."""
    deadline = time.monotonic() + policy.timeout_s
    session = requests.Session()
    session.trust_env = False  # a proxy would resolve the host itself and defeat the checks
    try:
        for _ in range(policy.max_redirects + 1):
            if time.monotonic() > deadline:
                raise ImageError("The image URL took too long to download.")
            check_url(url, policy, resolve)
            try:
                response = session.get(url, timeout=policy.timeout_s, allow_redirects=False, stream=True)
            except requests.RequestException as exc:
                raise ImageError("Data pointed by URL could not be retrieved.") from exc
            with response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise ImageError(f"The image URL answered HTTP {response.status_code}.")
                return _read_capped(response, policy.max_bytes, deadline)
        raise ImageError("The image URL redirected too many times.")
    finally:
        session.close()


def _read_capped(response: requests.Response, limit: int, deadline: float) -> bytes:
    # read1 returns whatever has arrived, so a server that trickles bytes meets the deadline
    # (a plain read waits for its whole chunk before the clock is looked at again).
    chunks, total = [], 0
    try:
        while chunk := response.raw.read1(64 * 1024, decode_content=True):
            if time.monotonic() > deadline:
                raise ImageError("The image URL took too long to download.")
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"The image at the URL is larger than {limit} bytes.")
            chunks.append(chunk)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ImageError("Data pointed by URL could not be retrieved.") from exc
    return b"".join(chunks)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _is_global(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _host_matches(host: str, rule: str) -> bool:
    rule = rule.strip().lower().rstrip(".")
    return bool(rule) and (host == rule or host.endswith("." + rule))
