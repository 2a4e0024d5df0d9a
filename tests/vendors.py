"""What the tests know about each vendor's wire format, written once: one `VendorProfile` per protocol,
shared by the hostile, golden and cross-protocol suites.

A profile knows its vendor's embedding endpoints (the path, a valid body with an image or with texts,
how to read the vectors or similarities out of a 200) and its error shape (the body and the headers
of a refusal). `vendor(name)` raises for a name it does not know: nothing falls through to another
vendor's assertions. The shapes come from the vendors' references (tests/fixtures/SOURCES.md), and
tests/test_golden.py checks every profile against those fixtures.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests import imagegen

DIM = 512
PROJECT, ENDPOINT = "p", "e"  # the {project}/{endpoint} of SambaStudio's paths
PATH_PARAMS = {"project": PROJECT, "endpoint": ENDPOINT, "deployment": "clip"}  # and Azure OpenAI's {deployment}
TEXT = "a photo of a cat"
TINY_JPEG = imagegen.jpeg(seed=5, width=32, height=24)


class Response(Protocol):
    """What the checks read of a response: httpx's (TestClient) and requests' both fit."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


def shown(response: Response) -> str:
    return f"HTTP {response.status_code} {response.headers.get('content-type')!r} {response.text[:400]!r}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64_lines(data: bytes) -> str:
    """Base64 broken into 76-character lines, as Python's `base64.encodebytes` writes it."""
    return base64.encodebytes(data).decode("ascii")


def assert_vector(value: Any, what: str = "vector") -> list[float]:
    assert isinstance(value, list) and len(value) == DIM, f"{what}: not a list of {DIM}: {str(value)[:200]!r}"
    assert all(isinstance(x, float) and math.isfinite(x) for x in value), f"{what}: not all finite floats"
    return value


# --- one endpoint ------------------------------------------------------------------------------------------


Reader = Callable[[Any, Any], list[Any]]  # (the 200 body, the JSON body sent or None) -> its results in order


@dataclass(frozen=True)
class Endpoint:
    """One embedding route of a vendor, as that vendor's clients call it."""

    vendor: str
    name: str
    template: str  # the path as the adapter declares it
    read: Reader  # the vectors of a 200 body (the similarities, for a compare), in input order
    image_body: Callable[[str], Any] | None = None  # a JSON body holding one image, given as this string
    text_body: Callable[[list[str]], Any] | None = None  # a JSON body holding these texts
    file_field: str | None = None  # a multipart route: the form field that holds the image
    encode: Callable[[bytes], str] = b64  # how this vendor's clients put image bytes in JSON
    compare: bool = False  # answers similarities, not vectors
    unit: bool = False  # answers unit-length vectors: the raw ones' direction (OpenAI, Cohere)

    def __str__(self) -> str:
        return f"{self.vendor} {self.name}"

    @property
    def path(self) -> str:
        return self.template.format_map(PATH_PARAMS)

    def matches(self, path: str) -> bool:
        """Whether a request path (any project and endpoint; doubled slashes allowed) is this route."""
        pattern = "/+".join(re.escape(part) for part in self.template.split("/"))
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", pattern)
        return re.fullmatch(pattern, path) is not None

    @property
    def takes_images(self) -> bool:
        return self.image_body is not None or self.file_field is not None

    @property
    def takes_texts(self) -> bool:
        return self.text_body is not None

    def image_call(self, data: bytes, *, filename: str = "image.jpg", mime: str = "image/jpeg") -> dict[str, Any]:
        """Request keywords (httpx or requests) for one image: a multipart file, or JSON."""
        if self.file_field is not None:
            return {"files": {self.file_field: (filename, data, mime)}}
        assert self.image_body is not None, f"{self} takes no image"
        return {"json": self.image_body(self.encode(data))}

    def text_call(self, texts: list[str]) -> dict[str, Any]:
        assert self.text_body is not None, f"{self} takes no text"
        return {"json": self.text_body(texts)}

    def valid_call(self) -> dict[str, Any]:
        """A small request this route serves: a text where it takes text, else a tiny JPEG."""
        return self.text_call([TEXT]) if self.takes_texts else self.image_call(TINY_JPEG)

    def vectors(self, payload: Any, sent: Any = None) -> list[list[float]]:
        """The embeddings of a 200 body, each checked to be DIM finite floats. With `sent`, the
        JSON body of the request, whatever the response echoes of it is checked too."""
        assert not self.compare, f"{self} answers similarities, not vectors"
        return [assert_vector(v, f"{self} vector {i}") for i, v in enumerate(self.read(payload, sent))]

    def similarities(self, payload: Any) -> list[float]:
        assert self.compare, f"{self} answers vectors, not similarities"
        scores = self.read(payload, None)
        for score in scores:
            assert isinstance(score, float) and -1.0001 <= score <= 1.0001, f"{self}: similarity {score!r}"
        return scores

    def results(self, payload: Any, sent: Any = None) -> list[Any]:
        """The vectors, or for a compare the similarities, of a 200 body, checked."""
        return self.similarities(payload) if self.compare else self.vectors(payload, sent)

    def result(self, payload: Any) -> list[float]:
        """The numbers to compare two answers by: all the similarities, else the first vector."""
        return list(self.similarities(payload)) if self.compare else list(self.vectors(payload)[0])

    def assert_served(self, response: Response, count: int | None = None, sent: Any = None) -> list[Any]:
        """A 200 whose body reads as this route's results (`count` of them, when given)."""
        assert response.status_code == 200, f"{self} not served: {shown(response)}"
        results = self.results(response.json(), sent)
        assert results, f"{self}: a 200 with no results: {shown(response)}"
        if count is not None:
            assert len(results) == count, f"{self}: {len(results)} results, expected {count}"
        return results


