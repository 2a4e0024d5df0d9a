"""Golden cases: request/response pairs written from the vendors' references (tests/fixtures/), also
read through the vendor profiles (tests/vendors.py) that the hostile and cross-protocol suites use."""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests import imagegen, vendors
from tests.vendors import VendorProfile

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(FIXTURES.glob("*/*.json"))
WIDTH = 512
LONG_TEXT = " ".join(["photograph"] * 120)


def _image_bytes(spec: str) -> bytes:
    fmt = spec.split(":", 1)[1]
    seed = 2 if spec.startswith("$image2") else 1
    return imagegen.sample(fmt, seed=seed)


def substitute(value: Any, *, raw: bool = False) -> Any:
    """Replace the request placeholders ($image:FMT and friends) with real data."""
    if isinstance(value, dict):
        return {k: substitute(v, raw=raw) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, raw=raw) for v in value]
    if not isinstance(value, str) or not value.startswith("$"):
        return value
    if value == "$long_text":
        return LONG_TEXT
    kind = value.split(":", 1)[0]
    data = _image_bytes(value)
    if raw:
        return data
    if kind in ("$image", "$image2"):
        return base64.b64encode(data).decode()
    if kind == "$image_lines":
        return base64.encodebytes(data).decode()
    if kind == "$image_datauri":
        fmt = value.split(":", 1)[1]
        return f"data:image/{fmt};base64," + base64.b64encode(data).decode()
    raise AssertionError(f"unknown placeholder {value}")


def is_vector(value: Any) -> bool:
    return isinstance(value, list) and len(value) == WIDTH and all(isinstance(x, float) for x in value)


def is_unit_vector(value: Any) -> bool:
    return is_vector(value) and abs(math.sqrt(sum(x * x for x in value)) - 1) < 1e-4


