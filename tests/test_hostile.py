"""Hostile input against every embedding route: each case must be refused with a 4xx in the vendor's
error shape, without a traceback or an internal repr, within a time bound and with no network access.
After each group of cases a `*_then_still_serves` test sends a valid request on the same client and
expects 200 with a 512-float embedding. Bombs, body limits and multipart cases check this after
every single case."""

from __future__ import annotations

import copy
import math
import random
import re
import resource
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from clipgate.app import create_app
from clipgate.engine import Model
from tests import hostile_inputs as h
from tests import imagegen
from tests.conftest import make_config

TIME_LIMIT_S = 5.0
MAX_ERROR_BODY_BYTES = 16 * 1024  # an error never reflects a large input back
MAX_RSS_GROWTH_MB = 256  # a 20000x20000 bomb decoded as grey alone would be 400 MB
DIM = 512
SMALL_BODY_LIMIT = 4096

DEFAULTS = make_config()
MAX_IMAGES = DEFAULTS.server.max_images
MAX_TEXTS = DEFAULTS.server.max_texts
MAX_TEXT_CHARS = DEFAULTS.server.max_text_chars
MAX_IMAGE_BYTES = DEFAULTS.images.max_bytes

TINY_JPEG = h.tiny_jpeg()
TINY_PNG = h.tiny_png()
TINY_B64 = h.b64(TINY_JPEG)
MARK = "__HOSTILE_MARK__"

IMAGE_ERRORS = frozenset({400})
BOMB = frozenset({400, 413})
FORMAT_REFUSED = frozenset({400, 415})
SCHEMA = frozenset({400, 404, 422})
BODY = frozenset({400, 422})
NESTING = frozenset({400, 413, 422})
TOO_MANY = frozenset({413})
CONTENT_TYPE = frozenset({400, 415, 422})

# What a response must never carry: tracebacks, reprs, module paths, exception class names.
LEAK = re.compile(
    r"Traceback|File \"|site-packages|object at 0x|<class '|<function |<bound method|<module "
    r"|\b(?:clipgate|adapters|PIL|orjson|python_multipart|starlette|requests|urllib3|torch|numpy)\.[A-Za-z_]"
    r"|\b[A-Za-z_]+(?:Error|Exception)\b|ImageFile\b|ImagePlugin\b|b'\\x|b\"\\x|/work/|/usr/lib|/home/|/tmp/"
)


# --- the routes ------------------------------------------------------------------------------


def _rf_image(value: Any) -> dict[str, Any]:
    return {"type": "base64", "value": value}


def _azure(rows: list[list[Any]]) -> dict[str, Any]:
    return {"input_data": {"columns": ["image", "text"], "index": list(range(len(rows))), "data": rows}}


@dataclass(frozen=True)
class Route:
    """One embedding route and how to put a hostile value in each of its slots."""

    name: str
    vendor: str  # roboflow | sambastudio | azureml
    path: str
    primary: Callable[[Any], Any] | None = None  # the body with `value` in the route's main field
    image: Callable[[str], Any] | None = None  # the body with one image given as this string
    images: Callable[[list[str]], Any] | None = None
    url: Callable[[str], Any] | None = None
    texts: Callable[[list[Any]], Any] | None = None
    multipart: bool = False
    compare: bool = False

    def __str__(self) -> str:
        return self.name


ROUTES = [
    Route(
        "rf-embed_image",
        "roboflow",
        "/clip/embed_image",
        primary=lambda v: {"image": v},
        image=lambda v: {"image": _rf_image(v)},
        images=lambda vs: {"image": [_rf_image(v) for v in vs]},
        url=lambda u: {"image": {"type": "url", "value": u}},
    ),
    Route(
        "rf-embed_text", "roboflow", "/clip/embed_text", primary=lambda v: {"text": v}, texts=lambda ts: {"text": ts}
    ),
    Route(
        "rf-compare",
        "roboflow",
        "/clip/compare",
        primary=lambda v: {"subject": _rf_image(TINY_B64), "prompt": v},
        image=lambda v: {"subject": _rf_image(v), "prompt": ["a cat"]},
        url=lambda u: {"subject": {"type": "url", "value": u}, "prompt": ["a cat"]},
        texts=lambda ts: {"subject": _rf_image(TINY_B64), "prompt": ts},
        compare=True,
    ),
    Route(
        "rf-compare-image-prompts",
        "roboflow",
        "/clip/compare",
        primary=lambda v: {"subject": "a cat", "subject_type": "text", "prompt": v, "prompt_type": "image"},
        image=lambda v: {"subject": "a cat", "subject_type": "text", "prompt": [_rf_image(v)], "prompt_type": "image"},
        images=lambda vs: {
            "subject": "a cat",
            "subject_type": "text",
            "prompt": [_rf_image(v) for v in vs],
            "prompt_type": "image",
        },
        url=lambda u: {
            "subject": "a cat",
            "subject_type": "text",
            "prompt": [{"type": "url", "value": u}],
            "prompt_type": "image",
        },
        compare=True,
    ),
    Route(  # compare also takes a bare string subject: a URL when it starts with http, else base64
        "rf-compare-bare-subject",
        "roboflow",
        "/clip/compare",
        primary=lambda v: {"subject": v, "prompt": ["a cat"]},
        image=lambda v: {"subject": v, "prompt": ["a cat"]},
        url=lambda u: {"subject": u, "prompt": ["a cat"]},
        compare=True,
    ),
    Route("sn-file", "sambastudio", "/api/predict/file/p/e", multipart=True),
    Route(
        "sn-nlp",
        "sambastudio",
        "/api/predict/nlp/p/e",
        primary=lambda v: {"inputs": v},
        texts=lambda ts: {"inputs": ts},
    ),
    Route(
        "sn-generic",
        "sambastudio",
        "/api/predict/generic/p/e",
        primary=lambda v: {"instances": v},
        texts=lambda ts: {"instances": ts},
    ),
    Route(
        "sn-generic-v2",
        "sambastudio",
        "/api/v2/predict/generic/p/e",
        primary=lambda v: {"items": v},
        texts=lambda ts: {"items": [{"id": f"i{n}", "value": t} for n, t in enumerate(ts)]},
    ),
    Route(
        "az-score",
        "azureml",
        "/score",
        primary=lambda v: {"input_data": v},
        image=lambda v: _azure([[v, ""]]),
        images=lambda vs: _azure([[v, ""] for v in vs]),
        url=lambda u: _azure([[u, ""]]),
        texts=lambda ts: _azure([["", t] for t in ts]),
    ),
]
BY_NAME = {route.name: route for route in ROUTES}
IMAGE_ROUTES = [r for r in ROUTES if r.image is not None or r.multipart]
B64_ROUTES = [r for r in ROUTES if r.image is not None]
URL_ROUTES = [r for r in ROUTES if r.url is not None]
TEXT_ROUTES = [r for r in ROUTES if r.texts is not None]
JSON_ROUTES = [r for r in ROUTES if not r.multipart]
LIST_ROUTES = [r for r in ROUTES if r.images is not None or r.texts is not None]


