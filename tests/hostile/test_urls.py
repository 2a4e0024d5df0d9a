"""URLs and other remote or server-side sources: refused with URL input off (the default), with no
attempt to reach the network, which the guard in conftest.py would record."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.engine import Model
from tests.conftest import make_config
from tests.hostile import inputs as h
from tests.hostile.checks import assert_serves_after, assert_unharmed, check_case, send
from tests.hostile.routes import (
    BY_NAME,
    IMAGE_ERRORS,
    ROBOFLOW_ROUTES,
    TINY_B64,
    URL_ROUTES,
    Case,
    Route,
    cases,
    params,
    route_params,
)
from tests.vendors import shown

URLS: list[tuple[str, str]] = [
    ("file-etc-passwd", "file:///etc/passwd"),
    ("http-loopback", "http://127.0.0.1/cat.jpg"),
    ("https-loopback-own-port", "https://127.0.0.1:8000/readiness"),
    ("cloud-metadata", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
    ("backslash-userinfo", "https://localhost:6666\\@example.com/cat.jpg"),
    ("data-url-as-url", "data:image/jpeg;base64," + TINY_B64),
    ("https-public-host", "https://example.com/cat.jpg"),
    ("https-localhost", "https://localhost/cat.jpg"),
    ("ipv6-loopback", "http://[::1]/cat.jpg"),
    ("ipv4-mapped-ipv6", "https://[::ffff:127.0.0.1]/cat.jpg"),
    ("decimal-ip", "http://2130706433/cat.jpg"),
    ("credentials-in-url", "https://user:pass@example.com/cat.jpg"),
    ("gopher", "gopher://127.0.0.1:6379/_INFO"),
    ("ftp", "ftp://example.com/cat.jpg"),
    ("gcp-metadata", "http://metadata.google.internal/computeMetadata/v1/"),
    ("protocol-relative", "//example.com/cat.jpg"),
    ("dns-rebinding-style", "https://127.0.0.1.nip.io/cat.jpg"),
]


def _in_url_slot(route: Route, url: str) -> dict[str, Any]:
    assert route.url is not None
    return {"json": route.url(url)}


# In a base64 slot (Azure's image column, compare's bare subject) a data: URI is base64 with a
# prefix, decoded locally by design: see test_data_uri_in_a_base64_slot_is_decoded_locally.
URL_CASES = [
    case
    for case in cases(URL_ROUTES, URLS, _in_url_slot, IMAGE_ERRORS)
    if not (case.name == "data-url-as-url" and case.route.name in ("az-score", "rf-compare-bare-subject"))
]


@pytest.mark.parametrize("case", params(URL_CASES))
def test_url_input_is_refused_without_network_access(
    gateway: TestClient, network_attempts: list[str], case: Case
) -> None:
    check_case(gateway, case)
    assert network_attempts == []


@pytest.mark.parametrize("route", route_params(URL_ROUTES))
def test_urls_then_still_serves(fresh_gateway: TestClient, network_attempts: list[str], route: Route) -> None:
    assert_serves_after(fresh_gateway, route, URL_CASES)
    assert network_attempts == []


def test_the_network_guard_sees_an_attempt(model: Model, network_attempts: list[str]) -> None:
    """With URLs turned on, the server does reach for the network, and the guard records it: so
    an empty record in the tests above means no attempt was made, not that none was seen."""
    config = make_config(images={"allow_url": True})
    with TestClient(create_app(config, model), raise_server_exceptions=False) as client:
        route = BY_NAME["rf-embed_image"]
        response, _ = send(client, route, _in_url_slot(route, "https://example.com/cat.jpg"))
    assert 400 <= response.status_code < 500, shown(response)
    assert network_attempts, "the guard saw nothing"
    network_attempts.clear()


@pytest.mark.parametrize("name", ["rf-embed_image", "rf-compare-bare-subject", "az-score"])
def test_data_uri_in_a_base64_slot_is_decoded_locally(
    gateway: TestClient, network_attempts: list[str], name: str
) -> None:
    route = BY_NAME[name]
    assert route.image is not None
    plain, _ = send(gateway, route, {"json": route.image(TINY_B64)})
    uri, _ = send(gateway, route, {"json": route.image("data:image/jpeg;base64," + TINY_B64)})
    assert plain.status_code == 200 and uri.status_code == 200, shown(uri)
    endpoint = route.endpoint
    assert endpoint.result(uri.json()) == pytest.approx(endpoint.result(plain.json()), abs=1e-5)
    assert network_attempts == []
    assert_unharmed(gateway)


REFUSED_TYPES: list[tuple[str, dict[str, Any]]] = [
    ("file-etc-passwd", {"type": "file", "value": "/etc/passwd"}),
    ("file-relative", {"type": "file", "value": "../../../../etc/shadow"}),
    ("numpy-pickle", {"type": "numpy", "value": h.b64(h.PYTHON_PICKLE)}),
    ("numpy-object", {"type": "numpy_object", "value": "x"}),
    ("pil", {"type": "pil", "value": "x"}),
    ("multipart", {"type": "multipart", "value": "x"}),
    ("unknown-s3", {"type": "s3", "value": "s3://bucket/cat.jpg"}),
    ("type-case-file", {"type": "FILE", "value": "/etc/passwd"}),
]


def _typed_image(route: Route, image: dict[str, Any]) -> dict[str, Any]:
    body = {
        "rf-embed_image": {"image": image},
        "rf-compare": {"subject": image, "prompt": ["a cat"]},
        "rf-compare-image-prompts": {"subject": "a", "subject_type": "text", "prompt": [image], "prompt_type": "image"},
    }[route.name]
    return {"json": body}


REFUSED_TYPE_CASES = cases(
    [BY_NAME["rf-embed_image"], BY_NAME["rf-compare"], BY_NAME["rf-compare-image-prompts"]],
    REFUSED_TYPES,
    _typed_image,
    IMAGE_ERRORS,
)


@pytest.mark.parametrize("case", params(REFUSED_TYPE_CASES))
def test_roboflow_server_side_and_pickle_types_are_refused(gateway: TestClient, case: Case) -> None:
    response = check_case(gateway, case)
    assert "root:" not in response.text  # nothing of /etc/passwd comes back


@pytest.mark.parametrize("route", route_params(ROBOFLOW_ROUTES))
def test_refused_types_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, REFUSED_TYPE_CASES)
