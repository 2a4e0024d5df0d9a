"""Configuration: the default file is the reference, the environment overrides it, typos fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipgate.config import Config, ConfigError, load_config

DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def test_default_file_lists_every_key_with_the_built_in_default() -> None:
    assert load_config(DEFAULT) == Config()
    text = DEFAULT.read_text()
    for section, values in vars(Config()).items():
        assert f"[{section}]" in text
        for key in vars(values) if hasattr(values, "__dict__") else values.__dataclass_fields__:
            assert f"\n{key} = " in text, f"{section}.{key} is not documented in default.toml"


def test_environment_overrides_with_types() -> None:
    env = {
        "CLIPGATE_MODEL_ID": "random:tiny",
        "CLIPGATE_SERVER_PORT": "9001",
        "CLIPGATE_IMAGES_ALLOW_URL": "true",
        "CLIPGATE_BATCHING_MAX_WAIT_MS": "7.5",
        "CLIPGATE_AUTH_ROBOFLOW_KEYS": "k1, k2",
        "CLIPGATE_ROBOFLOW_PREFIX": "/rf",
        "UNRELATED": "x",
    }
    config = load_config(DEFAULT, env)
    assert config.model.id == "random:tiny"
    assert config.server.port == 9001
    assert config.images.allow_url is True
    assert config.batching.max_wait_ms == 7.5
    assert config.auth.roboflow_keys == ("k1", "k2")
    assert config.roboflow.prefix == "/rf"


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        pytest.param("[model]\nidd = 'x'\n", {}, "unknown config key model.idd", id="typo-key"),
        pytest.param("[modle]\n", {}, "unknown config section", id="typo-section"),
        pytest.param("[server]\nport = 'eighty'\n", {}, "server.port: expected int", id="wrong-type"),
        pytest.param("[server]\nport = true\n", {}, "server.port", id="bool-is-not-int"),
        pytest.param("", {"CLIPGATE_SERVER_PORT": "eighty"}, "CLIPGATE_SERVER_PORT", id="env-wrong-type"),
        pytest.param("", {"CLIPGATE_IMAGES_ALLOW_URL": "maybe"}, "CLIPGATE_IMAGES_ALLOW_URL", id="env-bad-bool"),
        pytest.param("[server\n", {}, "Expected", id="bad-toml"),
        pytest.param(
            "", {"CLIPGATE_BATCHING_MAX_BATCH_TEXTS": "0"}, "batching.max_batch_texts must be at least 1", id="batch-0"
        ),
        pytest.param("[batching]\nmax_wait_ms = -1\n", {}, "must not be negative", id="negative-wait"),
        pytest.param("", {"CLIPGATE_SERVER_LOG_LEVEL": "loud"}, "server.log_level must be one of", id="log-level"),
        pytest.param("[server]\nport = 70000\n", {}, "server.port must be 0-65535", id="port-range"),
        pytest.param("[model]\ndevice = 'tpu'\n", {}, "model.device", id="device"),
        pytest.param("[model]\ndtype = 'int8'\n", {}, "model.dtype", id="dtype"),
        pytest.param("[images]\nformats = []\n", {}, "images.formats", id="no-formats"),
        pytest.param("[images]\ndecode_threads = 0\n", {}, "images.decode_threads", id="no-decode-threads"),
        pytest.param("[server]\nmax_queued_images = 0\n", {}, "server.max_queued_images", id="no-image-queue"),
        pytest.param("", {"CLIPGATE_SERVER_REQUEST_TIMEOUT_S": "0"}, "must be positive", id="no-deadline"),
        pytest.param("[server]\ndrain_grace_s = -1\n", {}, "server.drain_grace_s", id="negative-grace"),
        pytest.param("[server]\nmax_json_depth = 0\n", {}, "server.max_json_depth", id="no-json-depth"),
        pytest.param("[batching]\nmax_wait_incoming_ms = -5\n", {}, "max_wait_incoming_ms", id="negative-incoming"),
    ],
)
def test_mistakes_are_reported(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")
