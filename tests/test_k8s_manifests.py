"""configs/k8s/: every manifest is valid against the Kubernetes API schemas (kubernetes-validate
ships them: no cluster, no network), and the Deployment keeps clipgate's operating rules: probes
on the right paths and port, a grace period that covers the drain, non-root, resource requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from clipgate import probes
from clipgate.app import load_app_config
from clipgate.cli import SHUTDOWN_MARGIN_S
from clipgate.config import Config

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "configs" / "k8s"
MANIFESTS = sorted(p.name for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
# The oldest Kubernetes the manifests are meant for (autoscaling/v2, policy/v1 PDBs and startup
# probes are all GA by then), and the newest the schemas know.
VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())
# A ViT-B/32 loads and warms up in seconds from a local disk; the startup probe allows for large
# models read from a slow network volume.
MODEL_LOAD_BUDGET_S = 120


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S_DIR / name).read_text()) if doc]


def only(name: str) -> dict[str, Any]:
    (doc,) = load(name)
    return doc


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return only("deployment.yaml")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


@pytest.fixture(scope="module")
def config(container: dict[str, Any]) -> Config:
    """The configuration the pod runs with: the image's defaults and the Deployment's env (every
    CLIPGATE_* name in it must be a key, or this fails as clipgate would at start)."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if e["name"].startswith("CLIPGATE_")}
    return load_app_config(None, env)


def test_the_manifests_are_all_there() -> None:
    assert set(MANIFESTS) >= {"deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml"}
    kinds = {doc["kind"] for name in MANIFESTS for doc in load(name)}
    assert kinds >= {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_valid_against_the_kubernetes_schemas(name: str, version: str) -> None:
    for doc in load(name):
        # strict: a misspelt or misplaced field is an error, not an ignored extra
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_catches_a_misplaced_field(deployment: dict[str, Any]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["path"] = "/readyz"  # not under httpGet
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_kustomization_lists_existing_files() -> None:
    resources = only("kustomization.yaml")["resources"]
    assert set(resources) >= {"deployment.yaml", "service.yaml", "pdb.yaml"}
    assert all((K8S_DIR / r).is_file() for r in resources)


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def test_probes_hit_clipgate_on_its_port(container: dict[str, Any], config: Config) -> None:
    assert set(probes.PATHS) == {"/livez", "/readyz"}
    paths = {kind: container[kind]["httpGet"]["path"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for kind in paths:
        assert probe_port(container, container[kind]) == config.server.port, kind


def test_the_startup_probe_allows_for_the_model_load(container: dict[str, Any]) -> None:
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= MODEL_LOAD_BUDGET_S


def test_the_grace_period_covers_the_drain(
    deployment: dict[str, Any], container: dict[str, Any], config: Config
) -> None:
    server = config.server
    assert server.drain_grace_s > 0, "set CLIPGATE_SERVER_DRAIN_GRACE_S: the default 0 closes the listener at once"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # clipgate serve waits request_timeout_s + SHUTDOWN_MARGIN_S for requests in flight
    assert grace >= server.drain_grace_s + server.request_timeout_s + SHUTDOWN_MARGIN_S
    # The pod leaves the Service's endpoints (readiness fails) before the listener closes.
    readiness = container["readinessProbe"]
    assert server.drain_grace_s >= readiness["periodSeconds"] * readiness["failureThreshold"]


def test_runs_as_non_root_without_privileges(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"].get("securityContext", {})
    own = container.get("securityContext", {})
    assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True
    assert own.get("runAsUser", pod.get("runAsUser")) not in (None, 0)
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]


def test_a_read_only_root_still_has_a_writable_tmp(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert not mounts["/tmp"].get("readOnly", False)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/data"]["readOnly"] is True  # the model volume; downloads are off in the image


def test_resource_requests(container: dict[str, Any], config: Config) -> None:
    requests = container["resources"]["requests"]
    assert requests.get("cpu") and requests.get("memory")
    # torch's threads match the CPUs asked for, not the node's cores
    assert config.model.torch_threads == int(requests["cpu"])


def test_service_pdb_and_hpa_point_at_the_deployment(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = only("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    pdb = only("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    hpa = only("hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]


def test_the_hpa_scales_on_queue_depth_and_names_its_adapter() -> None:
    hpa = only("hpa.yaml")
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert names == {"clipgate_queue_depth"}
    kinds = {m["pods"]["metric"]["selector"]["matchLabels"]["kind"] for m in hpa["spec"]["metrics"]}
    assert kinds == {"image", "text"}
    assert "prometheus-adapter" in (K8S_DIR / "hpa.yaml").read_text()
