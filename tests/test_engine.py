"""The loaded model (preprocessor + torch encoder) against the reference pipeline (CLIPModel + processor).

The reference is what a user of `transformers` would write by hand: `CLIPModel.from_pretrained`
on the same folder, the checkpoint's own image processor and tokenizer, float32, and
`.pooler_output` of `get_image_features` / `get_text_features`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

from clipgate import random_checkpoint
from clipgate.canonical import TextInput
from clipgate.config import ImagesConfig, ModelConfig
from clipgate.engine import Model, ModelLoadError, load_model, resolve_checkpoint
from clipgate.errors import InvalidRequest, TextTooLong
from clipgate.images import decode_image
from tests import imagegen
from tests.parity import (
    DIM,
    IMAGE_MIN_COSINE,
    MAX_TOKENS,
    PIXEL_ATOL,
    TEXT_MIN_COSINE,
    TEXTS,
    VARIANT_PARAMS,
    VARIANTS,
    Reference,
    cosine,
    load_reference,
    reference_input,
)


@pytest.fixture(scope="module")
def ref(tiny_dir: Path) -> Reference:
    return load_reference(tiny_dir)


@pytest.fixture(scope="module")
def truncating_model(tiny_dir: Path) -> Model:
    return load_model(ModelConfig(id="random:tiny", device="cpu", dtype="float32", truncate_text=True))


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANT_PARAMS)
def test_image_embedding_matches_reference(model: Model, ref: Reference, name: str) -> None:
    data = VARIANTS[name]
    got = model.embed_images([model.preprocessor.preprocess(decode_image(data, ImagesConfig()))])
    assert got.shape == (1, DIM)
    assert got.dtype == np.float32
    want = ref.embed_image(reference_input(data))
    assert cosine(got[0], want) >= IMAGE_MIN_COSINE


@pytest.mark.parametrize("name", VARIANT_PARAMS)
def test_preprocess_matches_reference_pixels(model: Model, ref: Reference, name: str) -> None:
    data = VARIANTS[name]
    got = model.preprocessor.preprocess(decode_image(data, ImagesConfig()))
    want = ref.pixels(reference_input(data))
    assert got.shape == want.shape == (3, 224, 224)
    assert got.dtype == np.float32
    assert float(np.abs(got - want).max()) < PIXEL_ATOL


def test_png_16bit_is_scaled_not_clipped(model: Model, ref: Reference) -> None:
    # Pillow's convert("RGB") clips 16-bit samples at 255; clipgate keeps the high byte instead,
    # so the reference is run on the 8-bit picture the file holds.
    data, eight_bit = imagegen.png_16bit_gray()
    decoded = decode_image(data, ImagesConfig())
    pixels = np.asarray(decoded)
    assert decoded.mode == "RGB"
    assert pixels.min() < 255 and pixels.mean() < 200  # not a white sheet
    assert np.array_equal(pixels[..., 0], np.asarray(eight_bit))
    got = model.embed_images([model.preprocessor.preprocess(decoded)])[0]
    assert cosine(got, ref.embed_image(eight_bit)) >= IMAGE_MIN_COSINE
    assert float(np.abs(model.preprocessor.preprocess(decoded) - ref.pixels(eight_bit)).max()) < PIXEL_ATOL


def test_animated_gif_embeds_its_first_frame(model: Model, ref: Reference) -> None:
    data = imagegen.animated_gif()
    got = model.embed_images([model.preprocessor.preprocess(decode_image(data, ImagesConfig()))])[0]
    frames = Image.open(io.BytesIO(data))
    assert frames.n_frames == 3
    first = ref.embed_image(frames.convert("RGB"))
    frames.seek(1)
    second = ref.embed_image(frames.convert("RGB"))
    assert cosine(got, first) >= IMAGE_MIN_COSINE
    assert cosine(got, first) > cosine(got, second)


def test_exif_rotated_jpeg_is_upright(model: Model, ref: Reference) -> None:
    data = VARIANTS["exif-rotated"]
    stored = Image.open(io.BytesIO(data))
    decoded = decode_image(data, ImagesConfig())
    assert stored.size == (300, 200)
    assert decoded.size == (stored.height, stored.width)
    got = model.embed_images([model.preprocessor.preprocess(decoded)])[0]
    upright = ref.embed_image(ImageOps.exif_transpose(stored))
    assert cosine(got, upright) >= IMAGE_MIN_COSINE
    assert cosine(got, upright) > cosine(got, ref.embed_image(stored.convert("RGB")))


def test_image_batch_matches_single_images(model: Model) -> None:
    names = ["jpeg", "png-gray", "tiny-1x1", "wide-2000x20"]
    pixels = [model.preprocessor.preprocess(decode_image(VARIANTS[n], ImagesConfig())) for n in names]
    batch = model.embed_images(pixels)
    assert batch.shape == (len(names), DIM)
    for i, one in enumerate(pixels):
        assert cosine(batch[i], model.embed_images([one])[0]) >= 0.99999


# --- texts -------------------------------------------------------------------------------------


def test_tokenize_pads_nothing(model: Model, ref: Reference) -> None:
    rows = model.preprocessor.tokenize(TEXTS)
    assert len(rows) == len(TEXTS)
    bos, eos = ref.tokenizer.bos_token_id, ref.tokenizer.eos_token_id
    for text, row in zip(TEXTS, rows, strict=True):
        assert row == ref.tokenizer(text)["input_ids"]
        assert len(row) <= MAX_TOKENS
        assert row[0] == bos and row[-1] == eos
        assert row.count(eos) == 1  # the pad id is EOS here: no padding after it
    assert len({len(row) for row in rows}) >= 5
    assert rows[1] == [bos, eos]


def test_text_batch_equals_each_text_alone(model: Model) -> None:
    rows = model.preprocessor.tokenize(TEXTS)
    batch = model.embed_texts(rows)
    assert batch.shape == (len(TEXTS), DIM)
    for i, row in enumerate(rows):
        alone = model.embed_texts([row])[0]
        assert cosine(batch[i], alone) >= TEXT_MIN_COSINE
        np.testing.assert_allclose(batch[i], alone, rtol=0, atol=1e-4)


def test_text_batch_without_its_mask_is_the_same_to_the_bit(model: Model) -> None:
    """The torch backend leaves out the attention mask of a batch padded at the end (CLIP's text
    tower is causal and pools at the end token): the vectors are those with the mask, exactly.
    A mask that is not trailing padding is still given to the model."""
    ids, mask = model.preprocessor.collate_texts(model.preprocessor.tokenize(TEXTS))
    assert (mask == 0).any()  # the batch really is padded
    tower: Any = model.encoder.model  # type: ignore[attr-defined]
    with torch.inference_mode():
        masked = tower.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    assert np.array_equal(model.encoder.embed_texts(ids, mask), masked.pooler_output.numpy())
    holes = mask.copy()
    holes[:, 1] = 0  # masks the first word of every row: not padding, so it must change the vectors
    with torch.inference_mode():
        want = tower.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(holes))
    got = model.encoder.embed_texts(ids, holes)
    assert np.array_equal(got, want.pooler_output.numpy())
    assert not np.allclose(got, model.encoder.embed_texts(ids, mask), atol=1e-4)


def test_text_embeddings_match_reference(model: Model, ref: Reference) -> None:
    got = model.embed_texts(model.preprocessor.tokenize(TEXTS))
    want = ref.embed_texts(TEXTS)
    assert got.shape == want.shape == (len(TEXTS), DIM)
    for i in range(len(TEXTS)):
        assert cosine(got[i], want[i]) >= TEXT_MIN_COSINE, TEXTS[i]
    # different texts really do give different vectors (the comparison above can tell them apart)
    assert cosine(got[0], got[5]) < 0.999


def test_text_of_exactly_77_tokens_is_accepted(model: Model) -> None:
    rows = model.preprocessor.tokenize(["word " * (MAX_TOKENS - 2)])
    assert len(rows[0]) == MAX_TOKENS
    assert model.embed_texts(rows).shape == (1, DIM)


def test_text_over_77_tokens_is_refused(model: Model) -> None:
    with pytest.raises(InvalidRequest) as caught:
        model.preprocessor.tokenize(["fine", "word " * (MAX_TOKENS - 1)])
    assert caught.value.status == 400
    assert "77" in caught.value.message
    assert "truncate_text" in caught.value.message
    assert "index 1" in caught.value.message


def test_truncating_model_cuts_long_text_to_77_tokens(truncating_model: Model, ref: Reference) -> None:
    long_text = "a very long caption about many things " * 20
    rows = truncating_model.preprocessor.tokenize([long_text, "short"])
    assert len(rows[0]) == MAX_TOKENS
    assert rows[0][0] == ref.tokenizer.bos_token_id
    assert rows[0][-1] == ref.tokenizer.eos_token_id
    assert rows[1] == ref.tokenizer("short")["input_ids"]
    got = truncating_model.embed_texts(rows)
    assert got.shape == (2, DIM) and np.isfinite(got).all()
    want = ref.embed_texts([long_text], truncation=True, max_length=MAX_TOKENS)[0]
    assert cosine(got[0], want) >= TEXT_MIN_COSINE


def test_a_text_may_carry_its_own_truncation_rule(model: Model, ref: Reference) -> None:
    """Per text, whatever the server's setting: cut the end, cut the start, or refuse; under a lower cap."""
    words = [f"w{n}" for n in range(120)]
    long_text = " ".join(words)
    whole = ref.tokenizer(long_text)["input_ids"]
    bos, eos = whole[0], whole[-1]
    end, start, capped = model.preprocessor.tokenize(
        [
            TextInput(long_text, truncate="end"),
            TextInput(long_text, truncate="start"),
            TextInput(long_text, truncate="end", max_tokens=10),
        ]
    )
    assert end == ref.tokenizer(long_text, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    assert start == [bos, *whole[len(whole) - MAX_TOKENS + 1 : -1], eos] and len(start) == MAX_TOKENS
    assert capped == [*whole[:9], eos]
    # a cap above the model's limit is the model's limit; a short text is left as it is
    high, short = model.preprocessor.tokenize([TextInput(long_text, truncate="end", max_tokens=500), "a cat"])
    assert high == end and short == ref.tokenizer("a cat")["input_ids"]
    with pytest.raises(TextTooLong) as caught:
        model.preprocessor.tokenize(["fine", TextInput("a b c d e f g h", truncate="none", max_tokens=5)])
    assert (caught.value.index, caught.value.tokens, caught.value.limit, caught.value.asked) == (1, 10, 5, True)
    assert caught.value.status == 400 and "asked not to truncate" in caught.value.message


def test_a_request_rule_overrides_the_servers_truncation(truncating_model: Model) -> None:
    with pytest.raises(TextTooLong):
        truncating_model.preprocessor.tokenize([TextInput("word " * 100, truncate="none")])
    assert len(truncating_model.preprocessor.tokenize([TextInput("word " * 100)])[0]) == MAX_TOKENS


# --- output contract ---------------------------------------------------------------------------


def test_outputs_are_unnormalized_float32(model: Model) -> None:
    images = model.embed_images(
        [model.preprocessor.preprocess(decode_image(VARIANTS[n], ImagesConfig())) for n in ("jpeg", "bmp")]
    )
    texts = model.embed_texts(model.preprocessor.tokenize(["a dog", "a cat", ""]))
    for out, n in ((images, 2), (texts, 3)):
        assert out.shape == (n, DIM)
        assert out.dtype == np.float32
        assert isinstance(out, np.ndarray)
        norms = np.linalg.norm(out, axis=1)
        assert np.all(np.abs(norms - 1.0) > 0.1), norms


def test_embedding_is_deterministic(model: Model) -> None:
    pixels = [model.preprocessor.preprocess(decode_image(VARIANTS[n], ImagesConfig())) for n in ("jpeg", "png-rgb")]
    assert np.array_equal(model.embed_images(pixels), model.embed_images(pixels))
    rows = model.preprocessor.tokenize(TEXTS)
    assert np.array_equal(model.embed_texts(rows), model.embed_texts(rows))
    again = model.preprocessor.preprocess(decode_image(VARIANTS["jpeg"], ImagesConfig()))
    assert np.array_equal(pixels[0], again)


# --- emulator and checkpoint resolution --------------------------------------------------------


def test_emulator_checkpoint_is_deterministic(tmp_path: Path) -> None:
    first = random_checkpoint.checkpoint_dir("random:tiny", tmp_path / "a")
    second = random_checkpoint.checkpoint_dir("random:tiny", tmp_path / "b")
    assert first != second
    left, right = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert left.keys() == right.keys() and len(left) > 10
    for key in left:
        assert torch.equal(left[key], right[key]), key
    assert (first / "config.json").read_text() == (second / "config.json").read_text()
    assert (first / "preprocessor_config.json").read_text() == (second / "preprocessor_config.json").read_text()
    # built once: a second call reuses the folder
    assert random_checkpoint.checkpoint_dir("random:tiny", tmp_path / "a") == first
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".random-")]  # no staging left