def valid_call(route: Route) -> dict[str, Any]:
    if route.multipart:
        return {"files": {"predict_file": ("tiny.jpg", TINY_JPEG, "image/jpeg")}}
    if route.texts is not None:
        return {"json": route.texts(["a photo of a cat"])}
    assert route.image is not None
    return {"json": route.image(TINY_B64)}


def image_call(route: Route, data: bytes, *, filename: str = "image.jpg", mime: str = "image/jpeg") -> dict[str, Any]:
    """The image bytes as the route takes them: a multipart file, or base64 in the JSON body."""
    if route.multipart:
        return {"files": {"predict_file": (filename, data, mime)}}
    assert route.image is not None
    return {"json": route.image(h.b64(data))}


def raw_json(body: bytes, content_type: str | None = "application/json") -> dict[str, Any]:
    return {"content": body, "headers": {} if content_type is None else {"content-type": content_type}}


def with_raw(route: Route, raw: bytes, *, slot: str = "primary") -> bytes:
    """The route's body with `raw` JSON text spliced into its main field (or its image value)."""
    build = route.primary if slot == "primary" else route.image
    assert build is not None
    return orjson.dumps(build(MARK)).replace(orjson.dumps(MARK), raw)


# --- clients, network guard, checks ----------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def network_attempts() -> Iterator[list[str]]:
    """Every way out to the network raises and is recorded: URL inputs are off by default."""
    attempts: list[str] = []

    def blocked(name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{name}{args[:3]!r}")
            raise OSError(f"network access blocked by tests/test_hostile.py ({name})")

        return refuse

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", blocked("getaddrinfo"))
        patch.setattr(socket, "gethostbyname", blocked("gethostbyname"))
        patch.setattr(socket, "create_connection", blocked("create_connection"))
        patch.setattr(socket.socket, "connect", blocked("socket.connect"))
        patch.setattr(socket.socket, "connect_ex", blocked("socket.connect_ex"))
        patch.setattr(requests.Session, "send", blocked("requests.Session.send"))
        patch.setattr(httpx.HTTPTransport, "handle_request", blocked("httpx.HTTPTransport"))
        yield attempts


@pytest.fixture(autouse=True)
def no_network(network_attempts: list[str]) -> Iterator[None]:
    network_attempts.clear()
    yield
    assert network_attempts == [], f"the server tried to reach the network: {network_attempts}"


@pytest.fixture(scope="module")
def gateway(model: Model, network_attempts: list[str]) -> Iterator[TestClient]:
    with TestClient(create_app(make_config(), model), raise_server_exceptions=False) as client:
        for route in ROUTES:  # warm: the first case's time and memory are then its own
            assert_serves(client, route)
        yield client


@pytest.fixture(scope="module")
def small_gateway(model: Model, network_attempts: list[str]) -> Iterator[TestClient]:
    config = make_config(server={"max_body_bytes": SMALL_BODY_LIMIT})
    with TestClient(create_app(config, model), raise_server_exceptions=False) as client:
        yield client


def send(client: TestClient, route: Route, call: dict[str, Any]) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.post(route.path, **call)
    return response, time.perf_counter() - started


def shown(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.headers.get('content-type')!r} {response.text[:400]!r}"


def assert_error_shape(route: Route, response: httpx.Response) -> None:
    assert response.headers.get("content-type", "").startswith("application/json"), shown(response)
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {shown(response)}") from None
    assert isinstance(body, dict), shown(response)
    status = response.status_code
    if route.vendor == "roboflow":
        if "detail" in body:  # FastAPI's validation error, kept for Roboflow's body errors
            assert status == 422 and set(body) == {"detail"}, shown(response)
            assert isinstance(body["detail"], list) and body["detail"], shown(response)
            for entry in body["detail"]:
                assert isinstance(entry, dict) and {"type", "loc", "msg"} <= set(entry), shown(response)
                assert isinstance(entry["type"], str) and isinstance(entry["loc"], list), shown(response)
                assert isinstance(entry["msg"], str) and entry["msg"], shown(response)
        else:
            assert set(body) == {"message"} or (status == 401 and set(body) == {"status", "message"}), shown(response)
            assert isinstance(body["message"], str) and body["message"], shown(response)
    elif route.vendor == "sambastudio":
        assert set(body) == {"error", "status_code"}, shown(response)
        assert isinstance(body["error"], str) and body["error"], shown(response)
        assert body["status_code"] == status, shown(response)
    else:
        assert set(body) == {"message"}, shown(response)
        assert isinstance(body["message"], str) and body["message"], shown(response)
        assert response.headers.get("x-ms-run-function-failed") == "True", shown(response)


def assert_refused(
    route: Route, response: httpx.Response, elapsed: float, allowed: frozenset[int] = frozenset()
) -> None:
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s: {shown(response)}"
    assert 400 <= response.status_code < 500, f"not a 4xx: {shown(response)}"
    if allowed:
        assert response.status_code in allowed, f"expected one of {sorted(allowed)}: {shown(response)}"
    if route.vendor != "roboflow":
        assert response.status_code != 422, f"{route.vendor} answers 400, not FastAPI's 422: {shown(response)}"
    assert_error_shape(route, response)
    leak = LEAK.search(response.text)
    assert leak is None, f"leaks {leak.group(0)!r}: {shown(response)}"
    assert len(response.content) <= MAX_ERROR_BODY_BYTES, f"error body of {len(response.content)} bytes"


def embeddings(route: Route, payload: Any) -> list[Any]:
    if route.vendor == "roboflow":
        return payload["embeddings"]
    if route.vendor == "sambastudio":
        if "items" in payload:
            return [item["value"] for item in payload["items"]]
        return payload["data"] if "data" in payload else payload["predictions"]
    return [row.get("image_features", row.get("text_features")) for row in payload]


def result_of(route: Route, payload: Any) -> list[float]:
    """The numbers a success carries: the similarities of a compare, else the first embedding."""
    return list(payload["similarity"]) if route.compare else list(embeddings(route, payload)[0])


def assert_serves(client: TestClient, route: Route) -> None:
    """The same client still gets a normal answer on the same route."""
    response, elapsed = send(client, route, valid_call(route))
    assert response.status_code == 200, f"the server no longer serves {route.path}: {shown(response)}"
    assert elapsed < TIME_LIMIT_S
    payload = response.json()
    if route.compare:
        similarity = payload["similarity"]
        assert isinstance(similarity, list) and len(similarity) == 1
        assert isinstance(similarity[0], float) and -1.0001 <= similarity[0] <= 1.0001
        return
    vectors = embeddings(route, payload)
    assert len(vectors) == 1 and len(vectors[0]) == DIM
    assert all(isinstance(x, float) and math.isfinite(x) for x in vectors[0])


def check(
    client: TestClient, route: Route, call: dict[str, Any], allowed: frozenset[int] = frozenset()
) -> httpx.Response:
    response, elapsed = send(client, route, call)
    assert_refused(route, response, elapsed, allowed)
    return response


def check_then_serve(
    client: TestClient, route: Route, call: dict[str, Any], allowed: frozenset[int] = frozenset()
) -> httpx.Response:
    """For the groups most likely to wedge a server (bombs, body limits, multipart): the same
    client is served right after each case, not only after the group."""
    response = check(client, route, call, allowed)
    assert_serves(client, route)
    return response


def serves_after_the_group(routes: list[Route], client: str = "gateway") -> Callable[..., None]:
    """A test placed after a group's cases (pytest keeps file order): one valid request per route,
    on the same client that took the group's hostile ones."""

    @pytest.mark.parametrize("route", routes, ids=str)
    def test(request: pytest.FixtureRequest, route: Route) -> None:
        assert_serves(request.getfixturevalue(client), route)

    return test


def params(routes: list[Route], cases: list[tuple[str, Any]]) -> list[Any]:
    return [pytest.param(route, case, id=f"{route.name}-{name}") for route in routes for name, case in cases]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- images: bombs, truncated, mislabelled, not images, other formats -------------------------


BOMBS: list[tuple[str, Callable[[], bytes]]] = [
    ("png-20000x20000", lambda: h.png_declaring(20000, 20000)),
    ("png-rgba-65535x65535", lambda: h.png_declaring(65535, 65535, color_type=6, rows=1)),
    ("png-7000x7000-over-the-40mp-limit", lambda: h.png_declaring(7000, 7000)),
    ("gif-20000x20000", lambda: h.gif_declaring(20000, 20000)),
    ("gif-65535x65535", lambda: h.gif_declaring(65535, 65535)),
    ("gif-7000x7000", lambda: h.gif_declaring(7000, 7000)),
    ("jpeg-20000x20000", lambda: h.jpeg_declaring(20000, 20000)),
    ("jpeg-65500x65500", lambda: h.jpeg_declaring(65500, 65500)),
    ("jpeg-7000x7000", lambda: h.jpeg_declaring(7000, 7000)),
    ("bmp-20000x20000", lambda: h.bmp_declaring(20000, 20000)),
    ("bmp-top-down-20000x20000", lambda: h.bmp_declaring(20000, -20000)),
    ("webp-vp8l-16384x16384", lambda: h.webp_vp8l_declaring(16384, 16384)),
    ("webp-vp8x-16384x16384", lambda: h.webp_vp8x_declaring(16384, 16384)),
]


def test_the_bombs_declare_what_they_say() -> None:
    """Pillow's own header parser sees the huge sizes, so a refusal is the size check at work."""
    for name, build in BOMBS:
        if name.startswith("webp-vp8x"):
            continue  # a VP8X canvas with no frame: Pillow cannot even make a decoder for it
        width, height = (int(n) for n in re.findall(r"(\d+)x(\d+)", name)[0])
        assert h.pillow_size(build())[1] == (width, height), name
        assert len(build()) < 4096, name


@pytest.mark.parametrize(("route", "build"), params(IMAGE_ROUTES, BOMBS))
def test_decompression_bomb(gateway: TestClient, route: Route, build: Callable[[], bytes]) -> None:
    before = peak_rss_mb()
    check_then_serve(gateway, route, image_call(route, build()), BOMB)
    grown = peak_rss_mb() - before
    assert grown < MAX_RSS_GROWTH_MB, f"peak memory grew by {grown:.0f} MB"


# Under the pixel limit, but with only a few rows of data behind the header: Pillow fills the
# missing rows in rather than failing, so a 200 is acceptable; the cost must stay bounded.
UNDER_LIMIT_BOMBS: list[tuple[str, Callable[[], bytes]]] = [
    ("png-6000x6000-8-rows", lambda: h.png_declaring(6000, 6000)),
    ("jpeg-6000x6000-16px-of-data", lambda: h.jpeg_declaring(6000, 6000)),
    ("png-ztxt-64mib-metadata", h.png_ztxt_bomb),  # Pillow caps text chunks (MAX_TEXT_CHUNK)
]


@pytest.mark.parametrize(
    ("route", "build"), params([BY_NAME["rf-embed_image"], BY_NAME["sn-file"], BY_NAME["az-score"]], UNDER_LIMIT_BOMBS)
)
def test_bomb_under_the_pixel_limit_costs_bounded_time_and_memory(
    gateway: TestClient, route: Route, build: Callable[[], bytes]
) -> None:
    before = peak_rss_mb()
    response, elapsed = send(gateway, route, image_call(route, build()))
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s: {shown(response)}"
    assert response.status_code in {200, 400, 413}, shown(response)
    if response.status_code != 200:
        assert_refused(route, response, elapsed)
    grown = peak_rss_mb() - before
    assert grown < MAX_RSS_GROWTH_MB, f"peak memory grew by {grown:.0f} MB"
    assert_serves(gateway, route)


TRUNCATED: list[tuple[str, Callable[[], bytes]]] = [
    ("jpeg-half", lambda: h.truncated(imagegen.sample("jpeg"))),
    ("jpeg-90-percent", lambda: h.truncated(imagegen.sample("jpeg"), 0.9)),
    ("jpeg-no-eoi", lambda: imagegen.sample("jpeg")[:-2]),
    ("jpeg-first-100-bytes", lambda: imagegen.sample("jpeg")[:100]),
    ("jpeg-soi-only", lambda: b"\xff\xd8"),
    ("png-half", lambda: h.truncated(imagegen.sample("png"))),
    ("png-first-100-bytes", lambda: imagegen.sample("png")[:100]),
    ("png-signature-only", lambda: h.PNG_SIGNATURE),
    ("png-signature-and-ihdr", lambda: TINY_PNG[:33]),
    ("png-bad-ihdr-crc", h.png_bad_crc),
    ("png-zero-width", h.png_zero_width),
    ("gif-half", lambda: h.truncated(imagegen.sample("gif"))),
    ("gif-header-only", lambda: b"GIF89a"),
    ("webp-half", lambda: h.truncated(imagegen.sample("webp"))),
    ("webp-riff-header-only", lambda: imagegen.sample("webp")[:12]),
    ("bmp-half", lambda: h.truncated(imagegen.sample("bmp"))),
    ("bmp-header-only", lambda: imagegen.sample("bmp")[:54]),
]


@pytest.mark.parametrize(("route", "build"), params(IMAGE_ROUTES, TRUNCATED))
def test_truncated_or_corrupt_image(gateway: TestClient, route: Route, build: Callable[[], bytes]) -> None:
    check(gateway, route, image_call(route, build()), IMAGE_ERRORS)


test_truncated_then_still_serves = serves_after_the_group(IMAGE_ROUTES)


NOT_IMAGES: list[tuple[str, Callable[[], bytes]]] = [
    ("empty", lambda: b""),
    ("one-byte", lambda: b"\x00"),
    ("zeros-4k", lambda: bytes(4096)),
    ("random-4k", lambda: random.Random(7).randbytes(4096)),
    ("text", lambda: b"hello, I am not a picture\n"),
    ("html", lambda: h.HTML),
    ("json", lambda: b'{"image": "cat.jpg"}'),
    ("zip-holding-a-png", h.zip_bytes),
    ("elf-header", lambda: h.ELF_HEADER),
    ("python-pickle", lambda: h.PYTHON_PICKLE),
    ("base64-text-of-a-jpeg", lambda: TINY_B64.encode()),
]


@pytest.mark.parametrize(("route", "build"), params(IMAGE_ROUTES, NOT_IMAGES))
def test_bytes_that_are_not_an_image(gateway: TestClient, route: Route, build: Callable[[], bytes]) -> None:
    check(gateway, route, image_call(route, build()), IMAGE_ERRORS)


test_not_images_then_still_serves = serves_after_the_group(IMAGE_ROUTES)


OTHER_FORMATS: list[tuple[str, Callable[[], bytes]]] = [
    ("pdf", lambda: h.MINIMAL_PDF),
    ("svg", lambda: h.SVG),
    ("eps", lambda: h.EPS),
    ("eps-binary-header", h.eps_binary_header),
    ("fits", h.fits),
    ("tiff", lambda: h.encode_as("TIFF")),
    ("ico", lambda: h.encode_as("ICO")),
    ("avif", lambda: h.encode_as("AVIF")),
    ("avif-ftyp-header", h.avif_like),
    ("ppm", lambda: h.encode_as("PPM")),
    ("pcx", lambda: h.encode_as("PCX")),
    ("tga", lambda: h.encode_as("TGA")),
    ("xbm", lambda: h.encode_as("XBM")),
    ("qoi", lambda: h.encode_as("QOI")),
    ("sgi", lambda: h.encode_as("SGI")),
    ("dds", lambda: h.encode_as("DDS")),
]


def test_the_other_formats_are_real_files_pillow_could_open() -> None:
    """Pillow with no allow-list reads these, so a refusal is the allow-list at work."""
    expected = {"eps": "EPS", "eps-binary-header": "EPS", "fits": "FITS", "avif-ftyp-header": None}
    for name, build in OTHER_FORMATS:
        if name in ("pdf", "svg", "avif-ftyp-header"):
            continue  # Pillow cannot read these at all; they are here for what a sniffer might do
        fmt, size = h.pillow_size(build())
        assert fmt == expected.get(name, name.upper()) and size[0] > 0, name


@pytest.mark.parametrize(("route", "build"), params(IMAGE_ROUTES, OTHER_FORMATS))
def test_format_outside_the_allow_list(gateway: TestClient, route: Route, build: Callable[[], bytes]) -> None:
    check(gateway, route, image_call(route, build()), FORMAT_REFUSED)


test_other_formats_then_still_serves = serves_after_the_group(IMAGE_ROUTES)


MISLABELLED: list[tuple[str, tuple[Callable[[], bytes], str, str]]] = [
    ("text-named-png", (lambda: b"hello, I am not a picture\n", "cat.png", "image/png")),
    ("html-named-jpg", (lambda: h.HTML, "cat.jpg", "image/jpeg")),
    ("svg-named-png", (lambda: h.SVG, "cat.png", "image/png")),
    ("tiff-named-jpg", (lambda: h.encode_as("TIFF"), "cat.jpg", "image/jpeg")),
    ("pdf-named-gif", (lambda: h.MINIMAL_PDF, "cat.gif", "image/gif")),
]


def _labelled(route: Route, data: bytes, filename: str, mime: str) -> dict[str, Any]:
    """Multipart: the filename and part Content-Type lie; JSON: the data: URI's media type lies."""
    if route.multipart:
        return image_call(route, data, filename=filename, mime=mime)
    assert route.image is not None
    return {"json": route.image(f"data:{mime};base64,{h.b64(data)}")}


@pytest.mark.parametrize(("route", "case"), params(IMAGE_ROUTES, MISLABELLED))
def test_mislabelled_non_image(gateway: TestClient, route: Route, case: tuple[Callable[[], bytes], str, str]) -> None:
    build, filename, mime = case
    check(gateway, route, _labelled(route, build(), filename, mime), FORMAT_REFUSED)


test_mislabelled_then_still_serves = serves_after_the_group(IMAGE_ROUTES)


@pytest.mark.parametrize("route", IMAGE_ROUTES, ids=str)
def test_mislabelled_real_image_is_read_by_its_content(gateway: TestClient, route: Route) -> None:
    """A PNG named .jpg (or sent as data:image/jpeg) is sniffed, not trusted: the same answer as
    when it is labelled honestly. Not a refusal case: the allow-list decides, not the label."""
    honest, _ = send(gateway, route, _labelled(route, TINY_PNG, "cat.png", "image/png"))
    lying, elapsed = send(gateway, route, _labelled(route, TINY_PNG, "cat.jpg", "image/jpeg"))
    assert elapsed < TIME_LIMIT_S
    assert honest.status_code == 200 and lying.status_code == 200, shown(lying)
    assert result_of(route, lying.json()) == pytest.approx(result_of(route, honest.json()), abs=1e-5)


# --- base64 ----------------------------------------------------------------------------------


BAD_BASE64: list[tuple[str, str]] = [
    ("bang", "!!!!"),
    ("non-alphabet-in-the-middle", TINY_B64[:40] + "$%^&" + TINY_B64[40:]),
    ("percent-encoded", TINY_B64.replace("+", "%2B").replace("/", "%2F") + "%3D"),
    ("three-padding-chars", TINY_B64.rstrip("=") + "==="),
    ("padding-in-the-middle", TINY_B64[:40] + "==" + TINY_B64[40:]),
    ("leading-padding", "==" + TINY_B64),
    ("length-mod-4-is-1", "QUJDR"),
    ("fullwidth-letters", "ＱＵＪＤ"),
    ("accented", "é" * 8),
    ("emoji", "🐱" * 4),
    ("nul-chars", "\x00" * 8),
    ("zero-width-space-inside", TINY_B64[:40] + "\u200b" + TINY_B64[40:]),
    ("rtl-override-prefix", "\u202e" + TINY_B64),
    ("empty", ""),
    ("whitespace-only", " \n\t\r "),
    ("one-equals", "="),
    ("four-equals", "===="),
    ("thousand-equals", "=" * 1000),
    ("data-uri-empty", "data:image/png;base64,"),
    ("data-uri-bad-payload", "data:image/png;base64,!!!!"),
    ("data-uri-text", "data:text/plain;base64," + h.b64(b"hello")),
    ("data-uri-svg", "data:image/svg+xml;base64," + h.b64(h.SVG)),
    ("data-uri-not-base64", "data:image/png," + "%89PNG"),
    ("valid-base64-random-bytes", h.b64(random.Random(3).randbytes(3000))),
    ("base64-of-base64", h.b64(TINY_B64.encode())),
]


@pytest.mark.parametrize(("route", "value"), params(B64_ROUTES, BAD_BASE64))
def test_bad_base64(gateway: TestClient, route: Route, value: str) -> None:
    assert route.image is not None
    check(gateway, route, {"json": route.image(value)}, IMAGE_ERRORS)


test_bad_base64_then_still_serves = serves_after_the_group(B64_ROUTES)


def test_padding_and_line_breaks_alone_still_decode(gateway: TestClient) -> None:
    """The cases above are bad for their own reason: the same image, unpadded or with line breaks, reads."""
    route = BY_NAME["rf-embed_image"]
    assert route.image is not None
    for value in (TINY_B64.rstrip("="), "\n".join(TINY_B64[i : i + 76] for i in range(0, len(TINY_B64), 76))):
        response, _ = send(gateway, route, {"json": route.image(value)})
        assert response.status_code == 200, shown(response)


# --- URLs and other remote or server-side sources ----------------------------------------------


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
# In a base64 slot (Azure's image column, compare's bare subject) a data: URI is base64 with a
# prefix, decoded locally by design: see test_data_uri_in_a_base64_slot_is_decoded_locally.
URL_CASES = [
    pytest.param(route, url, id=f"{route.name}-{name}")
    for route in URL_ROUTES
    for name, url in URLS
    if not (name == "data-url-as-url" and route.name in ("az-score", "rf-compare-bare-subject"))
]


@pytest.mark.parametrize(("route", "url"), URL_CASES)
def test_url_input_is_refused_without_network_access(
    gateway: TestClient, network_attempts: list[str], route: Route, url: str
) -> None:
    assert route.url is not None
    check(gateway, route, {"json": route.url(url)}, IMAGE_ERRORS)
    assert network_attempts == []


test_urls_then_still_serves = serves_after_the_group(URL_ROUTES)


def test_the_network_guard_sees_an_attempt(model: Model, network_attempts: list[str]) -> None:
    """With URLs turned on, the server does reach for the network, and the guard records it: so
    an empty record in the tests above means no attempt was made, not that none was seen."""
    config = make_config(images={"allow_url": True})
    with TestClient(create_app(config, model), raise_server_exceptions=False) as client:
        route = BY_NAME["rf-embed_image"]
        assert route.url is not None
        response, _ = send(client, route, {"json": route.url("https://example.com/cat.jpg")})
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
    assert result_of(route, uri.json()) == pytest.approx(result_of(route, plain.json()), abs=1e-5)
    assert network_attempts == []


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


@pytest.mark.parametrize(
    ("route", "image"),
    params([BY_NAME["rf-embed_image"], BY_NAME["rf-compare"], BY_NAME["rf-compare-image-prompts"]], REFUSED_TYPES),
)
def test_roboflow_server_side_and_pickle_types_are_refused(
    gateway: TestClient, route: Route, image: dict[str, Any]
) -> None:
    body = {
        "rf-embed_image": {"image": image},
        "rf-compare": {"subject": image, "prompt": ["a cat"]},
        "rf-compare-image-prompts": {"subject": "a", "subject_type": "text", "prompt": [image], "prompt_type": "image"},
    }[route.name]
    response = check(gateway, route, {"json": body}, IMAGE_ERRORS)
    assert "root:" not in response.text  # nothing of /etc/passwd comes back


test_refused_types_then_still_serves = serves_after_the_group([r for r in ROUTES if r.vendor == "roboflow"])


# --- wrong JSON types ------------------------------------------------------------------------


KINDS: dict[str, Any] = {
    "int": 7,
    "float": 1.5,
    "bool": True,
    "null": None,
    "string": "s",
    "empty-string": "",
    "object": {"k": "v"},
    "empty-object": {},
    "list-of-str": ["a"],
    "list-of-int": [7],
    "list-of-null": [None],
    "empty-list": [],
    "nested-list": [[["x"]]],
}
Path = tuple[str | int, ...]
# route -> (a valid body, [(a field's path, the kinds that are valid there)])
WRONG_TYPE_TARGETS: dict[str, tuple[dict[str, Any], list[tuple[Path, set[str]]]]] = {
    "rf-embed_image": (
        {"image": _rf_image(TINY_B64), "clip_version_id": None},
        [
            (("image",), set()),
            (("image", "type"), set()),
            (("image", "value"), set()),
            (("clip_version_id",), {"null"}),
        ],
    ),
    "rf-embed_text": (
        {"text": ["a cat"], "clip_version_id": None},
        [
            (("text",), {"string", "empty-string", "list-of-str"}),
            (("text", 0), {"string", "empty-string"}),
            (("clip_version_id",), {"null"}),
        ],
    ),
    "rf-compare": (
        {"subject": _rf_image(TINY_B64), "subject_type": "image", "prompt": ["a cat"], "prompt_type": "text"},
        [
            (("subject",), set()),
            (("subject", "type"), set()),
            (("subject", "value"), set()),
            (("subject_type",), set()),
            (("prompt",), {"string", "empty-string", "list-of-str", "object"}),
            (("prompt", 0), {"string", "empty-string"}),
            (("prompt_type",), set()),
        ],
    ),
    "rf-compare-image-prompts": (
        {"subject": "a cat", "subject_type": "text", "prompt": [_rf_image(TINY_B64)], "prompt_type": "image"},
        [
            (("subject",), {"string", "empty-string"}),
            (("prompt",), set()),
            (("prompt", 0), set()),
            (("prompt", 0, "value"), set()),
        ],
    ),
    "sn-nlp": (
        {"inputs": ["a cat"], "params": {}},
        [
            (("inputs",), {"string", "empty-string", "list-of-str"}),
            (("inputs", 0), {"string", "empty-string"}),
            (("params",), {"null", "object", "empty-object"}),
        ],
    ),
    "sn-generic": (
        {"instances": ["a cat"], "params": {}},
        [
            (("instances",), {"string", "empty-string", "list-of-str"}),
            (("instances", 0), {"string", "empty-string"}),
            (("params",), {"null", "object", "empty-object"}),
        ],
    ),
    "sn-generic-v2": (
        {"items": [{"id": "a", "value": "a cat"}]},
        [
            (("items",), set()),
            (("items", 0), set()),
            (("items", 0, "id"), {"string", "empty-string"}),
            (("items", 0, "value"), {"string", "empty-string"}),
        ],
    ),
    "az-score": (
        {"input_data": {"columns": ["image", "text"], "index": [0], "data": [["", "a cat"]]}},
        [
            (("input_data",), set()),
            (("input_data", "columns"), set()),
            (("input_data", "index"), {"null", "list-of-str", "list-of-int", "list-of-null", "nested-list"}),
            (("input_data", "data"), set()),
            (("input_data", "data", 0), set()),
            (("input_data", "data", 0, 0), {"null", "empty-string"}),
            (("input_data", "data", 0, 1), {"string"}),
        ],
    ),
}


def _mutated(body: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = copy.deepcopy(value)
    return out


WRONG_TYPE_CASES = [
    pytest.param(BY_NAME[name], _mutated(body, path, value), id=f"{name}-{'.'.join(map(str, path))}={kind}")
    for name, (body, targets) in WRONG_TYPE_TARGETS.items()
    for path, valid in targets
    for kind, value in KINDS.items()
    if kind not in valid
]


def test_the_wrong_type_templates_are_valid(gateway: TestClient) -> None:
    for name, (body, _) in WRONG_TYPE_TARGETS.items():
        response, _ = send(gateway, BY_NAME[name], {"json": body})
        assert response.status_code == 200, f"{name}: {shown(response)}"


@pytest.mark.parametrize(("route", "body"), WRONG_TYPE_CASES)
def test_wrong_json_type(gateway: TestClient, route: Route, body: dict[str, Any]) -> None:
    check(gateway, route, {"json": body}, SCHEMA)


test_wrong_types_then_still_serves = serves_after_the_group(JSON_ROUTES)


# --- deep nesting ----------------------------------------------------------------------------


NESTINGS: list[tuple[str, tuple[str, bytes]]] = [
    (f"{where}-{shape}-depth-{depth}", (where, build(depth)))
    for depth in (10, 100, 5000)
    for shape, build in (("list", h.nested_list), ("object", h.nested_object))
    for where in ("top-level", "main-field", "image-value")
    if not (where == "top-level" and shape == "object")
]


NESTING_CASES = [
    pytest.param(route, case, id=f"{route.name}-{name}")
    for route in JSON_ROUTES
    for name, case in NESTINGS
    if not (case[0] == "image-value" and route.image is None)
]


@pytest.mark.parametrize(("route", "case"), NESTING_CASES)
def test_deeply_nested_json(gateway: TestClient, route: Route, case: tuple[str, bytes]) -> None:
    where, nested = case
    if where == "top-level":
        body = nested
    else:
        body = with_raw(route, nested, slot="primary" if where == "main-field" else "image")
    check(gateway, route, raw_json(body), NESTING)


test_nesting_then_still_serves = serves_after_the_group(JSON_ROUTES)


# --- limits: items per request, text length, image bytes, body size ---------------------------


def _too_many(route: Route, count: str) -> Any:
    if count == "images" and route.images is not None:
        return route.images([TINY_B64] * (MAX_IMAGES + 1))
    if count == "texts" and route.texts is not None:
        return route.texts(["a"] * (MAX_TEXTS + 1))
    if count == "100k-texts" and route.texts is not None:
        return route.texts(["a"] * 100_000)
    if count == "dict-prompts" and route.name == "rf-compare":
        return {"subject": _rf_image(TINY_B64), "prompt": {f"k{i}": "a" for i in range(MAX_TEXTS + 1)}}
    return None


TOO_MANY_CASES = [
    pytest.param(route, count, id=f"{route.name}-{count}")
    for route in LIST_ROUTES
    for count in ("images", "texts", "100k-texts", "dict-prompts")
    if _too_many(route, count) is not None
]


@pytest.mark.parametrize(("route", "count"), TOO_MANY_CASES)
def test_more_items_than_the_per_request_limit(gateway: TestClient, route: Route, count: str) -> None:
    check(gateway, route, {"json": _too_many(route, count)}, TOO_MANY)


def test_too_many_images_in_multipart(gateway: TestClient) -> None:
    route = BY_NAME["sn-file"]
    body = h.multipart([("predict_file", f"{i}.jpg", TINY_JPEG) for i in range(MAX_IMAGES + 1)])
    check(gateway, route, raw_json(body, "multipart/form-data; boundary=hostile-boundary"), TOO_MANY)


HUGE_TEXTS: list[tuple[str, tuple[str, frozenset[int]]]] = [
    ("one-over-the-char-limit", ("x" * (MAX_TEXT_CHARS + 1), frozenset({400}))),
    ("accented-over-the-char-limit", ("é" * (MAX_TEXT_CHARS + 1), frozenset({400}))),
    ("one-mebibyte", ("x" * (1 << 20), frozenset({400, 413}))),
    ("over-77-tokens", ("a photo of a cat " * 30, frozenset({400}))),
    ("emoji-over-77-tokens", ("🐱" * 200, frozenset({400}))),
]


@pytest.mark.parametrize(("route", "case"), params(TEXT_ROUTES, HUGE_TEXTS))
def test_huge_text(gateway: TestClient, route: Route, case: tuple[str, frozenset[int]]) -> None:
    text, allowed = case
    assert route.texts is not None
    check(gateway, route, {"json": route.texts(["fine", text])}, allowed)


def test_max_texts_of_max_chars_is_refused_in_bounded_time(gateway: TestClient) -> None:
    """Every limit respected (1024 texts of 16384 chars, 16 MiB), every text over 77 tokens: the
    refusal must not cost the whole batch's tokenization."""
    route = BY_NAME["sn-nlp"]
    check(gateway, route, {"json": {"inputs": ["x" * MAX_TEXT_CHARS] * MAX_TEXTS}}, frozenset({400, 413}))


@pytest.mark.parametrize("route", B64_ROUTES, ids=str)
def test_base64_image_over_the_byte_limit(gateway: TestClient, route: Route) -> None:
    assert route.image is not None
    check(gateway, route, {"json": route.image("A" * (MAX_IMAGE_BYTES * 4 // 3 + 8192))}, TOO_MANY)


test_limits_then_still_serves = serves_after_the_group(ROUTES)


def _oversized(route: Route, size: int = 2 * SMALL_BODY_LIMIT) -> tuple[bytes, str]:
    if route.multipart:
        return h.multipart([("predict_file", "a.jpg", bytes(size))]), "multipart/form-data; boundary=hostile-boundary"
    assert route.primary is not None
    return orjson.dumps(route.primary(["a" * size])), "application/json"


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


BODY_LIMIT_MODES = [(m, m) for m in ("content-length", "chunked", "chunked-tiny-chunks", "declared-huge-length")]


@pytest.mark.parametrize(("route", "mode"), params(ROUTES, BODY_LIMIT_MODES))
def test_body_over_max_body_bytes(small_gateway: TestClient, route: Route, mode: str) -> None:
    body, content_type = _oversized(route)
    headers = {"content-type": content_type}
    if mode == "content-length":
        call: dict[str, Any] = {"content": body, "headers": headers}
    elif mode == "chunked":  # no Content-Length: the server has to count while reading
        call = {"content": _chunks(body, 1000), "headers": headers}
    elif mode == "chunked-tiny-chunks":
        call = {"content": _chunks(body, 16), "headers": headers}
    else:  # a Content-Length far over the limit, and a body that never comes
        call = {"content": body[:100], "headers": {**headers, "content-length": str(10**12)}}
    check_then_serve(small_gateway, route, call, TOO_MANY)


test_body_limit_then_still_serves = serves_after_the_group(ROUTES, "small_gateway")


# --- bodies that are not JSON objects, and wrong content types --------------------------------


def _utf16(route: Route) -> bytes:
    return b"\xff\xfe" + orjson.dumps(valid_call(route)["json"]).decode().encode("utf-16-le")


MALFORMED: list[tuple[str, Callable[[Route], bytes]]] = [
    ("empty", lambda r: b""),
    ("whitespace", lambda r: b" \r\n\t "),
    ("invalid-utf8", lambda r: b"\xff\xfe\xfd"),
    ("invalid-utf8-in-a-string", lambda r: with_raw(r, b'"\xc3\x28\xff"')),
    ("overlong-utf8-slash", lambda r: with_raw(r, b'"\xc0\xaf"')),
    ("encoded-surrogate", lambda r: with_raw(r, b'"\xed\xa0\x80"')),
    ("lone-surrogate-escape", lambda r: with_raw(r, b'"\\ud800"')),
    ("utf16-with-bom", _utf16),
    ("latin1", lambda r: with_raw(r, '"caf\xe9"'.encode("latin-1"))),
    ("unterminated", lambda r: orjson.dumps(valid_call(r)["json"])[:-3]),
    ("unclosed-brace", lambda r: b"{"),
    ("trailing-garbage", lambda r: orjson.dumps(valid_call(r)["json"]) + b"xyz"),
    ("two-documents", lambda r: orjson.dumps(valid_call(r)["json"]) * 2),
    ("trailing-comma", lambda r: orjson.dumps(valid_call(r)["json"])[:-1] + b",}"),
    ("single-quotes", lambda r: orjson.dumps(valid_call(r)["json"]).replace(b'"', b"'")),
    ("unquoted-keys", lambda r: b"{text: 1}"),
    ("comment", lambda r: b"// hi\n" + orjson.dumps(valid_call(r)["json"])),
    ("nan-literal", lambda r: with_raw(r, b"NaN")),
    ("infinity-literal", lambda r: with_raw(r, b"Infinity")),
    ("number-overflowing-double", lambda r: with_raw(r, b"1e99999")),
    ("nul-byte", lambda r: b"\x00"),
    ("nul-after-document", lambda r: orjson.dumps(valid_call(r)["json"]) + b"\x00"),
    ("not-an-object-null", lambda r: b"null"),
    ("not-an-object-true", lambda r: b"true"),
    ("not-an-object-zero", lambda r: b"0"),
    ("not-an-object-float", lambda r: b"-1.5e300"),
    ("not-an-object-string", lambda r: b'"a photo of a cat"'),
    ("not-an-object-empty-list", lambda r: b"[]"),
    ("not-an-object-list-of-the-valid-body", lambda r: b"[" + orjson.dumps(valid_call(r)["json"]) + b"]"),
    ("not-an-object-empty-object", lambda r: b"{}"),
]


@pytest.mark.parametrize(("route", "build"), params(JSON_ROUTES, MALFORMED))
def test_malformed_body(gateway: TestClient, route: Route, build: Callable[[Route], bytes]) -> None:
    check(gateway, route, raw_json(build(route)), BODY)


test_malformed_then_still_serves = serves_after_the_group(JSON_ROUTES)


JSON_CONTENT_TYPES: list[tuple[str, tuple[str | None, Callable[[Route], bytes]]]] = [
    ("form-urlencoded", ("application/x-www-form-urlencoded", lambda r: b"text=a+cat&inputs=a&instances=a")),
    ("xml", ("application/xml", lambda r: b"<?xml version='1.0'?><text>a cat</text>")),
    ("png-body", ("image/png", lambda r: TINY_PNG)),
    (
        "multipart-body",
        ("multipart/form-data; boundary=hostile-boundary", lambda r: h.multipart([("text", None, b"x")])),
    ),
    ("octet-stream", ("application/octet-stream", lambda r: b"\x00\x01\x02\xff")),
    ("no-content-type", (None, lambda r: b"text=a")),
]


@pytest.mark.parametrize(("route", "case"), params(JSON_ROUTES, JSON_CONTENT_TYPES))
def test_json_route_given_another_content_type(gateway: TestClient, route: Route, case: tuple[Any, Any]) -> None:
    content_type, build = case
    check(gateway, route, raw_json(build(route), content_type), CONTENT_TYPE)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None, "text/json"])
def test_azure_requires_a_json_content_type(gateway: TestClient, content_type: str | None) -> None:
    """azmlinfsrv answers 415 for anything but application/json, even around a valid body."""
    route = BY_NAME["az-score"]
    check(gateway, route, raw_json(orjson.dumps(valid_call(route)["json"]), content_type), frozenset({415}))


VALID_MULTIPART = h.multipart([("predict_file", "tiny.jpg", TINY_JPEG)])
FILE_CONTENT_TYPES: list[tuple[str, tuple[str | None, bytes]]] = [
    ("json", ("application/json", b'{"inputs": ["a cat"]}')),
    ("text-plain", ("text/plain", b"hello")),
    ("form-urlencoded", ("application/x-www-form-urlencoded", b"predict_file=" + TINY_B64.encode())),
    ("multipart-mixed", ("multipart/mixed; boundary=hostile-boundary", VALID_MULTIPART)),
    ("raw-jpeg", ("image/jpeg", TINY_JPEG)),
    ("no-content-type", (None, VALID_MULTIPART)),
]


@pytest.mark.parametrize(("route", "case"), params([BY_NAME["sn-file"]], FILE_CONTENT_TYPES))
def test_file_route_given_another_content_type(gateway: TestClient, route: Route, case: tuple[Any, bytes]) -> None:
    content_type, body = case
    check(gateway, route, raw_json(body, content_type), frozenset({400, 415}))


test_content_types_then_still_serves = serves_after_the_group(ROUTES)


# --- multipart -------------------------------------------------------------------------------


FORM = "multipart/form-data; boundary=hostile-boundary"
JUNK = b"not an image at all"


def _part(headers: bytes, data: bytes = JUNK, boundary: bytes = b"hostile-boundary") -> bytes:
    return b"--" + boundary + b"\r\n" + headers + b"\r\n" + data + b"\r\n--" + boundary + b"--\r\n"


MULTIPART_CASES: list[tuple[str, tuple[str | None, Callable[[], bytes], frozenset[int]]]] = [
    ("17-parts", (FORM, lambda: h.multipart([("f", None, b"x")] * 17), TOO_MANY)),
    ("5000-parts", (FORM, lambda: h.multipart([("f", None, b"x")] * 5000), TOO_MANY)),
    ("5000-predict-files", (FORM, lambda: h.multipart([("predict_file", "a.jpg", b"x")] * 5000), TOO_MANY)),
    (
        "file-part-over-the-image-limit",
        (FORM, lambda: h.multipart([("predict_file", "a.jpg", bytes(21 << 20))]), TOO_MANY),
    ),
    (
        "plain-field-over-the-image-limit",
        (FORM, lambda: h.multipart([("predict_file", None, bytes(21 << 20))]), TOO_MANY),
    ),
    (
        "header-line-of-100k",
        (
            FORM,
            lambda: _part(b'Content-Disposition: form-data; name="predict_file"\r\nX-Pad: ' + b"a" * 100_000 + b"\r\n"),
            frozenset({400, 413, 431}),
        ),
    ),
    (
        "5000-headers",
        (
            FORM,
            lambda: _part(b'Content-Disposition: form-data; name="predict_file"\r\n' + b"X-A: b\r\n" * 5000),
            frozenset({400, 413, 431}),
        ),
    ),
    ("no-boundary", ("multipart/form-data", lambda: VALID_MULTIPART, frozenset({400, 415}))),
    ("empty-boundary", ("multipart/form-data; boundary=", lambda: VALID_MULTIPART, frozenset({400, 415}))),
    ("empty-quoted-boundary", ('multipart/form-data; boundary=""', lambda: VALID_MULTIPART, frozenset({400, 415}))),
    ("mismatched-boundary", ("multipart/form-data; boundary=other", lambda: VALID_MULTIPART, IMAGE_ERRORS)),
    ("unterminated", (FORM, lambda: h.multipart([("predict_file", "a.jpg", TINY_JPEG)], close=False), IMAGE_ERRORS)),
    ("cut-in-a-header", (FORM, lambda: b"--hostile-boundary\r\nContent-Disposition: form-da", IMAGE_ERRORS)),
    ("closing-delimiter-only", (FORM, lambda: b"--hostile-boundary--\r\n", IMAGE_ERRORS)),
    ("preamble-only", (FORM, lambda: b"just some text, no delimiter\r\n", IMAGE_ERRORS)),
    ("empty-body", (FORM, lambda: b"", IMAGE_ERRORS)),
    ("lf-line-endings", (FORM, lambda: h.multipart([("predict_file", "a.jpg", JUNK)], newline=b"\n"), IMAGE_ERRORS)),
    ("no-content-disposition", (FORM, lambda: _part(b"Content-Type: image/jpeg\r\n"), IMAGE_ERRORS)),
    (
        "disposition-without-name",
        (FORM, lambda: _part(b'Content-Disposition: form-data; filename="a.jpg"\r\n'), IMAGE_ERRORS),
    ),
    (
        "attachment-disposition",
        (FORM, lambda: _part(b'Content-Disposition: attachment; name="predict_file"\r\n'), IMAGE_ERRORS),
    ),
    ("header-without-colon", (FORM, lambda: _part(b"Garbage header line\r\n"), IMAGE_ERRORS)),
    (
        "boundary-inside-the-image",
        (
            FORM,
            lambda: h.multipart(
                [("predict_file", "a.jpg", TINY_JPEG[:200] + b"\r\n--hostile-boundary\r\n" + TINY_JPEG[200:])]
            ),
            IMAGE_ERRORS,
        ),
    ),
    ("nul-in-field-name", (FORM, lambda: h.multipart([("predict_file\x00", "a.jpg", TINY_JPEG)]), IMAGE_ERRORS)),
    ("wrong-field-name", (FORM, lambda: h.multipart([("file", "a.jpg", TINY_JPEG)]), IMAGE_ERRORS)),
    ("empty-predict-file", (FORM, lambda: h.multipart([("predict_file", "a.jpg", b"")]), IMAGE_ERRORS)),
    (
        "boundary-of-2000-chars",
        (
            "multipart/form-data; boundary=" + "b" * 2000,
            lambda: h.multipart([("predict_file", "a.jpg", JUNK)], "b" * 2000),
            IMAGE_ERRORS,
        ),
    ),
]


@pytest.mark.parametrize(("route", "case"), params([BY_NAME["sn-file"]], MULTIPART_CASES))
def test_hostile_multipart(gateway: TestClient, route: Route, case: tuple[Any, Any, frozenset[int]]) -> None:
    content_type, build, allowed = case
    check_then_serve(gateway, route, raw_json(build(), content_type), allowed)


# --- property-based extras (bounded) ---------------------------------------------------------

MAGIC = [b"", h.PNG_SIGNATURE, b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00"]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
PROPERTY_SETTINGS = settings(
    max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def assert_answered(route: Route, response: httpx.Response, elapsed: float) -> None:
    """For generated input: a 200 is possible, a 5xx never; a 4xx must be a proper refusal."""
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s"
    if response.status_code != 200:
        assert_refused(route, response, elapsed)


@pytest.mark.parametrize("route", IMAGE_ROUTES, ids=str)
@PROPERTY_SETTINGS
@given(magic=st.sampled_from(MAGIC), tail=st.binary(max_size=600))
def test_generated_image_bytes_never_break_the_server(
    gateway: TestClient, route: Route, magic: bytes, tail: bytes
) -> None:
    response, elapsed = send(gateway, route, image_call(route, magic + tail))
    assert_answered(route, response, elapsed)


@pytest.mark.parametrize("route", JSON_ROUTES, ids=str)
@PROPERTY_SETTINGS
@given(value=JSON_VALUES, whole_body=st.booleans())
def test_generated_json_never_breaks_the_server(
    gateway: TestClient, route: Route, value: Any, whole_body: bool
) -> None:
    assert route.primary is not None
    body = value if whole_body else route.primary(value)
    response, elapsed = send(gateway, route, raw_json(orjson.dumps(body)))
    assert_answered(route, response, elapsed)


test_generated_then_still_serves = serves_after_the_group(ROUTES)
