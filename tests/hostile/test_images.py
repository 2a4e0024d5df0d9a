"""Images on every image route: decompression bombs, truncated and corrupt files, bytes that are not
an image, formats outside the allow-list, and files whose label lies about them."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests import imagegen
from tests.hostile import inputs as h
from tests.hostile.checks import (
    TIME_LIMIT_S,
    assert_refused,
    assert_serves,
    assert_serves_after,
    assert_unharmed,
    check,
    check_case,
    peak_memory,
    send,
)
from tests.hostile.routes import (
    BOMB,
    BY_NAME,
    FORMAT_REFUSED,
    IMAGE_ERRORS,
    IMAGE_ROUTES,
    TINY_B64,
    TINY_PNG,
    Case,
    Route,
    cases,
    image_call,
    params,
    route_params,
)
from tests.vendors import shown

MAX_RSS_GROWTH_MB = 256  # a 20000x20000 bomb decoded as grey alone would be 400 MB


def _image(route: Route, build: Callable[[], bytes]) -> dict[str, Any]:
    return image_call(route, build())


# --- decompression bombs -----------------------------------------------------------------------

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
BOMB_CASES = cases(IMAGE_ROUTES, BOMBS, _image, BOMB)


def test_the_bombs_declare_what_they_say() -> None:
    """Pillow's own header parser sees the huge sizes, so a refusal is the size check at work."""
    for name, build in BOMBS:
        if name.startswith("webp-vp8x"):
            continue  # a VP8X canvas with no frame: Pillow cannot even make a decoder for it
        width, height = (int(n) for n in re.findall(r"(\d+)x(\d+)", name)[0])
        assert h.pillow_size(build())[1] == (width, height), name
        assert len(build()) < 4096, name


@pytest.mark.parametrize("case", params(BOMB_CASES))
def test_decompression_bomb(gateway: TestClient, case: Case) -> None:
    call = case.make()
    with peak_memory() as peak:
        check(gateway, case.route, call, case.allowed)
    assert peak.grown_mb < MAX_RSS_GROWTH_MB, f"peak memory grew by {peak.grown_mb:.0f} MB"
    assert_serves(gateway, case.route)


# Under the pixel limit, but with only a few rows of data behind the header: Pillow fills the
# missing rows in rather than failing, so a 200 is acceptable; the cost must stay bounded.
UNDER_LIMIT_BOMBS: list[tuple[str, Callable[[], bytes]]] = [
    ("png-6000x6000-8-rows", lambda: h.png_declaring(6000, 6000)),
    ("jpeg-6000x6000-16px-of-data", lambda: h.jpeg_declaring(6000, 6000)),
    ("png-ztxt-64mib-metadata", h.png_ztxt_bomb),  # Pillow caps text chunks (MAX_TEXT_CHUNK)
]
UNDER_LIMIT_CASES = cases(
    [BY_NAME["rf-embed_image"], BY_NAME["sn-file"], BY_NAME["az-score"]], UNDER_LIMIT_BOMBS, _image, frozenset()
)


@pytest.mark.parametrize("case", params(UNDER_LIMIT_CASES))
def test_bomb_under_the_pixel_limit_costs_bounded_time_and_memory(gateway: TestClient, case: Case) -> None:
    call = case.make()
    with peak_memory() as peak:
        response, elapsed = send(gateway, case.route, call)
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s: {shown(response)}"
    assert response.status_code in {200, 400, 413}, shown(response)
    if response.status_code == 200:
        case.route.endpoint.assert_served(response, count=1)
    else:
        assert_refused(case.route, response, elapsed)
    assert peak.grown_mb < MAX_RSS_GROWTH_MB, f"peak memory grew by {peak.grown_mb:.0f} MB"
    assert_serves(gateway, case.route)


# --- truncated, corrupt, not images --------------------------------------------------------------

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
TRUNCATED = [(name, functools.cache(build)) for name, build in TRUNCATED]  # the samples take a while to encode
TRUNCATED_CASES = cases(IMAGE_ROUTES, TRUNCATED, _image, IMAGE_ERRORS)


@pytest.mark.parametrize("case", params(TRUNCATED_CASES))
def test_truncated_or_corrupt_image(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


@pytest.mark.parametrize("route", route_params(IMAGE_ROUTES))
def test_truncated_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, TRUNCATED_CASES)


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
NOT_IMAGE_CASES = cases(IMAGE_ROUTES, NOT_IMAGES, _image, IMAGE_ERRORS)


@pytest.mark.parametrize("case", params(NOT_IMAGE_CASES))
def test_bytes_that_are_not_an_image(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


@pytest.mark.parametrize("route", route_params(IMAGE_ROUTES))
def test_not_images_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, NOT_IMAGE_CASES)


# --- formats outside the allow-list ----------------------------------------------------------------

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
OTHER_FORMAT_CASES = cases(IMAGE_ROUTES, OTHER_FORMATS, _image, FORMAT_REFUSED)


def test_the_other_formats_are_real_files_pillow_could_open() -> None:
    """Pillow with no allow-list reads these, so a refusal is the allow-list at work."""
    expected = {"eps": "EPS", "eps-binary-header": "EPS", "fits": "FITS", "avif-ftyp-header": None}
    for name, build in OTHER_FORMATS:
        if name in ("pdf", "svg", "avif-ftyp-header"):
            continue  # Pillow cannot read these at all; they are here for what a sniffer might do
        fmt, size = h.pillow_size(build())
        assert fmt == expected.get(name, name.upper()) and size[0] > 0, name


@pytest.mark.parametrize("case", params(OTHER_FORMAT_CASES))
def test_format_outside_the_allow_list(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


@pytest.mark.parametrize("route", route_params(IMAGE_ROUTES))
def test_other_formats_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, OTHER_FORMAT_CASES)


# --- labels that lie -------------------------------------------------------------------------------

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


def _mislabelled(route: Route, case: tuple[Callable[[], bytes], str, str]) -> dict[str, Any]:
    build, filename, mime = case
    return _labelled(route, build(), filename, mime)


MISLABELLED_CASES = cases(IMAGE_ROUTES, MISLABELLED, _mislabelled, FORMAT_REFUSED)


@pytest.mark.parametrize("case", params(MISLABELLED_CASES))
def test_mislabelled_non_image(gateway: TestClient, case: Case) -> None:
    check_case(gateway, case)


@pytest.mark.parametrize("route", route_params(IMAGE_ROUTES))
def test_mislabelled_then_still_serves(fresh_gateway: TestClient, route: Route) -> None:
    assert_serves_after(fresh_gateway, route, MISLABELLED_CASES)


@pytest.mark.parametrize("route", route_params(IMAGE_ROUTES))
def test_mislabelled_real_image_is_read_by_its_content(gateway: TestClient, route: Route) -> None:
    """A PNG named .jpg (or sent as data:image/jpeg) is sniffed, not trusted: the same answer as
    when it is labelled honestly. Not a refusal case: the allow-list decides, not the label."""
    honest, _ = send(gateway, route, _labelled(route, TINY_PNG, "cat.png", "image/png"))
    lying, elapsed = send(gateway, route, _labelled(route, TINY_PNG, "cat.jpg", "image/jpeg"))
    assert elapsed < TIME_LIMIT_S
    assert honest.status_code == 200 and lying.status_code == 200, shown(lying)
    endpoint = route.endpoint
    assert endpoint.result(lying.json()) == pytest.approx(endpoint.result(honest.json()), abs=1e-5)
    assert_unharmed(gateway)
