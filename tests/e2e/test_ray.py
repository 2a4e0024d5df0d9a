"""clipgate on Ray Serve (clipgate.ray), on a local Ray cluster started for this module: the vendors'
own clients through Ray's HTTP proxy against two whole-gateway replicas and against split mode,
overload answered in the vendor's shape, and a replica killed with SIGKILL under load.

One cluster per module (4 logical CPUs on this machine's cores, no dashboard, its HTTP proxy on
127.0.0.1, its files in a temporary folder), shut down at the end."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from clipgate.bench.servers import free_port
from tests import imagegen
from tests.e2e.conftest import REPO_ROOT, cosine
from tests.e2e.test_azureml_requests import HEADERS as AZURE_HEADERS
from tests.e2e.test_roboflow_sdk import make_client
from tests.e2e.test_sambastudio_langchain import URIS, embeddings_client
from tests.vendors import AZUREML, PROFILES, ROBOFLOW, SAMBASTUDIO, VendorProfile

pytestmark = pytest.mark.e2e

with warnings.catch_warnings():
    # Ray 2.60's Serve config models pass extra keywords to pydantic's Field (deprecated in pydantic 2).
    warnings.filterwarnings("ignore", message="Using extra keyword arguments on `Field`", category=DeprecationWarning)
    import ray
    from ray import serve
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from clipgate.ray import ENCODER, GATEWAY, build, local_cluster

SAME = 0.99999  # cosine between a vector through Ray and the same request to one process
TIMEOUT_S = 30.0  # every request's client-side deadline: none may hang past it
DEPLOY_TIMEOUT_S = 90.0
# Small limits, so that overload is reached with a few dozen requests on 2 cores.
LIMITS = {"server.max_inflight_requests": "8", "server.max_queued_images": "16"}
DOCUMENTS = ["a photo of a cat", "a red car parked on the street", "sunset over the sea"]


@dataclass
class Cluster:
    url: str
    mode: str | None = None


@pytest.fixture(scope="module")
def cluster(cache_dir: Path) -> Iterator[Cluster]:
    """A private local cluster for this module (see clipgate.ray.local_cluster: no token auth, its
    own folder, never another cluster running here)."""
    environ = {
        # Replicas import this checkout's clipgate and build random:tiny in the session's cache.
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        "CLIPGATE_CACHE_DIR": str(cache_dir),
    }
    port = free_port()
    with local_cluster(cpus=4, port=port, environ=environ):
        yield Cluster(f"http://127.0.0.1:{port}")


def deploy(cluster: Cluster, mode: str) -> str:
    """The app in `mode`, built from string arguments exactly as `serve run clipgate.ray:build
    key=value ...` passes them; deployed once per mode change. Returns the base URL."""
    if cluster.mode != mode:
        args = {"model": "random:tiny", "mode": mode, "replicas": "2" if mode == "whole" else "1", **LIMITS}
        app = call_user_app_builder_with_args_if_necessary(build, args)
        serve.run(app, name="clipgate", route_prefix="/", blocking=False)
        wait_running(cluster.url)
        cluster.mode = mode
    return cluster.url


def wait_running(url: str) -> None:
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while time.monotonic() < deadline:
        status = serve.status().applications.get("clipgate")
        if status is not None and status.status == "RUNNING":
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    return
        time.sleep(0.5)  # the bounded deploy poll
    raise AssertionError(f"clipgate did not come up on Ray within {DEPLOY_TIMEOUT_S:g} s: {serve.status()}")


@pytest.fixture(scope="module", params=["whole", "split"])
def app_url(request: pytest.FixtureRequest, cluster: Cluster) -> str:
    """Module-scoped, so pytest runs every test of one mode before the other: two deploys in all."""
    return deploy(cluster, request.param)


# --- the vendors' own clients: the same vectors as one process -----------------------------------------


def same(a: Any, b: Any, what: str) -> None:
    assert len(a) == len(b) == 512, what
    similarity = cosine(a, b)
    assert similarity >= SAME, f"{what}: cosine {similarity:.7f} between Ray and one process"


def test_roboflow_sdk_through_ray(app_url: str, live_server: str) -> None:
    image = imagegen.picture(seed=21)
    for what, call in (
        ("image", lambda c: c.get_clip_image_embeddings(image)["embeddings"][0]),
        ("texts", lambda c: c.get_clip_text_embeddings(DOCUMENTS)["embeddings"]),
    ):
        through_ray, one_process = call(make_client(app_url)), call(make_client(live_server))
        rows = [through_ray] if what == "image" else through_ray
        expected = [one_process] if what == "image" else one_process
        for i, (a, b) in enumerate(zip(rows, expected, strict=True)):
            same(a, b, f"roboflow {what} {i}")
    compared = make_client(app_url).clip_compare(subject=image, prompt=DOCUMENTS)["similarity"]
    reference = make_client(live_server).clip_compare(subject=image, prompt=DOCUMENTS)["similarity"]
    assert compared == pytest.approx(reference, abs=1e-5)


@pytest.mark.parametrize("family", list(URIS))
def test_sambastudio_langchain_through_ray(app_url: str, live_server: str, family: str) -> None:
    through_ray = embeddings_client(app_url, URIS[family]).embed_documents(DOCUMENTS, batch_size=2)
    one_process = embeddings_client(live_server, URIS[family]).embed_documents(DOCUMENTS, batch_size=2)
    for i, (a, b) in enumerate(zip(through_ray, one_process, strict=True)):
        same(a, b, f"sambastudio {family} document {i}")


def test_azure_sample_requests_through_ray(app_url: str, live_server: str) -> None:
    image = base64.encodebytes(imagegen.jpeg(seed=23)).decode()
    body = {"input_data": {"columns": ["image", "text"], "index": [0], "data": [[image, "a cat on a sofa"]]}}
    answers = [
        requests.post(url + "/score", json=body, headers=AZURE_HEADERS, timeout=TIMEOUT_S)
        for url in (app_url, live_server)
    ]
    assert [a.status_code for a in answers] == [200, 200], answers[0].text[:300]
    through_ray, one_process = answers[0].json()[0], answers[1].json()[0]
    same(through_ray["image_features"], one_process["image_features"], "azure image")
    same(through_ray["text_features"], one_process["text_features"], "azure text")


def test_every_answer_names_its_replica(app_url: str, cluster: Cluster) -> None:
    seen: set[str] = set()
    for _ in range(8):
        for profile in PROFILES.values():
            endpoint = profile.endpoints[0]
            response = requests.post(app_url + endpoint.path, **endpoint.valid_call(), timeout=TIMEOUT_S)
            endpoint.assert_served(response)
            seen.add(response.headers["X-Clipgate-Replica"])
    info = requests.get(app_url + "/info", timeout=TIMEOUT_S)
    assert info.json()["replica"] == info.headers["X-Clipgate-Replica"]
    assert all(name.startswith(f"{GATEWAY}#") for name in seen), seen
    assert len(seen) == (2 if cluster.mode == "whole" else 1), f"answers came from {sorted(seen)}"


# --- overload: clipgate's own answers, in the vendor's shape, before Ray's queue ------------------------


def _burst(url: str, profile: VendorProfile, calls: list[dict[str, Any]], endpoint_name: str) -> list[Any]:
    endpoint = profile.endpoint(endpoint_name)
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: requests.post(url + endpoint.path, **call, timeout=TIMEOUT_S), calls))


@pytest.mark.parametrize(
    ("profile", "endpoint", "status"),
    [(ROBOFLOW, "embed_image", 503), (AZUREML, "score", 429), (SAMBASTUDIO, "file", 503)],
    ids=["roboflow", "azureml", "sambastudio"],
)
def test_overload_through_ray_is_vendor_shaped(
    app_url: str, profile: VendorProfile, endpoint: str, status: int
) -> None:
    route = profile.endpoint(endpoint)
    picture = imagegen.jpeg(seed=31, width=640, height=480)
    if route.image_body is not None and profile is AZUREML:
        calls = [{"json": {"input_data": {"columns": ["image", "text"], "data": [[route.encode(picture), ""]] * 6}}}]
    else:
        calls = [route.image_call(picture)]
    responses = _burst(app_url, profile, calls * 48, endpoint)
    refused = [r for r in responses if r.status_code != 200]
    assert refused, "48 requests at once against limits of 8 in flight were all served"
    for response in refused:
        assert response.status_code == status, response.text[:200]
        profile.assert_error(response)  # JSON in the vendor's shape: never Ray's plain text
        assert int(response.headers["Retry-After"]) >= 1
        assert response.headers["X-Clipgate-Replica"].startswith(f"{GATEWAY}#")
    for response in responses:
        if response.status_code == 200:
            route.assert_served(response)


# --- a replica killed under load ------------------------------------------------------------------------


def replica_pids(deployment: str) -> dict[str, int]:
    """Each running replica of `deployment`: its id (as in X-Clipgate-Replica) -> its process id."""
    pids: dict[str, int] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry["namespace"] != "serve" or f"#{deployment}#" not in name:
            continue
        with contextlib.suppress(Exception):
            actor = ray.get_actor(name, namespace="serve")
            pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
            pids[f"{deployment}#{name.rsplit('#', 1)[1]}"] = pid
    return pids


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (the connection failed)
    replica: str | None
    shaped: bool  # a 200 with vectors, or an error in the vendor's JSON shape


def _load(url: str, stop: threading.Event, outcomes: list[Outcome]) -> None:
    endpoint = ROBOFLOW.endpoint("embed_text")
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = requests.post(url + endpoint.path, **endpoint.text_call(["a cat", "a dog"]), timeout=TIMEOUT_S)
        except requests.Timeout:
            outcomes.append(Outcome(started, time.monotonic(), -1, None, False))  # hung past its deadline
            continue
        except requests.ConnectionError:
            outcomes.append(Outcome(started, time.monotonic(), None, None, False))
            continue
        shaped = response.status_code == 200 or response.headers.get("content-type", "").startswith("application/json")
        outcomes.append(
            Outcome(started, time.monotonic(), response.status_code, response.headers.get("X-Clipgate-Replica"), shaped)
        )


def _kill_under_load(url: str, deployment: str, *, clients: int = 6) -> tuple[list[Outcome], float, str, set[str]]:
    """SIGKILL one replica of `deployment` while `clients` threads send requests; the load goes on
    until a replica started after the kill has answered (or DEPLOY_TIMEOUT_S). Returns the
    outcomes, the time of the kill, the killed replica, and the replicas before it."""
    before = replica_pids(deployment)
    assert before, f"no replica of {deployment} found"
    victim, pid = sorted(before.items())[0]
    outcomes: list[Outcome] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_load, args=(url, stop, outcomes), daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # the load runs before the kill
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = killed_at + DEPLOY_TIMEOUT_S
    replaced = False
    while time.monotonic() < deadline and not replaced:
        time.sleep(0.5)  # the bounded recovery poll
        now = replica_pids(deployment)
        fresh = set(now) - set(before)
        replaced = bool(fresh) and (deployment != GATEWAY or any(o.replica in fresh for o in outcomes[-50:]))
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT_S + 5)
    assert not any(t.is_alive() for t in threads), "a client thread never got an answer"
    assert replaced, f"Ray did not bring up a new replica of {deployment} within {DEPLOY_TIMEOUT_S:g} s"
    return outcomes, killed_at, victim, set(before)


def _report(what: str, outcomes: list[Outcome], killed_at: float) -> dict[str, int]:
    counts = {
        "requests": len(outcomes),
        "ok": sum(o.status == 200 for o in outcomes),
        "failed": sum(o.status != 200 for o in outcomes),
        "failed_in_flight_at_kill": sum(o.status != 200 and o.started <= killed_at <= o.ended for o in outcomes),
        "hung": sum(o.status == -1 for o in outcomes),
        "after_kill": sum(o.started > killed_at for o in outcomes),
    }
    print(f"\n{what}: {counts}")
    return counts


def test_replica_killed_under_load(app_url: str, cluster: Cluster) -> None:
    """Whole mode: a gateway replica dies; split mode: the encoder replica dies."""
    if cluster.mode == "whole":
        whole_replica_killed(app_url)
    else:
        split_encoder_killed(app_url)


def whole_replica_killed(url: str) -> None:
    outcomes, killed_at, victim, before = _kill_under_load(url, GATEWAY)
    counts = _report("whole-gateway replica SIGKILLed", outcomes, killed_at)
    assert counts["hung"] == 0
    # Failures are only the requests the dead replica held: in flight when it died, and never
    # answered by a live replica (those carry no X-Clipgate-Replica of a survivor).
    for outcome in outcomes:
        if outcome.status != 200:
            assert outcome.started <= killed_at <= outcome.ended, outcome
            assert outcome.replica in (None, victim), outcome
    assert counts["failed"] <= 6, counts  # at most one per client thread
    survivors = before - {victim}
    new = {o.replica for o in outcomes if o.status == 200 and o.started > killed_at} - before
    assert new, "no answer came from the replica Ray started in place of the dead one"
    assert any(o.replica in survivors and o.started > killed_at for o in outcomes)


def split_encoder_killed(url: str) -> None:
    outcomes, killed_at, _, _ = _kill_under_load(url, ENCODER)
    counts = _report("split-mode encoder replica SIGKILLed", outcomes, killed_at)
    assert counts["hung"] == 0
    for outcome in outcomes:  # the HTTP replica lives: every answer is its own, 200 or a vendor 503
        assert outcome.status in (200, 503) and outcome.shaped, outcome
        assert outcome.replica is not None and outcome.replica.startswith(f"{GATEWAY}#"), outcome
    # Requests sent just after the kill may still be routed to the dead encoder (a vendor 503,
    # checked above); once Ray has the new one up, it serves every request.
    for _ in range(5):
        response = requests.post(url + "/clip/embed_text", json={"text": ["a cat"]}, timeout=TIMEOUT_S)
        assert response.status_code == 200, "the new encoder replica does not serve"
        assert np.asarray(response.json()["embeddings"]).shape == (1, 512)
