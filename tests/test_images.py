"""decode_image (formats, limits, EXIF, colour modes, hostile bytes) and ImageTransform (CLIP preprocessing)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from clipgate import random_checkpoint
from clipgate.canonical import ImageInfo
from clipgate.config import ImagesConfig
from clipgate.errors import ImageError, PayloadTooLarge
from clipgate.images import ImageTransform, decode_described, decode_image
from tests import imagegen

VARIANTS = imagegen.variants()
LIMITS = ImagesConfig()
# Same bound as tests/test_engine.py: float32 rounding only (measured <= 4.8e-7); one grey level is 0.014.
PIXEL_ATOL = 1e-5
PROPERTY = settings(max_examples=200, deadline=None, database=None, derandomize=True)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG of under 100 bytes that declares width x height 8-bit grey pixels but holds almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def decode_strictly(data: bytes, limits: ImagesConfig = LIMITS) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return decode_image(data, limits)


def over_white(image: Image.Image) -> Image.Image:
    """The RGB picture a viewer shows: transparency composited over white (transformers' convert_to_rgb)."""
    if "A" not in image.getbands() and image.info.get("transparency") is None:
        return image.convert("RGB")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.fixture(scope="module")
def reference_processor() -> object:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**random_checkpoint.PREPROCESSOR_CONFIG)


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in VARIANTS])
def test_every_variant_decodes_to_rgb(name: str) -> None:
    data = VARIANTS[name]
    decoded = decode_strictly(data)
    assert decoded.mode == "RGB"
    stored = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert decoded.size == stored.size
    assert np.asarray(decoded).shape == (stored.height, stored.width, 3)
    assert np.array_equal(np.asarray(decoded), np.asarray(over_white(stored)))


@pytest.mark.parametrize("fmt", [pytest.param("PNG", id="png"), pytest.param("WEBP", id="webp")])
def test_transparency_is_composited_over_white(fmt: str) -> None:
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, under varying alpha
    rgba[:, 0:2, 3] = 0  # fully transparent -> white
    rgba[:, 2:4, 3] = 255  # opaque -> the colour itself
    rgba[:, 4:6, 3] = 128  # half -> halfway to white
    params = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    decoded = np.asarray(decode_strictly(imagegen.encode(Image.fromarray(rgba, "RGBA"), fmt, **params))).astype(int)
    assert decoded.shape == (4, 6, 3)
    assert (decoded[:, 0:2] == 255).all()
    assert (decoded[:, 2:4] == [200, 0, 0]).all()
    assert (np.abs(decoded[:, 4:6] - [228, 127, 127]) <= 1).all()


def test_animated_gif_gives_frame_zero() -> None:
    data = imagegen.animated_gif()
    frames = Image.open(io.BytesIO(data))
    assert frames.n_frames == 3
    first = np.asarray(frames.convert("RGB"))
    frames.seek(1)
    second = np.asarray(frames.convert("RGB"))
    decoded = np.asarray(decode_strictly(data))
    assert np.array_equal(decoded, first)
    assert not np.array_equal(decoded, second)


def test_animated_webp_gives_frame_zero() -> None:
    pictures = [imagegen.picture(seed=s) for s in (1, 2, 3)]
    buf = io.BytesIO()
    pictures[0].save(buf, format="WEBP", save_all=True, append_images=pictures[1:], lossless=True, duration=100)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 3
    assert np.array_equal(np.asarray(decode_strictly(buf.getvalue())), np.asarray(pictures[0]))


def palette_png_with_byte_transparency() -> bytes:
    palette = imagegen.picture(seed=7).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return imagegen.encode(palette, "PNG", transparency=bytes(range(0, 256, 4)))


