"""One typed, frozen configuration tree: `configs/default.toml`, then CLIPGATE_* environment overrides.

Every key is `CLIPGATE_<SECTION>_<KEY>` in the environment (upper case), e.g.
`CLIPGATE_MODEL_ID=random:tiny` or `CLIPGATE_ROBOFLOW_KEYS=k1,k2` (lists are comma-separated). A
`CLIPGATE_*` variable that names no key is an error, so a typo is never silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipgate.adapter import ProtocolSettings

ENV_PREFIX = "CLIPGATE_"


class ConfigError(ValueError):
    """The configuration holds an unknown key, a value of the wrong type, or one out of range."""


def _require(ok: bool, key: str, rule: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{key} {rule}, got {value!r}")


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("auto", "text", "json")
DTYPES = ("auto", "float32", "float16", "bfloat16")
BACKENDS = ("torch", "onnx", "openvino")
QUANTIZE = ("none", "int8")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_device(name: str) -> str:
    """`name` if it is a device clipgate knows (auto, cpu, cuda, cuda:N), else ConfigError."""
    _require(_DEVICE.fullmatch(name) is not None, "model.device", "must be auto, cpu, cuda or cuda:N", name)
    return name


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_format: str = "auto"  # text, json, or auto: json when stderr is not a terminal
    metrics: bool = True
    metrics_port: int = 0  # 0: /metrics on the main port
    max_body_bytes: int = 64 * 1024 * 1024
    max_inflight_body_bytes: int = 0  # 0: a fraction of the memory (clipgate.budget.auto_capacity)
    body_budget_wait_s: float = 1.0
    max_images: int = 64
    max_texts: int = 1024
    max_text_chars: int = 16384
    max_json_depth: int = 32
    max_inflight_requests: int = 512
    max_queued_images: int = 256
    max_queued_texts: int = 8192
    max_queue_wait_s: float = 10.0
    request_timeout_s: float = 60.0
    drain_grace_s: float = 0.0
    replica_id: str = ""  # names this server in X-Clipgate-Replica and /info; "" = hostname:pid

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "server.port", "must be 0-65535", self.port)
        _require(0 <= self.metrics_port <= 65535, "server.metrics_port", "must be 0-65535", self.metrics_port)
        formats = ("auto", "text", "json")
        _require(
            self.log_format in formats, "server.log_format", f"must be one of {', '.join(formats)}", self.log_format
        )
        _require(
            self.log_level in LOG_LEVELS, "server.log_level", f"must be one of {', '.join(LOG_LEVELS)}", self.log_level
        )
        ints = ("max_body_bytes", "max_images", "max_texts", "max_text_chars", "max_json_depth")
        for key in (*ints, "max_inflight_requests", "max_queued_images", "max_queued_texts"):
            _require(getattr(self, key) >= 1, f"server.{key}", "must be at least 1", getattr(self, key))
        for key in ("max_queue_wait_s", "request_timeout_s"):
            _require(getattr(self, key) > 0, f"server.{key}", "must be positive", getattr(self, key))
        _require(self.drain_grace_s >= 0, "server.drain_grace_s", "must not be negative", self.drain_grace_s)
        for key in ("max_inflight_body_bytes", "body_budget_wait_s"):
            _require(getattr(self, key) >= 0, f"server.{key}", "must not be negative", getattr(self, key))


@dataclass(frozen=True)
class ModelConfig:
    id: str = "openai/clip-vit-base-patch32"
    backend: str = "torch"
    device: str = "auto"
    dtype: str = "auto"
    truncate_text: bool = False
    alias: str = ""
    allow_download: bool = True
    download_timeout_s: float = 10.0
    torch_threads: int = 0
    quantize: str = "none"
    int8_min_cosine: float = 0.99

    def __post_init__(self) -> None:
        check_device(self.device)
        _require(self.dtype in DTYPES, "model.dtype", f"must be one of {', '.join(DTYPES)}", self.dtype)
        _require(self.backend in BACKENDS, "model.backend", f"must be one of {', '.join(BACKENDS)}", self.backend)
        _require(self.download_timeout_s > 0, "model.download_timeout_s", "must be positive", self.download_timeout_s)
        _require(self.torch_threads >= 0, "model.torch_threads", "must be 0 (automatic) or more", self.torch_threads)
        _require(self.quantize in QUANTIZE, "model.quantize", f"must be one of {', '.join(QUANTIZE)}", self.quantize)
        _require(
            self.quantize == "none" or self.backend == "onnx",
            "model.quantize",
            'applies to model.backend = "onnx" only (torch and openvino run unquantized)',
            self.quantize,
        )
        _require(0 < self.int8_min_cosine <= 1, "model.int8_min_cosine", "must be in (0, 1]", self.int8_min_cosine)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_images: int = 32
    max_batch_texts: int = 64
    max_wait_ms: float = 2.0
    max_wait_incoming_ms: float = 100.0

    def __post_init__(self) -> None:
        for key in ("max_batch_images", "max_batch_texts"):
            _require(getattr(self, key) >= 1, f"batching.{key}", "must be at least 1", getattr(self, key))
        for key in ("max_wait_ms", "max_wait_incoming_ms"):
            _require(getattr(self, key) >= 0, f"batching.{key}", "must not be negative", getattr(self, key))


@dataclass(frozen=True)
class ImagesConfig:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
    decode_threads: int = 2
    reduced_jpeg_decode: bool = True
    allow_url: bool = False
    allow_http_url: bool = False
    allow_ip_hosts: bool = False
    allow_private_addresses: bool = False
    url_allow_hosts: tuple[str, ...] = ()
    url_deny_hosts: tuple[str, ...] = ()
    url_timeout_s: float = 10.0
    url_max_redirects: int = 5

    def __post_init__(self) -> None:
        for key in ("max_bytes", "max_pixels", "decode_threads"):
            _require(getattr(self, key) >= 1, f"images.{key}", "must be at least 1", getattr(self, key))
        _require(bool(self.formats), "images.formats", "must name at least one format", self.formats)
        _require(self.url_timeout_s > 0, "images.url_timeout_s", "must be positive", self.url_timeout_s)
        _require(
            self.url_max_redirects >= 0, "images.url_max_redirects", "must not be negative", self.url_max_redirects
        )


@dataclass(frozen=True)
class FaultsConfig:
    """Fault injection, for clipgate as an integration-test target (clipgate.faults). Never on
    by default, nor in the images."""

    enabled: bool = False
    admin_key: str = ""  # the bearer key of /admin/faults; empty: the admin route refuses everyone


@dataclass(frozen=True)
class Config:
    """The whole configuration. `protocols` holds one table per registered protocol (adapter),
    named as the adapter is: `[roboflow] enabled, prefix, keys`, plus any options of its own."""

    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    protocols: Mapping[str, ProtocolSettings] = field(default_factory=dict)

    def protocol(self, name: str) -> ProtocolSettings:
        try:
            return self.protocols[name]
        except KeyError:
            raise ConfigError(f"the configuration has no table for protocol [{name}]") from None

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some keys of one section or protocol table changed (the CLI's flags use this)."""
        if section in self.protocols:
            table = dataclasses.replace(self.protocols[section], **changes)
            return dataclasses.replace(self, protocols={**self.protocols, section: table})
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


