"""What the benchmark sends: photo-like 1024x768 JPEGs and short and long captions, made
deterministically here so every run (and every machine) measures the same work."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = (1024, 768)

SHORT_TEXTS = (
    "a photo of a cat",
    "a dog running on the beach",
    "a red car parked on a street",
    "two people riding bicycles",
    "a bowl of fresh fruit",
    "a mountain lake at sunrise",
    "a plate of spaghetti",
    "a city skyline at night",
    "a child flying a kite",
    "a cup of coffee on a table",
    "an old wooden boat",
    "a field of sunflowers",
    "a black and white photo of a train",
    "a bird sitting on a branch",
    "a laptop on a desk",
    "a snowy forest path",
)

_WORDS = (
    "photo of a quiet harbour town with colourful houses along the water small fishing boats moored "
    "at the pier gulls circling overhead and a lighthouse on the rocky point under a pale blue sky "
    "while people walk along the promenade past cafes with striped awnings and flower boxes"
).split()


def long_text(seed: int, tokens: int = 75) -> str:
    """A caption of about `tokens` BPE tokens (these words are one token each); with the start
    and end tokens it fills CLIP's 77-token context."""
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(_WORDS, size=tokens))


def photo_jpeg(seed: int, size: tuple[int, int] = IMAGE_SIZE, quality: int = 90) -> bytes:
    """A JPEG with a photo's mix of smooth regions, edges and fine texture, so it costs what a
    real photo costs to decode (flat or pure-noise images decode much faster or slower)."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, size=(height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(24):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(20, 200))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    grain = rng.normal(0, 9, size=(height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()
