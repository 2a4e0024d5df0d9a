"""clipgate as a test target, over real sockets: the in-process server, each fault kind as a
vendor's client or plain HTTP meets it, the README's recipes run as written (each in a fresh
folder outside the repo, the plugin loaded from the installed package), and the GitHub Actions
recipe's service settings and admin calls."""

from __future__ import annotations

import http.client
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from clipgate.bench.servers import ServerProcess, free_port
from clipgate.testing import ClipgateServer

ROOT = Path(__file__).resolve().parents[2]
TEXT = {"text": "a photo of a cat"}


@pytest.fixture(scope="module")
def server(cache_dir: Path, tiny_dir: Path) -> Iterator[ClipgateServer]:
    with ClipgateServer(keys={"sambastudio": "s-key"}, admin_key="adm") as running:
        yield running


def test_the_in_process_server(server: ClipgateServer) -> None:
    assert server.url.startswith("http://127.0.0.1:") and server.keys == {"sambastudio": "s-key"}
    assert server.url_for("roboflow", "/clip/embed_text") == server.url + "/clip/embed_text"
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
    assert requests.post(server.url + "/clip/embed_text", json=TEXT, timeout=30).status_code == 200
    assert server.started_s > 0


def test_a_reset_is_a_connection_error(server: ClipgateServer) -> None:
    server.faults.set(reset=True, route="/clip/embed_text", first=1)
    with pytest.raises(requests.ConnectionError):
        requests.post(server.url + "/clip/embed_text", json=TEXT, timeout=30)
    assert requests.post(server.url + "/clip/embed_text", json=TEXT, timeout=30).status_code == 200


def test_a_hang_runs_into_the_clients_timeout(server: ClipgateServer) -> None:
    with pytest.raises(requests.Timeout):
        requests.post(server.url + "/clip/embed_text", json=TEXT, headers={"X-Clipgate-Fault": "hang"}, timeout=1)
    assert requests.post(server.url + "/clip/embed_text", json=TEXT, timeout=30).status_code == 200


def test_a_truncated_body_breaks_off(server: ClipgateServer) -> None:
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.post(
            server.url + "/clip/embed_text", json=TEXT, headers={"X-Clipgate-Fault": "truncate=100"}, timeout=30
        )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/clip/embed_text", b'{"text": "a"}', {"X-Clipgate-Fault": "truncate=50"})
        response = conn.getresponse()
        assert response.status == 200 and int(response.headers["content-length"]) > 50
        with pytest.raises(http.client.IncompleteRead) as caught:
            response.read()
        assert len(caught.value.partial) == 50
    finally:
        conn.close()


def test_a_dribbled_body_is_whole_but_slow(server: ClipgateServer) -> None:
    started = time.perf_counter()
    response = requests.post(
        server.url + "/clip/embed_text", json=TEXT, headers={"X-Clipgate-Fault": "dribble=4000"}, timeout=60
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == 200 and len(response.json()["embeddings"][0]) == 512
    assert elapsed >= len(response.content) / 4000 * 0.8  # about as slow as the rate says


def test_error_statuses_over_the_wire_and_the_admin_route(server: ClipgateServer) -> None:
    admin = {"Authorization": "Bearer adm"}
    assert requests.post(server.url + "/admin/faults", json={"status": 503, "first": 1}, headers=admin).ok
    refused = requests.post(
        server.url + "/score", json={"input_data": {"columns": ["image", "text"], "data": [["", "x"]]}}
    )
    assert refused.status_code == 503 and refused.json() == {"message": "Injected fault: HTTP 503."}
    assert requests.delete(server.url + "/admin/faults", headers=admin).json() == {"faults": []}


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Testing against clipgate\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_the_readme_recipes_pass_in_a_fresh_folder(cache_dir: Path, tiny_dir: Path, tmp_path: Path) -> None:
    """Each recipe, as written, is a test file in an empty folder outside the repo; pytest there
    finds the plugin through the installed package's entry point."""
    recipes = readme_blocks("python")
    assert len(recipes) == 3
    for n, recipe in enumerate(recipes):
        (tmp_path / f"test_recipe_{n}.py").write_text(recipe)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPGATE_", "PYTEST_"))}
    env["CLIPGATE_CACHE_DIR"] = str(cache_dir)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout


def test_the_github_actions_recipe(cache_dir: Path, tiny_dir: Path, tmp_path: Path) -> None:
    """The service's settings start a clipgate, and its curl steps (pointed at this machine's
    port instead of the container's 8000) wait for readiness and set the faults the job expects."""
    (workflow,) = readme_blocks("yaml")
    job = yaml.safe_load(workflow)["jobs"]["integration"]
    service = job["services"]["clipgate"]
    assert service["image"] == "clipgate:cpu" and service["ports"] == ["8000:8000"]
    port = free_port()
    argv = [sys.executable, "-m", "clipgate.cli", "serve", "--port", str(port)]
    env = {**{k: str(v) for k, v in service["env"].items()}, "CLIPGATE_CACHE_DIR": str(cache_dir)}
    with ServerProcess("actions", argv, port, tmp_path / "server.log", env=env):
        for step in job["steps"]:
            command = step.get("run", "")
            if command.startswith("curl"):
                args = shlex.split(command.replace("http://localhost:8000", f"http://127.0.0.1:{port}"))
                assert subprocess.run(args, capture_output=True, timeout=120).returncode == 0, command
        statuses = [requests.post(f"http://127.0.0.1:{port}/clip/embed_text", json=TEXT).status_code for _ in range(3)]
        assert statuses == [503, 503, 200]
