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