def test_palette_with_transparency_raises_no_warning() -> None:
    data = palette_png_with_byte_transparency()
    plain = Image.open(io.BytesIO(data))
    with pytest.warns(UserWarning, match="Transparency"):  # what the naive conversion does
        plain.convert("RGB")
    for sample in (data, VARIANTS["png-palette-transparency"]):
        decoded = decode_strictly(sample)
        assert decoded.mode == "RGB" and decoded.size == (320, 240)
        assert np.array_equal(np.asarray(decoded), np.asarray(over_white(Image.open(io.BytesIO(sample)))))
    # the byte-transparency sample really has see-through pixels, and they came out white
    alpha = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))[..., 3]
    assert (alpha == 0).any()
    assert (np.asarray(decode_strictly(data))[alpha == 0] == 255).all()


# orientation -> the transpose that makes the stored picture upright
ORIENTATIONS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("orientation", [pytest.param(k, id=f"orientation-{k}") for k in ORIENTATIONS])
def test_exif_orientation_is_applied(orientation: int) -> None:
    stored = imagegen.picture(64, 48, seed=9)
    method = ORIENTATIONS[orientation]
    upright = np.asarray(stored if method is None else stored.transpose(method)).astype(np.int16)
    decoded = np.asarray(decode_strictly(imagegen.with_exif_orientation(stored, orientation))).astype(np.int16)
    assert decoded.shape == upright.shape
    assert np.abs(decoded - upright).mean() < 3  # JPEG noise; a wrong orientation is off by tens


def test_exif_orientation_in_png_is_applied() -> None:
    stored = imagegen.picture(64, 48, seed=9)
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_strictly(imagegen.encode(stored, "PNG", exif=exif.tobytes()))
    assert np.array_equal(np.asarray(decoded), np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))


def test_16bit_png_keeps_the_high_byte() -> None:
    data, eight_bit = imagegen.png_16bit_gray()
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = np.asarray(decode_strictly(data))
    assert decoded.min() < 255 and decoded.mean() < 200  # not clipped to white
    for channel in range(3):
        assert np.array_equal(decoded[..., channel], np.asarray(eight_bit))


def test_corrupt_exif_raises_no_warning() -> None:
    # An IFD that claims one entry and is cut short: the picture itself is intact.
    exif = b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01"  # header, IFD at 8, 1 entry, ...
    data = imagegen.encode(imagegen.picture(64, 48), "JPEG", exif=exif)
    try:
        decoded = decode_strictly(data)
    except ImageError:
        return  # refusing it is acceptable too; a stray warning (a 500 under -W error) is not
    assert decoded.mode == "RGB" and decoded.size == (64, 48)


# --- errors ------------------------------------------------------------------------------------


def test_empty_bytes_are_an_image_error() -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(b"", LIMITS)
    assert caught.value.status == 400


