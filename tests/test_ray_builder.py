"""clipgate.ray's builder without a cluster: its arguments (as `serve run` passes them, and as the
serve config holds them) through clipgate's own config validation, and the Ray settings it picks."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from clipgate.config import ConfigError
from clipgate.errors import InternalError, NotReady, Overloaded
from clipgate.images import ImageTransform
from tests import imagegen

with warnings.catch_warnings():
    # Ray 2.60's Serve config models pass extra keywords to pydantic's Field (deprecated in pydantic 2).
    warnings.filterwarnings("ignore", message="Using extra keyword arguments on `Field`", category=DeprecationWarning)
    from clipgate.ray import ONGOING_HEADROOM, RemoteError, Replicas, build, deployment_options, parse_args

ROOT = Path(__file__).resolve().parent.parent


def test_serve_run_arguments_reach_the_config() -> None:
    settings = parse_args(
        {"model": "random:tiny", "replicas": "2", "batching.max_batch_images": "16", "roboflow.prefix": "/rf"}, {}
    )
    assert settings.config.model.id == "random:tiny"
    assert settings.config.batching.max_batch_images == 16
    assert settings.config.protocol("roboflow").prefix == "/rf"
    assert settings.replicas == Replicas(2, 2) and settings.mode == "whole"


def test_a_config_file_and_the_environment_apply_under_the_arguments(tmp_path: Path) -> None:
    path = tmp_path / "clipgate.toml"
    path.write_text('[model]\nid = "random:base"\n[server]\nmax_texts = 7\nmax_images = 3\n')
    environ = {"CLIPGATE_SERVER_MAX_TEXTS": "9"}
    settings = parse_args({"config": str(path), "server.max_images": 5}, environ)
    assert settings.config.model.id == "random:base"
    assert (settings.config.server.max_texts, settings.config.server.max_images) == (9, 5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param({"batching.max_batch_image": "3"}, "did you mean batching.max_batch_images?", id="typo"),
        pytest.param({"modle": "x"}, "did you mean mode?", id="typo-argument"),
        pytest.param({"batching.max_batch_images": "many"}, "batching.max_batch_images: expected int", id="type"),
        pytest.param({"mode": "halves"}, "mode must be one of whole, split", id="mode"),
        pytest.param({"replicas": "0"}, "replicas must be at least 1", id="replicas"),
        pytest.param({"replicas": "4-2"}, "low <= high", id="range"),
        pytest.param({"num_gpus": "-1"}, "num_gpus must be at least 0", id="gpus"),
    ],
)
def test_bad_arguments_are_clear_errors(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        parse_args(args, {})


def test_model_threads_follow_the_replicas_cpus() -> None:
    assert parse_args({"num_cpus": "3"}, {}).config.model.torch_threads == 3
    assert parse_args({"num_cpus": "2", "model.torch_threads": "1"}, {}).config.model.torch_threads == 1


def test_ray_settings_leave_overload_to_clipgate() -> None:
    config = parse_args({"server.max_inflight_requests": "100", "server.request_timeout_s": "45"}, {}).config
    options = deployment_options(config, Replicas(2, 2), {"num_cpus": 1})
    # Ray hands a replica more requests than clipgate admits, so clipgate refuses the rest in the
    # vendor's shape; and more than a batch holds, so batches fill.
    assert options["max_ongoing_requests"] == 100 + ONGOING_HEADROOM
    assert options["max_ongoing_requests"] > max(config.batching.max_batch_images, config.batching.max_batch_texts)
    assert options["max_queued_requests"] > options["max_ongoing_requests"]
    assert options["graceful_shutdown_timeout_s"] >= 45
    assert options["num_replicas"] == 2
    scaled = deployment_options(config, Replicas.parse("replicas", "1-4"), {"num_cpus": 1, "num_gpus": 0.5})
    assert scaled["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in scaled
    assert scaled["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.5}


def test_the_builder_makes_each_mode() -> None:
    whole = build({"model": "random:tiny", "replicas": "2"})
    split = build({"model": "random:tiny", "mode": "split", "replicas": "1-3", "encoder_replicas": "2"})
    assert type(whole).__name__ == type(split).__name__ == "Application"


def test_the_serve_config_holds_valid_builder_arguments() -> None:
    serve_config = yaml.safe_load((ROOT / "configs" / "ray" / "serve.yaml").read_text())
    (app,) = serve_config["applications"]
    assert app["import_path"] == "clipgate.ray:build" and app["route_prefix"] == "/"
    settings = parse_args(app["args"], {})
    assert settings.mode in ("whole", "split")


def test_encoder_refusals_come_back_as_clipgate_errors() -> None:
    refused = RemoteError.of(Overloaded("full", retry_after=4)).error()
    assert isinstance(refused, Overloaded) and refused.retry_after == 4 and refused.message == "full"
    assert isinstance(RemoteError.of(NotReady("stopping")).error(), NotReady)
    assert isinstance(RemoteError("internal", "boom").error(), InternalError)


def test_uint8_pixels_normalized_elsewhere_are_the_same_pixels() -> None:
    # Split mode crops to uint8 on the HTTP replica and normalizes on the encoder: bit for bit the same.
    import io

    from PIL import Image

    transform = ImageTransform()
    image = Image.open(io.BytesIO(imagegen.jpeg(seed=3, width=300, height=200))).convert("RGB")
    crop = transform.crop(image)
    assert crop.dtype == np.uint8 and crop.shape == (224, 224, 3)
    assert np.array_equal(transform.normalize(crop), transform(image))
