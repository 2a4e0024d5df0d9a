"""Test images made on the spot: every format and colour mode the gateway must read."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def picture(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A smooth RGB picture with some structure (gradients and a disc), different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    disc = ((x - cx) ** 2 + (y - cy) ** 2 < (min(width, height) * 0.25) ** 2).astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 255 * disc
    tint = rng.uniform(0, 80, size=3)
    rgb = np.stack([r, g, b], axis=-1) * 0.7 + tint
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def jpeg(seed: int = 0, width: int = 320, height: int = 240) -> bytes:
    return encode(picture(width, height, seed), "JPEG", quality=90)


def sample(fmt: str, seed: int = 0) -> bytes:
    """A small image of `fmt` (jpeg, png, webp, gif, bmp)."""
    fmt = fmt.lower()
    image = picture(seed=seed)
    if fmt == "jpeg":
        return encode(image, "JPEG", quality=90)
    if fmt == "gif":
        return encode(image.convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    return encode(
        image, {"png": "PNG", "webp": "WEBP", "bmp": "BMP"}[fmt], **({"lossless": True} if fmt == "webp" else {})
    )


def with_exif_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def png_16bit_gray(width: int = 200, height: int = 150) -> tuple[bytes, Image.Image]:
    """A 16-bit grayscale PNG, and the 8-bit picture it holds (the high bytes)."""
    y, x = np.mgrid[0:height, 0:width]
    wide = ((x * 65535) // (width - 1)).astype(np.uint16) ^ ((y * 257) % 4096).astype(np.uint16)
    return encode(Image.fromarray(wide), "PNG"), Image.fromarray((wide >> 8).astype(np.uint8), "L")


def animated_gif() -> bytes:
    frames = [picture(seed=s).convert("P", palette=Image.Palette.ADAPTIVE) for s in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def variants() -> dict[str, bytes]:
    """Every format and mode the parity tests cover, by name."""
    base = picture(seed=7)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, base.width, dtype=np.uint8), (base.height, 1))))
    palette_t = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return {
        "jpeg": encode(base, "JPEG", quality=90),
        "jpeg-progressive": encode(base, "JPEG", quality=85, progressive=True),
        "png-rgb": encode(base, "PNG"),
        "png-rgba": encode(rgba, "PNG"),
        "png-palette": encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "png-palette-transparency": encode(palette_t, "PNG", transparency=0),
        "png-gray": encode(base.convert("L"), "PNG"),
        "png-gray-alpha": encode(base.convert("LA"), "PNG"),
        "png-1bit": encode(base.convert("1"), "PNG"),
        "jpeg-gray": encode(base.convert("L"), "JPEG", quality=90),
        "jpeg-cmyk": encode(base.convert("CMYK"), "JPEG", quality=90),
        "webp-lossy": encode(base, "WEBP", quality=80),
        "webp-lossless": encode(base, "WEBP", lossless=True),
        "webp-alpha": encode(rgba, "WEBP", lossless=True),
        "gif": encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        "gif-animated": animated_gif(),
        "bmp": encode(base, "BMP"),
        "tiny-1x1": encode(Image.new("RGB", (1, 1), (200, 30, 60)), "PNG"),
        "small-5x3": encode(picture(5, 3, seed=3), "PNG"),
        "wide-2000x20": encode(picture(2000, 20, seed=4), "JPEG", quality=90),
        "tall-16x900": encode(picture(16, 900, seed=5), "PNG"),
        "exif-rotated": with_exif_orientation(picture(300, 200, seed=6), 6),
    }
