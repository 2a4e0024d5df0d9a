"""Shared fixtures: a tiny random CLIP checkpoint built on disk, the model loaded from it, and app clients."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from clipgate import random_checkpoint
from clipgate.app import create_app, load_app_config
from clipgate.config import Config, ModelConfig
from clipgate.engine import Model, load_model


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private emulator cache for this run; servers started by tests share it."""
    path = tmp_path_factory.mktemp("clipgate-cache")
    old = os.environ.get("CLIPGATE_CACHE_DIR")
    os.environ["CLIPGATE_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CLIPGATE_CACHE_DIR", None)
    else:
        os.environ["CLIPGATE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_dir(cache_dir: Path) -> Path:
    """random:tiny, saved with save_pretrained and loaded back like any checkpoint folder."""
    return random_checkpoint.checkpoint_dir("random:tiny", cache_dir)


@pytest.fixture(scope="session")
def model(tiny_dir: Path) -> Model:
    return load_model(ModelConfig(id="random:tiny", device="cpu", dtype="float32"))


def make_config(**sections: dict[str, object]) -> Config:
    config = load_app_config().replace("model", id="random:tiny", device="cpu", dtype="float32")
    for name, changes in sections.items():
        config = config.replace(name, **changes)
    return config


@pytest.fixture
def client(model: Model) -> Iterator[TestClient]:
    with TestClient(create_app(make_config(), model)) as test_client:
        yield test_client
