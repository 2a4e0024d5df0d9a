"""`clipgate serve` fails fast, with one line that says what to do, when it cannot get a model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "clipgate.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--model", "/nonexistent/clip"], {}, id="missing-folder"),
        pytest.param(
            ["--config", "configs/default.toml"],
            {"CLIPGATE_MODEL_ALLOW_DOWNLOAD": "0", "HF_HUB_OFFLINE": "1"},
            id="default-model-not-cached",
        ),
    ],
)
def test_serve_without_weights_fails_with_one_line(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    result = run_cli("serve", *args, "--port", "1", env={"HF_HOME": str(tmp_path), **env})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--model DIR" in lines[0] and "random:tiny" in lines[0]


def test_cuda_asked_for_without_cuda_fails_with_one_line() -> None:
    result = run_cli("serve", "--model", "random:tiny", "--device", "cuda", env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["clipgate: device cuda was asked for but CUDA is not available"]


def test_config_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nnot_a_key = 1\n")
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert "unknown config key model.not_a_key" in result.stderr


def test_unknown_emulator_kind_names_the_valid_ones() -> None:
    result = run_cli("serve", "--model", "random:huge")
    assert result.returncode == 2
    assert "random:base" in result.stderr and "random:tiny" in result.stderr


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/clip/embed_text?api_key=SECRET", "/clip/embed_text?api_key=***", id="only"),
        pytest.param("/clip/compare?x=1&api_key=SECRET&y=2", "/clip/compare?x=1&api_key=***&y=2", id="middle"),
        pytest.param("/clip/embed_text?API_KEY=SECRET", "/clip/embed_text?API_KEY=***", id="upper-case"),
        pytest.param("/clip/embed_text?monkey=1", "/clip/embed_text?monkey=1", id="not-a-key"),
        pytest.param("/clip/embed_text?api%5Fkey=SECRET", "/clip/embed_text?api%5Fkey=***", id="percent-encoded-name"),
        pytest.param(
            "/clip/embed_text?a=1&%20api_key%20=SECRET", "/clip/embed_text?a=1&%20api_key%20=***", id="padded-name"
        ),
    ],
)
def test_access_log_never_shows_a_key(path: str, expected: str) -> None:
    import logging

    from clipgate.runtime import RedactSecrets

    fmt = '%s - "%s %s HTTP/%s" %d'
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, fmt, ("127.0.0.1:1", "POST", path, "1.1", 200), None
    )
    assert RedactSecrets().filter(record)
    assert record.getMessage() == f'127.0.0.1:1 - "POST {expected} HTTP/1.1" 200'


def test_config_prints_the_effective_configuration_as_loadable_toml(tmp_path: Path) -> None:
    from clipgate.app import load_app_config

    env = {"CLIPGATE_ROBOFLOW_KEYS": "k1,k2", "CLIPGATE_SERVER_PORT": "9100"}
    result = run_cli("config", "--config", "configs/default.toml", "--model", "random:tiny", env=env)
    assert result.returncode == 0, result.stderr
    assert "k1" not in result.stdout and 'keys = ["***", "***"]' in result.stdout
    printed = tmp_path / "printed.toml"
    printed.write_text(result.stdout)
    config = load_app_config(printed)  # the output is a config file that loads
    assert config.server.port == 9100 and config.model.id == "random:tiny"
    assert config.protocol("roboflow").keys == ("***", "***")
    expected = load_app_config(ROOT / "configs" / "default.toml", env).replace("model", id="random:tiny")
    assert config.replace("roboflow", keys=("k1", "k2")) == expected


def test_config_with_an_invalid_setting_exits_2_with_the_error() -> None:
    result = run_cli("config", env={"CLIPGATE_MODEL_DEVCE": "cuda"})
    assert result.returncode == 2 and result.stdout == ""
    assert "did you mean CLIPGATE_MODEL_DEVICE?" in result.stderr


def test_version() -> None:
    from clipgate import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"clipgate {__version__}"


def test_download_progress_is_logged_with_sizes(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from clipgate.engine import LoggedProgress

    caplog.set_level(logging.INFO, logger="clipgate.engine")
    bar = LoggedProgress(total=600_000_000, unit="B", unit_scale=True, desc="model.safetensors")
    bar.update(150_000_000)
    bar.update(450_000_000)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "downloading model.safetensors: 150MB/600MB"  # the first progress, at once
    assert lines[-1] == "downloading model.safetensors: 600MB/600MB" and len(lines) == 2  # then every 2 s, and done
