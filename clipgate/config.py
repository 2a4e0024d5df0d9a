"""One typed, frozen configuration tree: `configs/default.toml`, then CLIPGATE_* environment overrides.

Every key is `CLIPGATE_<SECTION>_<KEY>` in the environment (upper case), e.g.
`CLIPGATE_MODEL_ID=random:tiny` or `CLIPGATE_AUTH_ROBOFLOW_KEYS=k1,k2` (lists are comma-separated).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CLIPGATE_"


class ConfigError(ValueError):
    """The configuration file or environment holds an unknown key or a value of the wrong type."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    max_body_bytes: int = 64 * 1024 * 1024
    max_items: int = 64


@dataclass(frozen=True)
class ModelConfig:
    id: str = "openai/clip-vit-base-patch32"
    device: str = "auto"
    dtype: str = "auto"
    truncate_text: bool = False
    alias: str = ""
    allow_download: bool = True
    download_timeout_s: float = 10.0
    torch_threads: int = 0


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_images: int = 32
    max_batch_texts: int = 64
    max_wait_ms: float = 2.0


@dataclass(frozen=True)
class ImagesConfig:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
    decode_threads: int = 2
    allow_url: bool = False
    allow_http_url: bool = False
    allow_ip_hosts: bool = False
    allow_private_addresses: bool = False
    url_allow_hosts: tuple[str, ...] = ()
    url_deny_hosts: tuple[str, ...] = ()
    url_timeout_s: float = 10.0
    url_max_redirects: int = 5


@dataclass(frozen=True)
class AuthConfig:
    sambastudio_keys: tuple[str, ...] = ()
    azureml_keys: tuple[str, ...] = ()
    roboflow_keys: tuple[str, ...] = ()

    def keys_for(self, adapter: str) -> tuple[str, ...]:
        keys: tuple[str, ...] = getattr(self, f"{adapter}_keys", ())
        return keys


@dataclass(frozen=True)
class AdapterConfig:
    enabled: bool = True
    prefix: str = ""


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    sambastudio: AdapterConfig = field(default_factory=AdapterConfig)
    azureml: AdapterConfig = field(default_factory=AdapterConfig)
    roboflow: AdapterConfig = field(default_factory=AdapterConfig)

    def adapter(self, name: str) -> AdapterConfig:
        value = getattr(self, name)
        assert isinstance(value, AdapterConfig)
        return value

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some keys of one section changed (the CLI's flags use this)."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), then apply CLIPGATE_* overrides from `environ` (if given)."""
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
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for name in data:
        if name not in hints:
            raise ConfigError(f"unknown config section [{name}]")
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        table = data.get(section.name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section.name}] must be a table")
        sections[section.name] = _load_section(section.name, cls, table, environ)
    return Config(**sections)


def _load_section(name: str, cls: type, table: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown config key {name}.{key}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        env_name = f"{ENV_PREFIX}{name}_{f.name}".upper()
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