def test_random_bytes_name_the_supported_formats() -> None:
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError) as caught:
        decode_image(data, LIMITS)
    assert caught.value.status == 400
    for fmt in LIMITS.formats:  # the default set
        assert fmt in caught.value.message


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in VARIANTS if n not in ("gif-animated", "tiny-1x1")])
def test_image_cut_in_half_is_an_image_error(name: str) -> None:
    data = VARIANTS[name]
    with pytest.raises(ImageError) as caught:
        decode_strictly(data[: len(data) // 2])
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "fmt, params",
    [
        pytest.param("TIFF", {}, id="tiff"),
        pytest.param("ICO", {"sizes": [(64, 64)]}, id="ico"),
    ],
)
def test_formats_outside_the_allow_list_are_refused(fmt: str, params: dict[str, object]) -> None:
    data = imagegen.encode(imagegen.picture(64, 64), fmt, **params)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself reads it
    with pytest.raises(ImageError) as caught:
        decode_image(data, LIMITS)
    assert caught.value.status == 400
    assert "PNG" in caught.value.message


def test_allow_list_is_configurable() -> None:
    jpeg = imagegen.sample("jpeg")
    assert decode_image(jpeg, ImagesConfig(formats=("JPEG",))).mode == "RGB"
    with pytest.raises(ImageError, match=r"\(PNG\)"):
        decode_image(jpeg, ImagesConfig(formats=("PNG",)))


def test_too_many_pixels_is_refused_before_decoding(no_pixel_decoding: None) -> None:
    data = imagegen.sample("png")  # 320x240
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(data, ImagesConfig(max_pixels=320 * 240 - 1))
    assert caught.value.status == 413
    assert "320x240" in caught.value.message


def test_exactly_max_pixels_is_accepted() -> None:
    assert decode_image(imagegen.sample("png"), ImagesConfig(max_pixels=320 * 240)).size == (320, 240)


@pytest.mark.parametrize(
    "side",
    [
        pytest.param(10_000, id="10000x10000-over-clipgate-limit"),  # under Pillow's own bomb limit
        pytest.param(100_000, id="100000x100000-over-pillow-limit"),
    ],
)
def test_huge_declared_dimensions_are_refused_from_the_header(side: int, no_pixel_decoding: None) -> None:
    data = png_header_only(side, side)
    assert len(data) < 100
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(data, LIMITS)
    assert caught.value.status == 413
    assert str(LIMITS.max_pixels) in caught.value.message
    assert str(side * side) in caught.value.message or f"{side}x{side}" in caught.value.message  # names the size


def test_over_max_bytes_is_refused() -> None:
    data = imagegen.sample("png")
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(data, ImagesConfig(max_bytes=len(data) - 1))
    assert caught.value.status == 413
    assert decode_image(data, ImagesConfig(max_bytes=len(data))).mode == "RGB"


# --- hostile input, property-based -------------------------------------------------------------

MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 "]


def decodes_or_refuses(data: bytes) -> None:
    try:
        image = decode_strictly(data)
    except (ImageError, PayloadTooLarge) as exc:
        assert exc.status in (400, 413)
    else:
        assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


@PROPERTY
@given(
    st.one_of(
        st.binary(max_size=4096),
        st.tuples(st.sampled_from(MAGICS), st.binary(max_size=4096)).map(lambda parts: parts[0] + parts[1]),
    )
)
def test_arbitrary_bytes_only_raise_image_errors(data: bytes) -> None:
    decodes_or_refuses(data)


@PROPERTY
@given(name=st.sampled_from(sorted(VARIANTS)), data=st.data())
def test_truncated_images_only_raise_image_errors(name: str, data: st.DataObject) -> None:
    full = VARIANTS[name]
    cut = data.draw(st.integers(min_value=0, max_value=len(full)), label="cut")
    decodes_or_refuses(full[:cut])


@PROPERTY
@given(name=st.sampled_from(sorted(VARIANTS)), data=st.data())
def test_corrupted_images_only_raise_image_errors(name: str, data: st.DataObject) -> None:
    raw = bytearray(VARIANTS[name])
    # mostly the headers (where parsers branch), sometimes anywhere
    end = data.draw(st.sampled_from([min(len(raw), 256), len(raw)]), label="region")
    for _ in range(data.draw(st.integers(1, 6), label="flips")):
        raw[data.draw(st.integers(0, end - 1), label="at")] = data.draw(st.integers(0, 255), label="byte")
    decodes_or_refuses(bytes(raw))


# --- ImageTransform ----------------------------------------------------------------------------

SHAPES = {
    "wide": imagegen.picture(640, 120, seed=1),
    "tall": imagegen.picture(90, 500, seed=2),
    "tiny-1x1": Image.new("RGB", (1, 1), (200, 30, 60)),
    "odd-301x225": imagegen.picture(301, 225, seed=3),  # odd crop margins: left offset rounding
    "odd-225x301": imagegen.picture(225, 301, seed=6),  # ... and top offset rounding
    "exact-224": imagegen.picture(224, 224, seed=4),
    "small-5x3": imagegen.picture(5, 3, seed=5),
}


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in SHAPES])
def test_transform_matches_reference_processor(name: str, reference_processor: object) -> None:
    image = SHAPES[name]
    out = ImageTransform.from_processor_config(random_checkpoint.PREPROCESSOR_CONFIG)(image)
    assert out.shape == (3, 224, 224)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    want = reference_processor(images=image, return_tensors="np")["pixel_values"][0]
    assert float(np.abs(out - want).max()) < PIXEL_ATOL


