"""Configuration: the default file is the reference, the environment overrides it, typos fail."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clipgate.adapter import ProtocolSettings
from clipgate.app import load_app_config
from clipgate.config import SECTIONS, Config, ConfigError, load_config

DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def load(path: Path | None = DEFAULT, env: dict[str, str] | None = None) -> Config:
    return load_app_config(path, env)


def test_default_file_lists_every_key_with_the_built_in_default() -> None:
    defaults = load(None)
    assert load(DEFAULT) == defaults
    assert set(defaults.protocols) == {"sambastudio", "azureml", "roboflow", "openai", "cohere"}
    text = DEFAULT.read_text()
    tables = {**{name: getattr(defaults, name) for name in SECTIONS}, **defaults.protocols}
    for section, values in tables.items():
        body = text.split(f"\n[{section}]\n", 1)[1].split("\n[", 1)[0]
        for key in dataclasses.fields(values):
            assert f"\n{key.name} = " in "\n" + body, f"{section}.{key.name} is not documented in default.toml"


def test_environment_overrides_with_types() -> None:
    env = {
        "CLIPGATE_MODEL_ID": "random:tiny",
        "CLIPGATE_SERVER_PORT": "9001",
        "CLIPGATE_IMAGES_ALLOW_URL": "true",
        "CLIPGATE_BATCHING_MAX_WAIT_MS": "7.5",
        "CLIPGATE_ROBOFLOW_KEYS": "k1, k2",
        "CLIPGATE_ROBOFLOW_PREFIX": "/rf",
        "CLIPGATE_CACHE_DIR": "/tmp/models",  # read elsewhere, accepted here
        "UNRELATED": "x",
    }
    config = load(DEFAULT, env)
    assert config.model.id == "random:tiny"
    assert config.server.port == 9001
    assert config.images.allow_url is True
    assert config.batching.max_wait_ms == 7.5
    assert config.protocol("roboflow").keys == ("k1", "k2")
    assert config.protocol("roboflow").prefix == "/rf"
    assert config.protocol("azureml").keys == ()


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
        pytest.param("[model]\ndevice = 'cudax'\n", {}, "model.device", id="device-cuda-suffix"),
        pytest.param(
            "[model]\nbackend = 'tensorrt'\n", {}, "model.backend must be one of torch, onnx, openvino", id="backend"
        ),
        pytest.param("[roboflow]\nkey = ['k']\n", {}, "unknown config key roboflow.key", id="protocol-key-typo"),
        pytest.param(
            "[roboflw]\n", {}, r"unknown config section \[roboflw\]; the known sections are: .*roboflow", id="table"
        ),
        pytest.param(
            "[auth]\nroboflow_keys = ['k']\n",
            {},
            r"\[auth\] roboflow_keys has moved: .* \[roboflow\] keys \(env CLIPGATE_ROBOFLOW_KEYS\)",
            id="old-auth-table",
        ),
        pytest.param(
            "",
            {"CLIPGATE_AUTH_AZUREML_KEYS": "k"},
            r"CLIPGATE_AUTH_AZUREML_KEYS has moved: .* \[azureml\] keys \(env CLIPGATE_AZUREML_KEYS\)",
            id="old-auth-env",
        ),
        pytest.param(
            "",
            {"CLIPGATE_MODEL_DEVCE": "cuda"},
            "unknown environment variable CLIPGATE_MODEL_DEVCE; did you mean CLIPGATE_MODEL_DEVICE",
            id="env-typo",
        ),
        pytest.param("", {"CLIPGATE_ROBOFLOW_KEY": "k"}, "did you mean CLIPGATE_ROBOFLOW_KEYS", id="env-typo-protocol"),
    ],
)
def test_mistakes_are_reported(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load(path, env)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "absent.toml")


@dataclasses.dataclass(frozen=True)
class ToySettings(ProtocolSettings):
    greeting: str = "hello"
    max_words: int = 3


def test_a_protocol_table_is_built_from_its_settings_class(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[toy]\ngreeting = 'hi'\n")
    env = {"CLIPGATE_TOY_MAX_WORDS": "5", "CLIPGATE_TOY_KEYS": "a,b"}
    config = load_config(path, env, protocols={"toy": ToySettings, "plain": ProtocolSettings})
    assert config.protocol("toy") == ToySettings(greeting="hi", max_words=5, keys=("a", "b"))
    assert config.protocol("plain") == ProtocolSettings()  # a missing table gets its defaults
    assert config.replace("toy", enabled=False).protocol("toy").enabled is False
    with pytest.raises(ConfigError, match=r"no table for protocol \[absent\]"):
        config.protocol("absent")


def test_a_protocol_cannot_shadow_a_section() -> None:
    with pytest.raises(ConfigError, match="clashes"):
        load_config(None, {}, protocols={"server": ProtocolSettings})
