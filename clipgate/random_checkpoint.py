"""Random-weight checkpoints: `random:tiny` and `random:base`, deterministic CLIP models with no download.

They are built once into a cache folder (a real checkpoint: safetensors weights, the real
CLIP BPE tokenizer, a preprocessor config) and then loaded through the same
`from_pretrained` path as downloaded weights. Tests and CI use them in place of real weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from importlib.metadata import version
from pathlib import Path

PREFIX = "random:"
SEED = 20240101

# text / vision towers; projection_dim 512 always, so vectors have the width of ViT-B/32.
_SHAPES: dict[str, dict[str, dict[str, int]]] = {
    "tiny": {
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
        "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
    },
    "base": {"text": {}, "vision": {}},  # CLIPConfig() defaults: exactly ViT-B/32
}

PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def is_random(model_id: str) -> bool:
    return model_id.startswith(PREFIX)


def kinds() -> list[str]:
    return sorted(_SHAPES)


def cache_root() -> Path:
    base = os.environ.get("CLIPGATE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clipgate"
    )
    return Path(base)


def checkpoint_dir(model_id: str, root: Path | None = None) -> Path:
    """The folder of an emulator checkpoint, built on first use. Raises ValueError for an unknown kind."""
    kind = model_id[len(PREFIX) :]
    if kind not in _SHAPES:
        raise ValueError(f"unknown random model {model_id!r}; choose one of: " + ", ".join(PREFIX + k for k in kinds()))
    root = root or cache_root()
    # Versions from the package metadata: naming the folder imports neither library.
    target = root / f"random-{kind}-seed{SEED}-torch{version('torch')}-transformers{version('transformers')}"
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".random-{kind}-", dir=root))
    try:
        build_checkpoint(kind, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent builder's win
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_checkpoint(kind: str, out: Path) -> None:
    """Write a seeded random CLIP checkpoint of the given shape into `out`."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    shape = _SHAPES[kind]
    config = CLIPConfig(
        text_config={**shape["text"], "max_position_embeddings": 77, "vocab_size": 49408},
        vision_config={**shape["vision"], "image_size": 224, "patch_size": 32},
        projection_dim=512,
    )
    torch.manual_seed(SEED)
    model = CLIPModel(config)
    model.save_pretrained(out)
    with resources.as_file(resources.files("clipgate") / "data" / "clip-tokenizer") as vocab_dir:
        tokenizer = CLIPTokenizer.from_pretrained(str(vocab_dir), model_max_length=77)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