def test_transform_follows_a_non_default_config() -> None:
    from transformers import CLIPImageProcessorPil

    cfg = {
        **random_checkpoint.PREPROCESSOR_CONFIG,
        "size": {"shortest_edge": 256},
        "crop_size": {"height": 240, "width": 200},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
        "resample": 2,
    }
    transform = ImageTransform.from_processor_config(cfg)
    assert (transform.shortest_edge, transform.crop_height, transform.crop_width) == (256, 240, 200)
    image = SHAPES["odd-301x225"]
    out = transform(image)
    assert out.shape == (3, 240, 200)
    want = CLIPImageProcessorPil(**cfg)(images=image, return_tensors="np")["pixel_values"][0]
    assert float(np.abs(out - want).max()) < PIXEL_ATOL


def test_transform_reads_the_emulator_config_as_the_clip_defaults() -> None:
    assert ImageTransform.from_processor_config(random_checkpoint.PREPROCESSOR_CONFIG) == ImageTransform()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"do_center_crop": False}, id="no-center-crop"),
        pytest.param({"do_normalize": False}, id="no-normalize"),
        pytest.param({"crop_size": {"height": 300, "width": 300}}, id="crop-larger-than-resize"),
        pytest.param({"size": {"height": 224, "width": 224}}, id="fixed-size-resize"),
    ],
)
def test_transform_refuses_configs_it_cannot_honour(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ImageTransform.from_processor_config({**random_checkpoint.PREPROCESSOR_CONFIG, **change})


@pytest.mark.parametrize("height", [pytest.param(3_000, id="1x3000"), pytest.param(30_000, id="1x30000")])
def test_extreme_aspect_ratio_stays_cheap(height: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 1-pixel-wide PNG of a few hundred bytes is well within max_pixels, but resizing its short
    # side to 224 first asks Pillow for 224 x (224*height) pixels: 150 M (~6 s) for height 3000,
    # 1.5 G (4.5 GB) for 30000, and a 1x300000 upload (1.2 kB) needs 45 GB.
    data = imagegen.encode(Image.new("RGB", (1, height), (10, 120, 250)), "PNG")
    assert len(data) < 2000
    resize = Image.Image.resize

    def bounded_resize(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        assert size[0] * size[1] <= 4_000_000, f"resize to {size} ({size[0] * size[1]:,} pixels)"
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded_resize)
    try:
        out = ImageTransform()(decode_image(data, LIMITS))
    except ImageError:
        return  # refusing such an image is a fine fix too
    assert out.shape == (3, 224, 224)
    defaults = ImageTransform()
    expected = (np.array([10, 120, 250], np.float32) / 255 - np.array(defaults.mean, np.float32)) / np.array(
        defaults.std, np.float32
    )
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape), atol=1e-3)


# --- reduced-size JPEG decoding ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "size", "want"),
    [
        pytest.param("JPEG", (1024, 768), (512, 384), id="jpeg-halved"),
        pytest.param("JPEG", (4000, 3000), (500, 375), id="jpeg-eighth"),
        pytest.param("JPEG", (800, 2400), (400, 1200), id="jpeg-portrait-halved"),
        pytest.param("JPEG", (640, 480), (640, 480), id="jpeg-too-small-to-reduce"),
        pytest.param("PNG", (1024, 768), (1024, 768), id="png-never-reduced"),
    ],
)
def test_reduced_decode_keeps_the_shortest_side_at_least_reduce_to(
    fmt: str, size: tuple[int, int], want: tuple[int, int]
) -> None:
    data = imagegen.encode(imagegen.picture(*size), fmt)
    image = decode_image(data, ImagesConfig(), reduce_to=336)
    assert image.size == want
    assert image.mode == "RGB"
    assert min(image.size) >= 336


