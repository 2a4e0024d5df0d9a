"""Shared fixtures: a tiny random CLIP checkpoint built on disk, its engine, and app clients."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from clipgate import emulator
from clipgate.app import create_app
from clipgate.config import Config, ModelConfig
from clipgate.engine import ClipEngine


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
    return emulator.checkpoint_dir("random:tiny", cache_dir)


@pytest.fixture(scope="session")
def engine(tiny_dir: Path) -> ClipEngine:
    return ClipEngine.load(ModelConfig(id="random:tiny", device="cpu", dtype="float32"))


def make_config(**sections: dict[str, object]) -> Config:
    config = Config().replace("model", id="random:tiny", device="cpu", dtype="float32")
    for name, changes in sections.items():
        config = config.replace(name, **changes)
    return config


@pytest.fixture
def client(engine: ClipEngine) -> Iterator[TestClient]:
    with TestClient(create_app(make_config(), engine=engine)) as test_client:
        yield test_client
