"""Read a multipart/form-data body into parts, keeping every part's bytes exactly as sent.

Starlette's form parser decodes parts that have no filename as text (UTF-8, else Latin-1),
which corrupts an image sent as a plain field (`curl -F 'predict_file=<cat.jpg'`); this reads
the body with python-multipart's low-level parser instead."""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from clipgate.canonical import FormPart
from clipgate.errors import InvalidRequest, PayloadTooLarge

MAX_BOUNDARY = 70  # RFC 2046; python-multipart itself stops at 256 with an exception of its own


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: list[bytes] = field(default_factory=list)


def parse_form(body: bytes | bytearray, content_type_header: str, *, max_parts: int) -> list[FormPart]:
    """Split `body` into its parts. Raises InvalidRequest for a body that is not multipart,
    and PayloadTooLarge past `max_parts` parts."""
    media_type, options = parse_options_header(content_type_header)
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Expected a multipart/form-data body with a boundary.")
    if len(boundary) > MAX_BOUNDARY:
        raise InvalidRequest(f"The multipart boundary is longer than {MAX_BOUNDARY} characters (RFC 2046).")
    parts: list[_Part] = []
    ended: list[bool] = []
    header_name: list[bytes] = []
    header_value: list[bytes] = []

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise PayloadTooLarge(f"The multipart body has more than {max_parts} parts.")
        parts.append(_Part())

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.append(data[start:end])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.append(data[start:end])

    def on_header_end() -> None:
        parts[-1].headers[b"".join(header_name).lower()] = b"".join(header_value)
        header_name.clear()
        header_value.clear()

    callbacks = {
        "on_end": lambda: ended.append(True),
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)  # type: ignore[arg-type]  # a bytearray is read as bytes are
        parser.finalize()
    except FormParserError as exc:  # MultipartParseError and the parser's other refusals
        raise InvalidRequest(f"The multipart body cannot be parsed: {exc}") from exc
    if not ended:  # a truncated upload can look complete up to its last part
        raise InvalidRequest("The multipart body ends before its closing boundary.")
    return [_form_part(part) for part in parts]


def _form_part(part: _Part) -> FormPart:
    disposition, options = parse_options_header(part.headers.get(b"content-disposition", b""))
    name = options.get(b"name")
    if disposition != b"form-data" or name is None:
        raise InvalidRequest("Each multipart part needs a Content-Disposition: form-data header with a name.")
    filename = options.get(b"filename")
    content_type = part.headers.get(b"content-type")
    return FormPart(
        name=name.decode("utf-8", "replace"),
        data=b"".join(part.data),
        filename=filename.decode("utf-8", "replace") if filename is not None else None,
        content_type=content_type.decode("latin-1") if content_type is not None else None,
    )
