"""What the parity suites share: the reference pipeline (CLIPModel + processor, as a user of
`transformers` would write it), the reference pictures and texts, and how vectors are compared.
tests/test_engine.py holds the torch backend to it, tests/test_onnx.py the ONNX backend."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests import imagegen

DIM = 512
MAX_TOKENS = 77

# Both pipelines resize with the same Pillow call and crop the same uint8 pixels, so they differ
# only in float32 rounding of rescale/normalize (values within about +-2.2, so a few ulps: the
# measured worst case is 4.8e-7). One grey level is 1/255/0.2758 = 0.0142 after normalizing, so
# this bound is ~20x the rounding noise and still ~1000x below any real one-level pixel difference.
PIXEL_ATOL = 1e-5
IMAGE_MIN_COSINE = 0.9999
TEXT_MIN_COSINE = 0.99999

VARIANTS = imagegen.variants()
VARIANT_PARAMS = [pytest.param(name, id=name) for name in VARIANTS]


@dataclass
class Reference:
    model: object
    processor: object
    tokenizer: object

    def pixels(self, image: Image.Image) -> np.ndarray:
        return self.processor(images=image, return_tensors="np")["pixel_values"][0]

    @torch.inference_mode()
    def embed_image(self, image: Image.Image) -> np.ndarray:
        pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"]
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output[0].numpy()

    @torch.inference_mode()
    def embed_texts(self, texts: list[str], **tokenizer_args: object) -> np.ndarray:
        encoded = self.tokenizer(texts, padding=True, return_tensors="pt", **tokenizer_args)
        out = self.model.get_text_features(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        return out.pooler_output.numpy()


def load_reference(tiny_dir: Path) -> Reference:
    # Without torchvision, transformers 5 resolves the checkpoint's "CLIPImageProcessor" to the
    # Pillow backend; naming it keeps the reference stable if torchvision ever gets installed
    # (the torchvision backend resizes differently). It loads without any Python warning.
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    model = CLIPModel.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return Reference(model, CLIPImageProcessorPil.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def reference_input(data: bytes) -> Image.Image:
    """What a hand-written pipeline feeds the processor: the file, upright, frame 0."""
    image = Image.open(io.BytesIO(data))
    image.seek(0)
    return ImageOps.exif_transpose(image)


TEXTS = [
    "a photo of a cat",
    "",
    "   ",
    "!!! ??? ... ,,, ;-)",
    "Ünïcödé: café, naïve, 日本語のテキスト, emoji 🐱🚀",
    "a considerably longer sentence describing a red bicycle leaning against a stone wall at dusk",
    "x",
]