def test_emulator_unknown_kind_names_valid_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="random:huge") as caught:
        random_checkpoint.checkpoint_dir("random:huge", tmp_path)
    assert "random:tiny" in str(caught.value) and "random:base" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # refused before building anything
    with pytest.raises(ModelLoadError, match="random:tiny"):
        resolve_checkpoint(ModelConfig(id="random:huge"))


def test_missing_model_folder_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError) as caught:
        resolve_checkpoint(ModelConfig(id="/nonexistent/dir"))
    message = str(caught.value)
    assert "/nonexistent/dir" in message
    assert "--model DIR" in message and "random:tiny" in message


def test_uncached_hub_id_without_downloads_is_a_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_id = "clipgate-tests/no-such-clip-model"
    with pytest.raises(ModelLoadError) as caught:
        resolve_checkpoint(ModelConfig(id=model_id, allow_download=False))
    message = str(caught.value)
    assert model_id in message and "cache" in message
    assert "--model DIR" in message and "random:tiny" in message


@pytest.mark.parametrize(
    ("dtype", "floor"),
    [pytest.param("bfloat16", 0.999, id="bfloat16"), pytest.param("float16", 0.9999, id="float16")],
)
def test_reduced_precision_weights_stay_near_float32(tiny_dir: Path, model: Model, dtype: str, floor: float) -> None:
    low = load_model(ModelConfig(id="random:tiny", device="cpu", dtype=dtype))
    assert low.card.dtype == dtype
    pixels = model.preprocessor.preprocess(decode_image(imagegen.jpeg(seed=4), ImagesConfig()))
    tokens = model.preprocessor.tokenize(["a photo of a cat", "a dog"])
    for got, want in (
        (low.embed_images([pixels]), model.embed_images([pixels])),
        (low.embed_texts(tokens), model.embed_texts(tokens)),
    ):
        assert got.dtype == np.float32  # served as float32 whatever the weights are
        assert min(cosine(g, w) for g, w in zip(got, want, strict=True)) >= floor


@pytest.mark.parametrize("size", [(1024, 768), (3000, 2000), (700, 1500)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_reduced_jpeg_decode_keeps_reference_parity(model: Model, ref: Reference, size: tuple[int, int]) -> None:
    """The service decodes big JPEGs at reduced size (REDUCED_DECODE_MARGIN x the model's side)."""
    import math

    from clipgate.service import REDUCED_DECODE_MARGIN

    data = imagegen.jpeg(seed=11, width=size[0], height=size[1])
    reduce_to = math.ceil(REDUCED_DECODE_MARGIN * model.card.image_size)
    decoded = decode_image(data, ImagesConfig(), reduce_to=reduce_to)
    assert decoded.size != size  # the shortcut was taken
    pixels = model.preprocessor.preprocess(decoded)
    # Mean gap to the reference's pixels, measured: <= 0.0017 (an eighth of a grey level); a
    # decode one step smaller (margin 1.0 at 3000x2000, 0.5 at the others) is 0.003 or more.
    assert float(np.abs(pixels - ref.pixels(reference_input(data))).mean()) < 0.0025
    got = model.embed_images([pixels])[0]
    assert cosine(got, ref.embed_image(reference_input(data))) >= 0.99999
