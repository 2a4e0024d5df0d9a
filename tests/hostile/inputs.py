"""Hostile payloads for the tests in tests/hostile/, built by hand so nothing large is ever allocated.

Decompression bombs only *declare* huge dimensions in their headers: the bytes stay tiny and
no pixel buffer of the declared size is made here."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image

from tests import imagegen

# --- small valid images -----------------------------------------------------------------------


def tiny_jpeg() -> bytes:
    return imagegen.jpeg(seed=5, width=32, height=24)


def tiny_png() -> bytes:
    return imagegen.encode(imagegen.picture(32, 24, seed=6), "PNG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_as(fmt: str, **params: object) -> bytes:
    """A small real image in a format Pillow can write (TIFF, ICO, PPM, ...)."""
    image = imagegen.picture(32, 24, seed=9)
    if fmt in ("XBM",):
        image = image.convert("1")
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


# --- decompression bombs: huge declared size, tiny body ---------------------------------------


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_declaring(width: int, height: int, *, rows: int = 8, color_type: int = 0) -> bytes:
    """A PNG whose IHDR says width x height (8-bit grey by default) with IDAT holding only the
    first `rows` rows of zeros: a few hundred bytes however large the declared size."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    idat = zlib.compress(b"\x00" * ((width * channels + 1) * rows), 9)
    return PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_ztxt_bomb(expanded: int = 64 * 1024 * 1024) -> bytes:
    """A valid 8x8 PNG carrying a zTXt chunk that inflates to `expanded` bytes (compressed by a
    streaming compressor, so the expanded text is never held here)."""
    packer = zlib.compressobj(9)
    block = b"A" * (1 << 20)
    compressed = b"".join(packer.compress(block) for _ in range(expanded // len(block))) + packer.flush()
    ztxt = b"Comment\x00\x00" + compressed
    base = png_declaring(8, 8, rows=8)
    iend = _png_chunk(b"IEND", b"")
    return base[: -len(iend)] + _png_chunk(b"zTXt", ztxt) + iend


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF89a whose logical screen and single frame are width x height, with a one-pixel LZW stream."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0)  # global colour table of 2 entries
    palette = b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    lzw = b"\x02" + b"\x02\x4c\x01" + b"\x00"  # min code size 2, one sub-block, terminator
    return b"GIF89a" + screen + palette + descriptor + lzw + b";"


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real baseline JPEG with its SOF0 frame header patched to say width x height."""
    data = bytearray(imagegen.encode(imagegen.picture(16, 16, seed=2), "JPEG", quality=80))
    at = data.find(b"\xff\xc0")
    if at < 0:
        raise AssertionError("no SOF0 marker in the generated JPEG")
    # FFC0, length (2), precision (1), height (2), width (2)
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    """A 24-bit BMP header (BITMAPINFOHEADER) declaring width x height, followed by 64 bytes of pixels."""
    pixels = b"\x00" * 64
    offset = 14 + 40
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + pixels


def webp_vp8x_declaring(width: int, height: int) -> bytes:
    """A RIFF/WEBP container with a VP8X chunk declaring a width x height canvas and no image data."""
    flags = b"\x00\x00\x00\x00"
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    vp8x = b"VP8X" + struct.pack("<I", 10) + flags + canvas
    body = b"WEBP" + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


# --- truncated and corrupt --------------------------------------------------------------------


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * fraction))]


def png_bad_crc() -> bytes:
    data = bytearray(tiny_png())
    data[29] ^= 0xFF  # the IHDR CRC (8 signature + 4 length + 4 tag + 13 data = 29)
    return bytes(data)


def png_zero_width() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 16, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def jpeg_garbled_scan() -> bytes:
    data = bytearray(tiny_jpeg())
    start = data.find(b"\xff\xda")  # start of scan; garble what follows its header
    for i in range(start + 20, len(data) - 2):
        data[i] = 0xFF if i % 2 else 0xD9
    return bytes(data)


# --- formats outside the allow-list -----------------------------------------------------------


MINIMAL_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/MediaBox[0 0 20000 20000]/Parent 2 0 R>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)
SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="20000" height="20000">'
    b'<image href="file:///etc/passwd"/><rect width="10" height="10"/></svg>'
)
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n(/etc/passwd) (r) file pop\nshowpage\n%%EOF\n"


def eps_binary_header() -> bytes:
    """The DOS EPS binary header (C5D0D3C6) that Pillow's EPS plugin recognises, wrapping EPS."""
    ps_offset = 30
    return struct.pack("<IIIIIIIH", 0xC6D3D0C5, ps_offset, len(EPS), 0, 0, 0, 0, 0xFFFF) + EPS


def fits(width: int = 16, height: int = 16) -> bytes:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        f"NAXIS1  = {width:20d}",
        f"NAXIS2  = {height:20d}",
        "END",
    ]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    data = bytes(width * height).ljust(2880, b"\x00")
    return header + data


def avif_like() -> bytes:
    """An ISO-BMFF `ftyp` box naming AVIF, as HEIF/AVIF files start."""
    return struct.pack(">I", 24) + b"ftypavif" + struct.pack(">I", 0) + b"avifmif1" + b"\x00" * 32


# --- non-images -------------------------------------------------------------------------------


def zip_bytes() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a.png", tiny_png())
    return buf.getvalue()


ELF_HEADER = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56
HTML = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
PYTHON_PICKLE = b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94."


# --- hand-built multipart bodies --------------------------------------------------------------


def multipart(
    parts: list[tuple[str, str | None, bytes]],
    boundary: str = "hostile-boundary",
    *,
    extra_headers: bytes = b"",
    newline: bytes = b"\r\n",
    close: bool = True,
) -> bytes:
    """A multipart/form-data body: (name, filename or None, data) per part."""
    out = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out.append(
            b"--"
            + boundary.encode()
            + newline
            + b"Content-Disposition: "
            + disposition.encode()
            + newline
            + extra_headers
            + newline
            + data
            + newline
        )
    if close:
        out.append(b"--" + boundary.encode() + b"--" + newline)
    return b"".join(out)


def nested_list(depth: int) -> bytes:
    return b"[" * depth + b'"x"' + b"]" * depth


def nested_object(depth: int) -> bytes:
    return b'{"a":' * depth + b'"x"' + b"}" * depth


def pillow_size(data: bytes) -> tuple[str, tuple[int, int]]:
    """What Pillow's header parser makes of `data`, with no format or pixel limit: (format, size)."""
    import warnings

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return str(image.format), image.size
    finally:
        Image.MAX_IMAGE_PIXELS = old


def webp_vp8l_declaring(width: int, height: int) -> bytes:
    """A small real lossless WebP whose VP8L header is patched to say width x height (max 16384)."""
    data = bytearray(imagegen.encode(imagegen.picture(16, 16, seed=4), "WEBP", lossless=True))
    at = data.find(b"VP8L")
    if at < 0 or data[at + 8] != 0x2F:
        raise AssertionError("no VP8L chunk in the generated WebP")
    field = int.from_bytes(data[at + 9 : at + 13], "little")
    field = (field & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[at + 9 : at + 13] = field.to_bytes(4, "little")
    return bytes(data)