# --- one vendor --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VendorProfile:
    name: str
    endpoints: tuple[Endpoint, ...]
    check_error_body: Callable[[int, Any], str | None]  # (status, body) -> what is wrong with it, or None
    auth_headers: Callable[[str], dict[str, str]]  # how this vendor's clients send a key
    error_headers: Mapping[str, str] = field(default_factory=dict)  # headers every error carries
    answers_422: bool = False  # FastAPI's validation status; the others answer 400 for a bad body

    def __str__(self) -> str:
        return self.name

    def endpoint(self, name: str) -> Endpoint:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        known = ", ".join(e.name for e in self.endpoints)
        raise KeyError(f"{self.name} has no endpoint named {name!r}; it has: {known}")

    def endpoint_at(self, path: str) -> Endpoint | None:
        """The embedding endpoint a request path goes to; None for another route (probes, info)."""
        found = [e for e in self.endpoints if e.matches(path)]
        assert len(found) <= 1, f"{path} matches {[str(e) for e in found]}"
        return found[0] if found else None

    def assert_error(self, response: Response) -> None:
        """A refusal in this vendor's shape: a JSON body of the vendor's form, and its headers."""
        status = response.status_code
        assert status >= 400, f"not an error: {shown(response)}"
        assert response.headers.get("content-type", "").startswith("application/json"), shown(response)
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(f"{self.name}: error body is not JSON: {shown(response)}") from None
        assert isinstance(body, dict), f"{self.name}: error body is not an object: {shown(response)}"
        problem = self.check_error_body(status, body)
        assert problem is None, f"{self.name} error shape: {problem}: {shown(response)}"
        for name, value in self.error_headers.items():
            assert response.headers.get(name) == value, (
                f"{self.name}: header {name} is not {value!r}: {shown(response)}"
            )
        if not self.answers_422:
            assert status != 422, f"{self.name} answers 400, not FastAPI's 422: {shown(response)}"


def _message(body: dict[str, Any]) -> str | None:
    message = body.get("message")
    return None if isinstance(message, str) and message.strip() else "no non-empty string message"