def is_base64_vector(value: Any) -> bool:
    """Little-endian float32 bytes of a unit vector, base64 (OpenAI's and Cohere's base64 encoding)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (TypeError, ValueError):
        return False
    return len(raw) == WIDTH * 4 and is_unit_vector(list(struct.unpack(f"<{WIDTH}f", raw)))


def is_bytes(value: Any, low: int) -> bool:
    """A packed binary embedding: WIDTH / 8 integers from `low` to `low` + 255."""
    return (
        isinstance(value, list)
        and len(value) == WIDTH // 8
        and all(isinstance(x, int) and low <= x <= low + 255 for x in value)
    )


def match(expected: Any, actual: Any, where: str = "$") -> None:
    """Assert `actual` fits the matcher `expected` (see tests/fixtures/SOURCES.md)."""
    if isinstance(expected, str) and expected.startswith("$"):
        name, _, arg = expected.partition(":")
        checks = {
            "$vector": lambda: is_vector(actual),
            "$vectors": lambda: isinstance(actual, list) and len(actual) == int(arg) and all(map(is_vector, actual)),
            "$float": lambda: isinstance(actual, (int, float)) and not isinstance(actual, bool),
            "$float_or_null": lambda: (
                actual is None or (isinstance(actual, (int, float)) and not isinstance(actual, bool))
            ),
            "$int": lambda: isinstance(actual, int) and not isinstance(actual, bool),
            "$string": lambda: isinstance(actual, str),
            "$string_or_null": lambda: actual is None or isinstance(actual, str),
            "$message": lambda: isinstance(actual, str) and bool(actual.strip()),
            "$any": lambda: True,
            "$unit_vector": lambda: is_unit_vector(actual),
            "$unit_vectors": lambda: (
                isinstance(actual, list) and len(actual) == int(arg) and all(map(is_unit_vector, actual))
            ),
            "$base64_vector": lambda: is_base64_vector(actual),
            "$base64_vectors": lambda: (
                isinstance(actual, list) and len(actual) == int(arg) and all(map(is_base64_vector, actual))
            ),
            "$binary_vectors": lambda: (
                isinstance(actual, list) and len(actual) == int(arg) and all(is_bytes(v, -128) for v in actual)
            ),
            "$ubinary_vectors": lambda: (
                isinstance(actual, list) and len(actual) == int(arg) and all(is_bytes(v, 0) for v in actual)
            ),
        }
        assert name in checks, f"{where}: unknown matcher {expected}"
        assert checks[name](), f"{where}: {str(actual)[:200]!r} does not match {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {str(actual)[:200]!r}"
        assert set(actual) == set(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for key, value in expected.items():
            match(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {str(actual)[:200]!r}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            match(e, a, f"{where}[{i}]")
    else:
        assert actual == expected and type(actual) is type(expected), f"{where}: {actual!r} != {expected!r}"


def send(client: TestClient, request: dict[str, Any]) -> tuple[Any, Any]:
    """The response, and the JSON body that went out (None for another body)."""
    kwargs: dict[str, Any] = {"headers": request.get("headers", {}), "params": request.get("query")}
    sent = None
    if "json" in request:
        sent = substitute(request["json"])
        kwargs["content"] = json.dumps(sent).encode()
        kwargs["headers"] = {"content-type": "application/json", **kwargs["headers"]}
    elif "multipart" in request:
        files = {}
        for name, part in request["multipart"].items():
            content = part["content"]
            data = substitute(content, raw=True) if content.startswith("$") else content.encode()
            files[name] = (
                (part["filename"], data)
                if part.get("content_type") is None
                else (part["filename"], data, part["content_type"])
            )
        kwargs["files"] = files
    elif "body" in request:
        kwargs["content"] = request["body"].encode()
    # A full URL keeps a doubled slash in the path as it is.
    return client.request(request["method"], "http://testserver" + request["path"], **kwargs), sent


def expected_results(expected: Any) -> int:
    """How many vectors a fixture's response holds ($vector is one, $vectors:N is N)."""
    if isinstance(expected, str):
        name, _, count = expected.partition(":")
        if name in ("$vector", "$unit_vector", "$base64_vector"):
            return 1
        return int(count) if name in ("$vectors", "$unit_vectors", "$base64_vectors") else 0
    if isinstance(expected, dict):
        return sum(map(expected_results, expected.values()))
    if isinstance(expected, list):
        return sum(map(expected_results, expected))
    return 0


def check_through_profile(
    profile: VendorProfile, request: dict[str, Any], response: Any, sent: Any, expected: Any
) -> None:
    """The vendor profile the other suites rely on reads this vendor-derived case as the fixture does:
    an error in the vendor's shape, or the fixture's number of vectors (similarities, for a compare)."""
    endpoint = profile.endpoint_at(request["path"]) if request["method"] == "POST" else None
    if response.status_code >= 400:
        profile.assert_error(response)
    elif endpoint is not None:
        body = expected["json"]
        count = len(body["similarity"]) if endpoint.compare else expected_results(body)
        endpoint.assert_served(response, count=count, sent=sent)


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(case: Path, client: TestClient) -> None:
    profile = vendors.vendor(case.parent.name)  # a folder that names no vendor fails here
    spec = json.loads(case.read_text())
    response, sent = send(client, spec["request"])
    expected = spec["response"]
    assert response.status_code == expected["status"], response.text[:500]
    for name, value in expected.get("headers", {}).items():
        assert name in response.headers, f"missing header {name}"
        match(value, response.headers[name], f"header {name}")
    if "text" in expected:
        assert response.text == expected["text"]
    else:
        match(expected["json"], response.json())
    check_through_profile(profile, spec["request"], response, sent, expected)


def test_every_embedding_route_has_a_golden_case() -> None:
    """So the profiles' readers and error checks are each held against the vendors' references."""
    seen = set()
    for case in CASES:
        request = json.loads(case.read_text())["request"]
        endpoint = vendors.vendor(case.parent.name).endpoint_at(request["path"])
        if endpoint is not None and request["method"] == "POST":
            seen.add(str(endpoint))
    assert seen == {str(endpoint) for endpoint in vendors.endpoints()}
