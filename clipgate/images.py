"""Decode and verify image bytes before they are queued: formats, limits, EXIF, colour modes."""

from __future__ import annotations

import binascii
import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from clipgate.canonical import ImageInfo
from clipgate.config import ImagesConfig
from clipgate.errors import ImageError, PayloadTooLarge

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Past this many crops' worth of pixels, the resize step only resizes what the crop keeps.
MAX_RESIZED_AREA_FACTOR = 8
Pixels = NDArray[np.float32]
"""A preprocessed image: float32, (3, height, width)."""


_DATA_URI = re.compile(r"^\s*data:[^,]{0,100};base64,", re.IGNORECASE)


def decode_base64(value: str) -> bytes:
    """Decode a base64 image string as clients send it: an optional `data:...;base64,` prefix,
    line breaks (`base64.encodebytes` puts one every 76 characters), URL-safe letters, or
    missing padding. Anything else that is not base64 is refused."""
    match = _DATA_URI.match(value)
    if match:
        value = value[match.end() :]
    if not value.endswith("==="):  # strict mode lets a run of '=' follow a whole quad; we do not
        try:  # the common case first: canonical padded base64 on one line, at C speed
            data = binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            pass  # line breaks, URL-safe letters, missing padding, or not base64: the path below decides
        else:
            if not data:
                raise ImageError("Empty image payload.")
            return data
    try:
        raw = value.encode("ascii").translate(None, b" \t\n\r\f\v").replace(b"-", b"+").replace(b"_", b"/")
    except UnicodeEncodeError as exc:
        raise ImageError("Malformed base64 input image.") from exc
    body = raw.rstrip(b"=")
    if not body:  # nothing, or only padding
        raise ImageError("Empty image payload.")
    if len(raw) - len(body) > 2 or len(body) % 4 == 1:
        raise ImageError("Malformed base64 input image.")
    try:
        return binascii.a2b_base64(body + b"=" * (-len(body) % 4), strict_mode=True)
    except binascii.Error as exc:
        raise ImageError("Malformed base64 input image.") from exc


def decode_image(data: bytes, limits: ImagesConfig, *, reduce_to: int | None = None) -> Image.Image:
    """Return the image as an 8-bit RGB `Image`, upright per its EXIF orientation (see `decode_described`)."""
    return decode_described(data, limits, reduce_to=reduce_to)[0]


