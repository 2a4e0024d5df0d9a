"""Hostile multipart bodies on SambaStudio's file route: too many parts, huge parts and headers,
broken boundaries and dispositions. The server is served right after each case, in the same test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.hostile import inputs as h
from tests.hostile.checks import check_then_serve
from tests.hostile.routes import BY_NAME, IMAGE_ERRORS, TINY_JPEG, TOO_MANY, Case, Route, cases, params, raw_json

FORM = "multipart/form-data; boundary=hostile-boundary"
VALID_MULTIPART = h.multipart([("predict_file", "tiny.jpg", TINY_JPEG)])
JUNK = b"not an image at all"


def _part(headers: bytes, data: bytes = JUNK, boundary: bytes = b"hostile-boundary") -> bytes:
    return b"--" + boundary + b"\r\n" + headers + b"\r\n" + data + b"\r\n--" + boundary + b"--\r\n"


MULTIPART_BODIES: list[tuple[str, tuple[str | None, Callable[[], bytes], frozenset[int]]]] = [
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


def _multipart(route: Route, case: tuple[str | None, Callable[[], bytes], frozenset[int]]) -> dict[str, Any]:
    content_type, build, _ = case
    return raw_json(build(), content_type)


MULTIPART_CASES = cases([BY_NAME["sn-file"]], MULTIPART_BODIES, _multipart, lambda case: case[2])


@pytest.mark.parametrize("case", params(MULTIPART_CASES))
def test_hostile_multipart(gateway: TestClient, case: Case) -> None:
    check_then_serve(gateway, case.route, case.make(), case.allowed)
