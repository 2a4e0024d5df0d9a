"""The vendor profiles the hostile, golden and cross-protocol suites share (tests/vendors.py): one per
registered protocol, covering its embedding routes, each profile's error check refusing the other
vendors' shapes, and an unknown vendor raising rather than passing for another."""

from __future__ import annotations

import httpx
import pytest
from starlette.testclient import TestClient

import adapters
from tests import vendors
from tests.vendors import PROFILES, TINY_JPEG, Endpoint, VendorProfile

ERRORS: dict[str, httpx.Response] = {
    "roboflow": httpx.Response(400, json={"message": "Could not load input image."}),
    "roboflow-422": httpx.Response(422, json={"detail": [{"type": "missing", "loc": ["body", "text"], "msg": "x"}]}),
    "sambastudio": httpx.Response(400, json={"error": "inputs is empty", "status_code": 400}),
    "azureml": httpx.Response(
        400, json={"message": "POST body should be a JSON dictionary."}, headers={"x-ms-run-function-failed": "True"}
    ),
    "openai": httpx.Response(
        400, json={"error": {"message": "x", "type": "invalid_request_error", "param": "input", "code": None}}
    ),
    "cohere": httpx.Response(400, json={"id": "5d5b0e8e", "message": "invalid request: x"}),
}
# Which profile takes which error: Roboflow's {message} body is Azure's too; Azure's header tells them apart.
ACCEPTS = {
    "roboflow": {"roboflow", "roboflow-422", "azureml"},
    "sambastudio": {"sambastudio"},
    "azureml": {"azureml"},
    "openai": {"openai"},
    "cohere": {"cohere"},
}


def test_there_is_a_profile_for_each_registered_protocol() -> None:
    assert set(PROFILES) == set(adapters.REGISTRY)


@pytest.mark.parametrize("profile", PROFILES.values(), ids=str)
def test_a_profile_knows_every_embedding_route_of_its_adapter(profile: VendorProfile) -> None:
    adapter = adapters.REGISTRY[profile.name]
    embedding_paths = {op.path for op in adapter.operations if op.parse is not None}
    assert {e.template for e in profile.endpoints} == embedding_paths
    for endpoint in profile.endpoints:
        assert profile.endpoint_at(endpoint.path) is endpoint
        assert endpoint.takes_images or endpoint.takes_texts, endpoint


def test_an_unknown_vendor_raises() -> None:
    with pytest.raises(KeyError, match="no vendor profile named 'bedrock'; the profiles are: roboflow"):
        vendors.vendor("bedrock")
    with pytest.raises(KeyError, match="sambastudio has no endpoint named 'score'"):
        vendors.SAMBASTUDIO.endpoint("score")


@pytest.mark.parametrize("profile", PROFILES.values(), ids=str)
def test_the_error_checks_tell_the_vendors_apart(profile: VendorProfile) -> None:
    for name, response in ERRORS.items():
        if name in ACCEPTS[profile.name]:
            profile.assert_error(response)
        else:
            with pytest.raises(AssertionError):
                profile.assert_error(response)


def test_sambastudio_errors_carry_their_own_status() -> None:
    check = vendors.SAMBASTUDIO.check_error_body
    assert check(413, {"error": "too large", "status_code": 413}) is None
    assert check(413, {"error": "too large", "status_code": 400}) is not None


@pytest.mark.parametrize("endpoint", vendors.endpoints(), ids=str)
def test_each_endpoint_serves_its_valid_call(client: TestClient, endpoint: Endpoint) -> None:
    call = endpoint.valid_call()
    endpoint.assert_served(client.post(endpoint.path, **call), count=1, sent=call.get("json"))
    if endpoint.takes_images:
        call = endpoint.image_call(TINY_JPEG)
        endpoint.assert_served(client.post(endpoint.path, **call), count=1, sent=call.get("json"))


def test_a_reader_refuses_another_routes_answer(client: TestClient) -> None:
    nlp, generic = vendors.SAMBASTUDIO.endpoint("nlp"), vendors.SAMBASTUDIO.endpoint("generic")
    payload = client.post(nlp.path, **nlp.valid_call()).json()
    assert len(nlp.vectors(payload)) == 1
    with pytest.raises(AssertionError, match="no predictions list"):
        generic.vectors(payload)