def decode_described(
    data: bytes, limits: ImagesConfig, *, reduce_to: int | None = None
) -> tuple[Image.Image, ImageInfo]:
    """Return the image as an 8-bit RGB `Image`, upright per its EXIF orientation, and what it
    was as sent: its upright size, format and bits per sample.

    With `reduce_to`, a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (libjpeg scales in
    the DCT, skipping most of the work) as long as its shortest side stays at least `reduce_to`
    pixels: a caller that will shrink the image anyway gets nearly the same pixels, much sooner.

    Multi-frame images (GIF, animated WebP) give their first frame. Transparent pixels are
    composited over white, as the reference pipeline (transformers' `convert_to_rgb`) does.
    Raises ImageError for anything that is not a whole image of an allowed format, and
    PayloadTooLarge for images over the byte or pixel limits (`limits`: the [images] section's
    max_bytes, max_pixels and formats).
    """
    if not data:
        raise ImageError("Empty image payload.")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"The image is {len(data)} bytes; the limit is {limits.max_bytes}.")
    try:
        with warnings.catch_warnings():
            # Corrupt EXIF only warns (the image still decodes); a decompression bomb is an error.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except UnidentifiedImageError as exc:
        raise ImageError("Data is not an image in a supported format (" + ", ".join(limits.formats) + ").") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(exc, limits) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError("The image header is corrupt.") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("The image has no pixels.")
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"The image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}."
        )
    fmt, depth = (image.format or "").lower(), _bit_depth(image)
    if reduce_to is not None and image.format == "JPEG" and min(width, height) > 2 * reduce_to:
        scale = reduce_to / min(width, height)
        image.draft(None, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            stored = image.size
            ImageOps.exif_transpose(image, in_place=True)  # a copy costs a full-size image, for nothing
            upright = (width, height) if image.size == stored else (height, width)
            return _to_rgb(image), ImageInfo(*upright, format=fmt, bit_depth=depth)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(exc, limits) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError("The image data is truncated or corrupt.") from exc


def _bit_depth(image: Image.Image) -> int:
    """Bits per sample of an opened image, from its mode."""
    if image.mode == "1":
        return 1
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        return 16  # Pillow opens 16-bit PNG samples as mode I
    return 32 if image.mode in ("I", "F") else 8


def _too_many_pixels(exc: Exception, limits: ImagesConfig) -> PayloadTooLarge:
    found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow: "Image size (N pixels) exceeds limit of ..."
    size = f" is {found.group(1)} pixels;" if found else " has too many pixels;"
    return PayloadTooLarge(f"The image{size} the limit is {_pixel_limit(limits)}.")


def _pixel_limit(limits: ImagesConfig) -> int:
    """Ours, or Pillow's own if that is lower (its bomb warning is an error here)."""
    pillow = Image.MAX_IMAGE_PIXELS
    return min(limits.max_pixels, pillow) if pillow else limits.max_pixels


def limit_pillow(max_pixels: int) -> None:
    """Lower Pillow's process-wide decompression-bomb threshold (89 MP by default) to ours, so
    any image Pillow opens anywhere in the server is held to it, not only those we check."""
    if not Image.MAX_IMAGE_PIXELS or Image.MAX_IMAGE_PIXELS > max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's own conversion clips 16-bit samples to 255 (a white picture); scale instead.
        # Mode "I" from a PNG holds 16-bit samples too.
        wide = np.asarray(image).astype(np.int64)
        return Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        # As the reference pipeline does (transformers' convert_to_rgb): transparency over white.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True, slots=True)
class ImageTransform:
    """CLIP's preprocessing, done with Pillow and numpy: the steps of the checkpoint's
    `CLIPImageProcessor` (shortest-edge resize, centre crop, rescale, normalize), in order."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    rescale: float = 1 / 255
    resample: int = Image.Resampling.BICUBIC

    @classmethod
    def from_processor_config(cls, cfg: dict[str, object]) -> ImageTransform:
        """Read a `preprocessor_config.json` as CLIP checkpoints ship it."""
        size = cfg.get("size", 224)
        shortest = size.get("shortest_edge") if isinstance(size, dict) else size
        crop = cfg.get("crop_size", shortest)
        if isinstance(crop, dict):
            crop_h, crop_w = crop.get("height"), crop.get("width")
        else:
            crop_h = crop_w = crop
        if not all(isinstance(v, int) for v in (shortest, crop_h, crop_w)):
            raise ValueError(f"unsupported image processor sizes: size={size!r} crop_size={crop!r}")
        if crop_h > shortest or crop_w > shortest:  # type: ignore[operator]
            raise ValueError(f"unsupported image processor: crop {crop!r} larger than the resize {size!r}")
        for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if cfg.get(flag, True) is not True:
                raise ValueError(f"unsupported image processor setting {flag}={cfg[flag]!r}")
        mean = tuple(float(v) for v in cfg.get("image_mean", CLIP_MEAN))  # type: ignore[attr-defined]
        std = tuple(float(v) for v in cfg.get("image_std", CLIP_STD))  # type: ignore[attr-defined]
        return cls(
            shortest_edge=shortest,  # type: ignore[arg-type]
            crop_height=crop_h,  # type: ignore[arg-type]
            crop_width=crop_w,  # type: ignore[arg-type]
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            rescale=float(cfg.get("rescale_factor", 1 / 255)),  # type: ignore[arg-type]
            resample=int(cfg.get("resample", Image.Resampling.BICUBIC)),  # type: ignore[call-overload]
        )

    def __call__(self, image: Image.Image) -> Pixels:
        """RGB image -> float32 array of shape (3, crop_height, crop_width)."""
        return self.normalize(self.crop(image))

    def crop(self, image: Image.Image) -> NDArray[np.uint8]:
        """RGB image -> the resized and cropped uint8 array, (crop_height, crop_width, 3): the
        compact form that crosses processes in Ray Serve's split mode (a quarter of float32's bytes)."""
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        top = (new_h - self.crop_height) // 2
        left = (new_w - self.crop_width) // 2
        if new_w * new_h > MAX_RESIZED_AREA_FACTOR * self.crop_width * self.crop_height:
            # A very long, thin image would be resized to a huge strip only to keep its middle:
            # resize just the source box the crop keeps (1x30000 px would otherwise take 4.5 GB).
            sx, sy = width / new_w, height / new_h
            box = (left * sx, top * sy, (left + self.crop_width) * sx, (top + self.crop_height) * sy)
            pixels = np.asarray(image.resize((self.crop_width, self.crop_height), resample=self.resample, box=box))
        else:
            if (new_w, new_h) != (width, height):
                image = image.resize((new_w, new_h), resample=self.resample)
            pixels = np.asarray(image)[top : top + self.crop_height, left : left + self.crop_width]
        return pixels

    def normalize(self, pixels: NDArray[np.uint8]) -> Pixels:
        """A `crop`ped uint8 array -> float32, channels first, rescaled and normalized."""
        scale = np.float32(self.rescale)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        out = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)  # channels first, then
        out *= scale  # in place: the same arithmetic, in the same order, without the temporaries
        out -= mean[:, None, None]
        out /= std[:, None, None]
        return out