def _roboflow_error(status: int, body: dict[str, Any]) -> str | None:
    if "detail" in body:  # FastAPI's validation error, kept for Roboflow's body errors
        if status != 422 or set(body) != {"detail"}:
            return "a detail body is FastAPI's 422 {detail} alone"
        detail = body["detail"]
        if not isinstance(detail, list) or not detail:
            return "detail is not a non-empty list"
        for entry in detail:
            if not isinstance(entry, dict) or not {"type", "loc", "msg"} <= set(entry):
                return f"detail entry {entry!r} lacks type, loc, msg"
            if not isinstance(entry["type"], str) or not isinstance(entry["loc"], list):
                return f"detail entry {entry!r}: type is not a string or loc not a list"
            if not isinstance(entry["msg"], str) or not entry["msg"]:
                return f"detail entry {entry!r}: empty msg"
        return None
    if set(body) == {"status", "message"}:  # inference's 401
        return _message(body) if status == 401 and body["status"] == 401 else "{status, message} is for 401 alone"
    if set(body) != {"message"}:
        return f"keys {sorted(body)}, expected message"
    return _message(body)


def _sambastudio_error(status: int, body: dict[str, Any]) -> str | None:
    if set(body) != {"error", "status_code"}:
        return f"keys {sorted(body)}, expected error and status_code"
    if not isinstance(body["error"], str) or not body["error"].strip():
        return "error is not a non-empty string"
    if body["status_code"] != status or isinstance(body["status_code"], bool):
        return f"status_code {body['status_code']!r} is not the HTTP status {status}"
    return None


def _azureml_error(status: int, body: dict[str, Any]) -> str | None:
    if set(body) != {"message"}:
        return f"keys {sorted(body)}, expected message"
    return _message(body)


def _openai_error(status: int, body: dict[str, Any]) -> str | None:
    if set(body) != {"error"} or not isinstance(body["error"], dict):
        return f"keys {sorted(body)}, expected error"
    error = body["error"]
    if set(error) != {"message", "type", "param", "code"}:
        return f"error keys {sorted(error)}, expected message, type, param, code"
    if not isinstance(error["type"], str) or not all(
        error[k] is None or isinstance(error[k], str) for k in ("param", "code")
    ):
        return "type is not a string, or param or code not a string or null"
    return _message(error)


def _cohere_error(status: int, body: dict[str, Any]) -> str | None:
    if set(body) != {"id", "message"}:
        return f"keys {sorted(body)}, expected id and message"
    if not isinstance(body["id"], str) or not body["id"]:
        return "id is not a non-empty string"
    return _message(body)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- the readers ---------------------------------------------------------------------------------------------


def _field(name: str) -> Reader:
    def read(payload: Any, sent: Any) -> list[Any]:
        assert isinstance(payload, dict) and isinstance(payload.get(name), list), f"no {name} list: {payload!r:.200}"
        return list(payload[name])

    return read


def _data(payload: Any, sent: Any) -> list[Any]:
    vectors = _field("data")(payload, sent)
    assert payload.get("status_code") == 200, f"data without status_code 200: {sorted(payload)}"
    return vectors


def _items(payload: Any, sent: Any) -> list[Any]:
    items = _field("items")(payload, sent)
    for item in items:
        assert isinstance(item, dict) and set(item) == {"id", "value"}, f"item {item!r:.200}"
        assert isinstance(item["id"], str), f"item id {item['id']!r}"
    if isinstance(sent, dict) and isinstance(sent.get("items"), list):
        asked = [item.get("id", str(i)) for i, item in enumerate(sent["items"])]
        assert [item["id"] for item in items] == asked, "the items do not echo the ids sent"
    return [item["value"] for item in items]


def _similarity(payload: Any, sent: Any) -> list[Any]:
    assert isinstance(payload, dict) and "similarity" in payload, f"no similarity: {payload!r:.200}"
    similarity = payload["similarity"]
    if isinstance(similarity, dict):  # a prompt given as a dict is answered by its keys
        return list(similarity.values())
    assert isinstance(similarity, list), f"similarity is {similarity!r:.200}"
    return list(similarity)