def test_reduced_decode_respects_exif_orientation() -> None:
    upright = imagegen.picture(800, 1600)
    rotated = upright.transpose(Image.Transpose.ROTATE_90)  # stored landscape, tagged to turn upright
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 CW to display
    data = imagegen.encode(rotated, "JPEG", exif=exif.tobytes(), quality=95)
    image = decode_image(data, ImagesConfig(), reduce_to=336)
    assert image.size == (400, 800)
    full = decode_image(data, ImagesConfig()).resize((400, 800))
    diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(full, dtype=np.int16))
    assert diff.mean() < 4  # the same picture, the same way up


def test_reduced_decode_still_checks_limits_on_the_full_size() -> None:
    data = imagegen.encode(imagegen.picture(2000, 1500), "JPEG")
    with pytest.raises(PayloadTooLarge):
        decode_image(data, ImagesConfig(max_pixels=2000 * 1500 - 1), reduce_to=336)


@given(st.binary(max_size=300), st.sampled_from(["plain", "lines", "urlsafe", "unpadded", "data-uri"]))
@settings(max_examples=200, deadline=None)
def test_base64_in_every_client_spelling_decodes_to_the_same_bytes(data: bytes, spelling: str) -> None:
    import base64

    from clipgate.images import decode_base64

    text = {
        "plain": base64.b64encode(data).decode(),
        "lines": base64.encodebytes(data).decode(),
        "urlsafe": base64.urlsafe_b64encode(data).decode(),
        "unpadded": base64.b64encode(data).decode().rstrip("="),
        "data-uri": "data:image/jpeg;base64," + base64.b64encode(data).decode(),
    }[spelling]
    if data:
        assert decode_base64(text) == data
    else:
        with pytest.raises(ImageError, match="Empty"):
            decode_base64(text)


def test_pillow_bomb_warning_is_an_error_not_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 320x240 sample is now "a bomb" to Pillow
    with pytest.raises(PayloadTooLarge, match="76800 pixels"):
        decode_image(imagegen.sample("png"), ImagesConfig())


def test_the_service_lowers_pillows_bomb_threshold_to_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipgate.images import limit_pillow

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    limit_pillow(40_000_000)
    assert Image.MAX_IMAGE_PIXELS == 40_000_000
    limit_pillow(100_000_000)  # never raised again
    assert Image.MAX_IMAGE_PIXELS == 40_000_000


@pytest.mark.parametrize(
    ("data", "reduce_to", "expected"),
    [
        pytest.param(imagegen.sample("jpeg"), None, ImageInfo(320, 240, "jpeg", 8), id="jpeg"),
        pytest.param(imagegen.sample("gif"), None, ImageInfo(320, 240, "gif", 8), id="gif"),
        pytest.param(imagegen.sample("bmp"), None, ImageInfo(320, 240, "bmp", 8), id="bmp"),
        pytest.param(imagegen.png_16bit_gray()[0], None, ImageInfo(200, 150, "png", 16), id="png-16-bit"),
        pytest.param(
            imagegen.with_exif_orientation(imagegen.picture(320, 240), 6),
            None,
            ImageInfo(240, 320, "jpeg", 8),
            id="exif",
        ),
        pytest.param(imagegen.jpeg(width=1600, height=1200), 224, ImageInfo(1600, 1200, "jpeg", 8), id="reduced"),
        pytest.param(
            imagegen.with_exif_orientation(imagegen.picture(1600, 1200), 8),
            224,
            ImageInfo(1200, 1600, "jpeg", 8),
            id="reduced-exif",
        ),
    ],
)
def test_decode_describes_the_image_as_sent(data: bytes, reduce_to: int | None, expected: ImageInfo) -> None:
    image, described = decode_described(data, ImagesConfig(), reduce_to=reduce_to)
    assert described == expected
    assert image.mode == "RGB"
    if reduce_to is not None:
        assert max(image.size) < max(expected.width, expected.height)  # decoded at reduced size all the same