SECTIONS = ("server", "model", "batching", "images", "faults")
# Read by clipgate outside the configuration tree: accepted in the environment as they are.
PROCESS_VARIABLES = {
    "CLIPGATE_CONFIG": "the config file `uvicorn --factory clipgate.app:app_from_env` reads",
    "CLIPGATE_CACHE_DIR": "where random:tiny and random:base checkpoints are built",
}


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    protocols: Mapping[str, type[ProtocolSettings]],
) -> Config:
    """Read the TOML file (if any), then apply CLIPGATE_* overrides from `environ` (if given).
    `protocols` names each registered protocol and its settings class (the adapter registry):
    a protocol whose table is missing gets its defaults."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    environ = environ or {}
    hints = typing.get_type_hints(Config)
    classes: dict[str, type] = {name: hints[name] for name in SECTIONS}
    for name, cls in protocols.items():
        if name in classes or not issubclass(cls, ProtocolSettings):
            raise ConfigError(f"protocol {name!r} clashes with a section name or has no ProtocolSettings table")
        classes[name] = cls
    _check_moved(data, environ, protocols)
    for name in data:
        if name not in classes:
            raise ConfigError(f"unknown config section [{name}]; the known sections are: {', '.join(classes)}")
    _check_environment(environ, classes)
    tables: dict[str, Any] = {}
    for name, cls in classes.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        tables[name] = _load_section(name, cls, table, environ)
    return Config(**{name: tables[name] for name in SECTIONS}, protocols={name: tables[name] for name in protocols})


def _env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _check_moved(data: Mapping[str, Any], environ: Mapping[str, str], protocols: Mapping[str, object]) -> None:
    """The old `[auth] <protocol>_keys` keys (and their variables) moved into each protocol's table."""
    auth = data.get("auth")
    old = [f"[auth] {key}" for key in (auth if isinstance(auth, dict) else {})]
    old += [name for name in environ if name.startswith(f"{ENV_PREFIX}AUTH_")]
    if "auth" in data and not old:
        old = ["[auth]"]
    for where in old:
        name = where.removeprefix("[auth] ").removeprefix(f"{ENV_PREFIX}AUTH_").lower().removesuffix("_keys")
        new = f"[{name}] keys (env {_env_name(name, 'keys')})" if name in protocols else "each protocol's table"
        raise ConfigError(f"{where} has moved: each protocol's keys are now set in {new}")


def _check_environment(environ: Mapping[str, str], classes: Mapping[str, type]) -> None:
    """Every CLIPGATE_* variable must name a key or be one of PROCESS_VARIABLES."""
    valid = set(PROCESS_VARIABLES)
    for section, cls in classes.items():
        valid.update(_env_name(section, f.name) for f in dataclasses.fields(cls))
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in valid:
            close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else "; see configs/default.toml for every key"
            raise ConfigError(f"unknown environment variable {name}{hint}")


def _load_section(name: str, cls: type, table: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown config key {name}.{key}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        env_name = _env_name(name, f.name)
        if env_name in environ:
            values[f.name] = _coerce(f"{env_name}", hints[f.name], environ[env_name], from_env=True)
        elif f.name in table:
            values[f.name] = _coerce(f"{name}.{f.name}", hints[f.name], table[f.name], from_env=False)
    return cls(**values)


def _coerce(where: str, hint: Any, value: Any, *, from_env: bool) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if (
            from_env
            and isinstance(value, str)
            and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", "")
        ):
            return value.strip().lower() in ("1", "true", "yes", "on")
    elif hint in (int, float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and (hint is float or isinstance(value, int)):
            return hint(value)
        if from_env and isinstance(value, str):
            try:
                return hint(value.strip())
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(hint) is tuple:
        if from_env and isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', str(hint))}, got {value!r}")