def _rows(payload: Any, sent: Any) -> list[Any]:
    """Azure's rows: each with image_features, text_features or both, read in that order."""
    assert isinstance(payload, list), f"not a list of rows: {payload!r:.200}"
    vectors: list[Any] = []
    for row in payload:
        assert isinstance(row, dict) and row and set(row) <= {"image_features", "text_features"}, f"row {row!r:.200}"
        vectors += [row[key] for key in ("image_features", "text_features") if key in row]
    return vectors


def _float32s(value: Any) -> list[float]:
    """A base64 embedding (little-endian float32, as OpenAI's and Cohere's clients decode it) as floats."""
    assert isinstance(value, str), f"not a base64 string: {value!r:.100}"
    raw = base64.b64decode(value, validate=True)
    assert len(raw) % 4 == 0, f"{len(raw)} bytes is not a whole number of float32s"
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _openai_data(payload: Any, sent: Any) -> list[Any]:
    assert isinstance(payload, dict) and payload.get("object") == "list", f"not an embedding list: {payload!r:.200}"
    assert isinstance(payload.get("model"), str) and isinstance(payload.get("usage"), dict), f"{sorted(payload)}"
    rows = _field("data")(payload, sent)
    vectors: list[Any] = []
    for i, row in enumerate(rows):
        assert isinstance(row, dict) and row.get("object") == "embedding" and row.get("index") == i, f"row {row!r:.200}"
        value = row.get("embedding")
        vectors.append(_float32s(value) if isinstance(value, str) else value)
    return vectors


def _cohere_embeddings(payload: Any, sent: Any) -> list[Any]:
    """The float vectors of a Cohere answer: `embeddings` itself (v1 floats), or by type its float
    vectors, then its base64 ones decoded."""
    assert isinstance(payload, dict) and isinstance(payload.get("id"), str), f"no id: {payload!r:.200}"
    embeddings = payload.get("embeddings")
    if isinstance(sent, dict) and isinstance(sent.get("texts"), list):
        assert payload.get("texts") == sent["texts"], "the answer does not echo the texts sent"
    if payload.get("response_type") == "embeddings_floats":
        assert isinstance(embeddings, list), f"embeddings_floats without a list: {payload!r:.200}"
        return list(embeddings)
    assert payload.get("response_type") == "embeddings_by_type" and isinstance(embeddings, dict), f"{payload!r:.200}"
    return list(embeddings.get("float", [])) + [_float32s(v) for v in embeddings.get("base64", [])]


def _data_uri(data: bytes) -> str:
    """Image bytes as the data URI these vendors' clients send: data:image/<format>;base64,<data>."""
    kinds = {b"\x89PNG": "png", b"\xff\xd8": "jpeg", b"GIF8": "gif", b"RIFF": "webp", b"BM": "bmp"}
    kind = next((name for magic, name in kinds.items() if data.startswith(magic)), "png")
    return f"data:image/{kind};base64,{b64(data)}"


def _rf_image(value: str) -> dict[str, str]:
    return {"type": "base64", "value": value}


def _table(rows: list[list[str]]) -> dict[str, Any]:
    return {"input_data": {"columns": ["image", "text"], "index": list(range(len(rows))), "data": rows}}


# --- the profiles ----------------------------------------------------------------------------------------


ROBOFLOW = VendorProfile(
    name="roboflow",
    endpoints=(
        Endpoint(
            "roboflow",
            "embed_image",
            "/clip/embed_image",
            _field("embeddings"),
            image_body=lambda v: {"image": _rf_image(v)},
        ),
        Endpoint("roboflow", "embed_text", "/clip/embed_text", _field("embeddings"), text_body=lambda ts: {"text": ts}),
        Endpoint(
            "roboflow",
            "compare",
            "/clip/compare",
            _similarity,
            image_body=lambda v: {"subject": _rf_image(v), "prompt": [TEXT]},
            text_body=lambda ts: {"subject": _rf_image(b64(TINY_JPEG)), "prompt": ts},
            compare=True,
        ),
    ),
    check_error_body=_roboflow_error,
    auth_headers=_bearer,
    answers_422=True,
)

