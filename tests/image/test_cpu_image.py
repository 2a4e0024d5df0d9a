"""The CPU image, built and run with podman: it serves random:tiny as a non-root user on a
read-only root, answers Roboflow's own client, passes its HEALTHCHECK, refuses to download,
carries no CUDA, stays small, bakes a checkpoint folder in for air-gapped sites, and drains on
SIGTERM with exit 0.

The image is built here, as `make image` builds it but on a Debian base made locally
(configs/image/local-base.sh: no registry needed), after installing podman and mmdebstrap when
missing (configs/image/host-setup.sh). Podman's layer cache and the base's tarball make a
rebuild quick. TEST_IMAGE names an image to test instead of building one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from inference_sdk import InferenceConfiguration, InferenceHTTPClient

from tests import imagegen

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent.parent
BUILT = "localhost/clipgate:test"
READY_TIMEOUT_S = 120.0
# torch's CPU build and its dependencies; the CUDA build is over 5 GB.
MAX_SIZE_BYTES = 1_400_000_000
PODMAN_ENV = {
    **os.environ,
    "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "configs/image/containers.conf")),
}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, env=PODMAN_ENV, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr}", pytrace=False)
    return result


def step(log: Path, command: list[str], timeout: float, **env: str) -> str:
    """Run one of configs/image/'s scripts, its stderr to `log`; its stdout, stripped."""
    with open(log, "a") as err:
        err.write(f"$ {' '.join(command)}\n")
        err.flush()
        result = subprocess.run(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env={**PODMAN_ENV, **env}, timeout=timeout
        )
    if result.returncode != 0:
        pytest.fail(
            f"{command[0]} failed ({result.returncode}); the end of {log}:\n{log.read_text()[-4000:]}", pytrace=False
        )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.environ.get("TEST_IMAGE"):
        name = os.environ["TEST_IMAGE"]
        assert podman("image", "exists", name, check=False).returncode == 0, f"TEST_IMAGE: no image {name}"
        return name
    log = tmp_path_factory.mktemp("image-build") / "build.log"
    step(log, ["configs/image/host-setup.sh"], timeout=600)
    base = step(log, ["configs/image/local-base.sh"], timeout=900)
    pip = f"{sys.executable} -m pip"  # the build mirrors this pip's configuration
    step(log, ["configs/image/build.sh", "cpu", BUILT], timeout=1800, BASE=base, PIP=pip)
    return BUILT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Container:
    """One `podman run -d` of the image: a free loopback port, removed at the end whatever happens."""

    def __init__(self, image: str, *args: str, run_options: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.name = f"clipgate-test-{os.getpid()}-{self.port}"
        publish = () if "--network=none" in run_options else ("--publish", f"127.0.0.1:{self.port}:8000")
        podman("run", "--detach", "--name", self.name, *publish, *run_options, image, *args)
        self.url = f"http://127.0.0.1:{self.port}"

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)
        return state

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *command, check=False)

    def fetch(self, path: str, body: Any = None) -> tuple[int, str]:
        """GET (or POST `body` as JSON to) a path from inside the container, which may have no
        network: (status, body text), status 0 when nothing answers."""
        code = (
            "import json, sys, urllib.request, urllib.error\n"
            "data = json.loads(sys.argv[2])\n"
            "request = urllib.request.Request(sys.argv[1], None if data is None else json.dumps(data).encode(),"
            " {'Content-Type': 'application/json'})\n"
            "try: r = urllib.request.urlopen(request, timeout=4); print(r.status, r.read().decode())\n"
            "except urllib.error.HTTPError as e: print(e.code, e.read().decode())\n"
            "except OSError: print(0)\n"
        )
        result = self.exec("python3", "-c", code, f"http://127.0.0.1:8000{path}", json.dumps(body))
        status, _, text = result.stdout.strip().partition(" ")
        return int(status or 0), text

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.fetch("/readyz")[0] != 200:
            if not self.state()["Running"]:
                pytest.fail(f"the container exited before it was ready:\n{self.logs()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"not ready after {READY_TIMEOUT_S:.0f} s:\n{self.logs()}", pytrace=False)
            time.sleep(0.5)  # the bounded readiness poll

    def remove(self) -> None:
        podman("rm", "--force", "--volumes", "--time", "0", self.name, check=False)


@pytest.fixture(scope="module")
def served(image: str) -> Iterator[Container]:
    """random:tiny on a read-only root filesystem (as configs/k8s runs it); /tmp is podman's tmpfs."""
    container = Container(image, "--model", "random:tiny", run_options=("--read-only",))
    try:
        container.wait_ready()
        yield container
    finally:
        container.remove()


def test_roboflow_client_gets_embeddings(served: Container) -> None:
    client = InferenceHTTPClient(api_url=served.url, api_key=None)
    client = client.configure(InferenceConfiguration(api_key_transport="legacy"))
    texts = client.get_clip_text_embeddings(["a photo of a cat", "a dog"])
    vectors = texts["embeddings"]
    assert len(vectors) == 2 and all(len(v) == 512 for v in vectors) and vectors[0] != vectors[1]
    image = client.get_clip_image_embeddings(imagegen.picture(64, 48))
    assert len(image["embeddings"]) == 1 and len(image["embeddings"][0]) == 512


def test_probes_and_the_healthcheck(served: Container) -> None:
    assert requests.get(f"{served.url}/livez", timeout=5).status_code == 200
    assert requests.get(f"{served.url}/readyz", timeout=5).json() == {"status": "ready"}
    result = podman("healthcheck", "run", served.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_the_non_root_user(served: Container) -> None:
    assert served.exec("id", "-u").stdout.strip() == "10001"
    assert served.exec("sh", "-c", "touch /opt/clipgate/x").returncode != 0  # read-only root


def test_listens_on_all_interfaces_in_the_image(served: Container) -> None:
    # --host 0.0.0.0 comes from the entrypoint: the published port reaches it from outside.
    assert "0.0.0.0:8000" in served.logs()


def test_the_hub_is_never_asked(image: str) -> None:
    """The default model is not in /data's (empty) cache, and downloads are off: a quick exit 2."""
    started = time.monotonic()
    result = podman("run", "--rm", image, timeout=60, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not in the local Hugging Face cache and downloads are off" in result.stderr
    assert time.monotonic() - started < 30


def test_torch_is_the_cpu_build_and_the_image_is_small(image: str) -> None:
    code = (
        "import torch, importlib.metadata as m; "
        "print(torch.version.cuda, any(d.metadata['Name'].startswith('nvidia') for d in m.distributions()))"
    )
    result = podman("run", "--rm", "--entrypoint", "python3", image, "-c", code, timeout=60)
    assert result.stdout.split() == ["None", "False"]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    assert size < MAX_SIZE_BYTES, f"{image} is {size / 1e6:.0f} MB"


def test_a_baked_checkpoint_serves_with_no_network_and_drains_on_sigterm(
    image: str, tiny_dir: Path, tmp_path: Path
) -> None:
    """make image-with-model on a random:tiny checkpoint folder; run with no network and no args."""
    tag = f"localhost/clipgate-test-with-model:{os.getpid()}"
    build = subprocess.run(
        ["configs/image/bake-model.sh", str(tiny_dir), image, tag, "ViT-B-32"],
        cwd=ROOT, capture_output=True, text=True, env=PODMAN_ENV, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    container = Container(tag, run_options=("--network=none",))
    try:
        container.wait_ready()
        assert f"loaded /models/{tiny_dir.name}" in container.logs()
        status, registry = container.fetch("/model/registry")
        assert status == 200 and json.loads(registry)["models"][0]["model_id"] == "clip/ViT-B-32"
        status, answer = container.fetch("/clip/embed_text", {"text": "a cat", "clip_version_id": "ViT-B-32"})
        assert status == 200 and len(json.loads(answer)["embeddings"][0]) == 512
        podman("stop", "--time", "30", container.name, timeout=60)
        state = container.state()
        assert (state["Running"], state["ExitCode"]) == (False, 0), container.logs()
    finally:
        container.remove()
        podman("rmi", "--force", tag, check=False)