SAMBASTUDIO = VendorProfile(
    name="sambastudio",
    endpoints=(
        Endpoint("sambastudio", "file", "/api/predict/file/{project}/{endpoint}", _data, file_field="predict_file"),
        Endpoint(
            "sambastudio", "nlp", "/api/predict/nlp/{project}/{endpoint}", _data, text_body=lambda ts: {"inputs": ts}
        ),
        Endpoint(
            "sambastudio",
            "generic",
            "/api/predict/generic/{project}/{endpoint}",
            _field("predictions"),
            text_body=lambda ts: {"instances": ts, "params": {}},
        ),
        Endpoint(
            "sambastudio",
            "generic-v2",
            "/api/v2/predict/generic/{project}/{endpoint}",
            _items,
            text_body=lambda ts: {"items": [{"id": f"item{n}", "value": t} for n, t in enumerate(ts)], "params": {}},
        ),
    ),
    check_error_body=_sambastudio_error,
    auth_headers=lambda key: {"key": key},
)

AZUREML = VendorProfile(
    name="azureml",
    endpoints=(
        Endpoint(
            "azureml",
            "score",
            "/score",
            _rows,
            image_body=lambda v: _table([[v, ""]]),
            text_body=lambda ts: _table([["", t] for t in ts]),
            encode=b64_lines,  # the model's sample client sends base64.encodebytes (prepare_data.py)
        ),
    ),
    check_error_body=_azureml_error,
    auth_headers=_bearer,
    error_headers={"x-ms-run-function-failed": "True"},
)


def _openai(name: str, template: str) -> Endpoint:
    return Endpoint(
        "openai",
        name,
        template,
        _openai_data,
        image_body=lambda v: {"model": "clip", "input": [{"type": "image_url", "image_url": {"url": v}}]},
        text_body=lambda ts: {"model": "clip", "input": ts},
        encode=_data_uri,
        unit=True,
    )


OPENAI = VendorProfile(
    name="openai",
    endpoints=(
        _openai("embeddings", "/v1/embeddings"),
        _openai("embeddings-no-v1", "/embeddings"),  # a base URL written without /v1
        _openai("kserve", "/openai/v1/embeddings"),
        _openai("azure", "/openai/deployments/{deployment}/embeddings"),
    ),
    check_error_body=_openai_error,
    auth_headers=_bearer,
)

COHERE = VendorProfile(
    name="cohere",
    endpoints=(
        Endpoint(
            "cohere",
            "v2",
            "/v2/embed",
            _cohere_embeddings,
            image_body=lambda v: {"model": "embed-v4.0", "input_type": "image", "images": [v]},
            text_body=lambda ts: {"model": "embed-v4.0", "input_type": "search_document", "texts": ts},
            encode=_data_uri,
            unit=True,
        ),
        Endpoint(
            "cohere",
            "v1",
            "/v1/embed",
            _cohere_embeddings,
            image_body=lambda v: {"model": "embed-english-v3.0", "input_type": "image", "images": [v]},
            text_body=lambda ts: {"model": "embed-english-v3.0", "input_type": "search_document", "texts": ts},
            encode=_data_uri,
            unit=True,
        ),
    ),
    check_error_body=_cohere_error,
    auth_headers=_bearer,
)

PROFILES: dict[str, VendorProfile] = {p.name: p for p in (ROBOFLOW, SAMBASTUDIO, AZUREML, OPENAI, COHERE)}


def vendor(name: str) -> VendorProfile:
    """The profile of a vendor protocol, by its adapter's name. An unknown name raises."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"no vendor profile named {name!r}; the profiles are: {', '.join(PROFILES)}") from None


def endpoints() -> list[Endpoint]:
    """Every vendor's embedding endpoints."""
    return [endpoint for profile in PROFILES.values() for endpoint in profile.endpoints]
