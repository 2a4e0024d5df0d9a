"""configs/k8s/ray/: the KubeRay RayService is valid against KubeRay's own CRD schema (vendored in
tests/fixtures/kuberay/, checked strictly: an unknown field is an error, as kubectl's Strict field
validation makes it) and its pod templates against Kubernetes' PodTemplate schema
(kubernetes-validate), with no cluster and no network; and it keeps clipgate's rules under Ray:
the serve config builds clipgate.ray:build with known arguments and real configuration keys, the
cluster's Ray is the extra's, GPU workers ask for GPUs, the pods run non-root with requests set,
and a stopped pod lets its requests finish."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from clipgate.app import load_app_config
from clipgate.config import Config

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "configs" / "k8s" / "ray" / "rayservice.yaml"
CRD = ROOT / "tests" / "fixtures" / "kuberay" / "ray.io_rayservices.yaml"
IMAGE_DIR = ROOT / "configs" / "image"
# As tests/test_k8s_manifests.py: the oldest Kubernetes meant, and the newest the schemas know.
VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())
# clipgate.ray:build's arguments (issue 10), besides dotted configuration keys ("server.port").
BUILD_ARGS = {"model", "replicas", "mode", "config", "num_cpus", "num_gpus", "encoder_replicas"}
MODES = {"whole", "split"}
# KubeRay's defaults (ray-operator/controllers/ray/utils/constant.go): the head's ports, and the
# worker port its serve readiness check and the Serve Service look for by name.
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000}
SERVE_PORT_NAME = "serve"
# RayService names end up in Service names: <name>-serve-svc within 63 characters (constant.go).
MAX_NAME_LENGTH = 47
RAY_CONTAINER_INDEX = 0  # KubeRay runs `ray start` in the pod template's first container


def rayservice() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return dict(doc)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return rayservice()


@pytest.fixture(scope="module")
def cluster(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict(manifest["spec"]["rayClusterConfig"])


@pytest.fixture(scope="module")
def serve_config(manifest: dict[str, Any]) -> dict[str, Any]:
    loaded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert isinstance(loaded, dict), "serveConfigV2 must be a YAML mapping"
    return loaded


@pytest.fixture(scope="module")
def application(serve_config: dict[str, Any]) -> dict[str, Any]:
    (app,) = serve_config["applications"]
    return dict(app)


def groups(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("head", headGroupSpec), then (groupName, spec) for each worker group."""
    yield "head", cluster["headGroupSpec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return dict(group["template"]["spec"]["containers"][RAY_CONTAINER_INDEX])


def workers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return list(cluster["workerGroupSpecs"])


def gpus(group: dict[str, Any]) -> int:
    limits = ray_container(group)["resources"].get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def cpus(group: dict[str, Any]) -> float:
    """Ray's logical CPUs on a pod of the group: rayStartParams num-cpus, else the container's CPU
    limit, else its request (KubeRay's generateRayStartCommand)."""
    if "num-cpus" in group["rayStartParams"]:
        return float(group["rayStartParams"]["num-cpus"])
    resources = ray_container(group)["resources"]
    quantity = str(resources.get("limits", {}).get("cpu") or resources["requests"]["cpu"])
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# --- the CRD: vendored, and applied strictly ---


@functools.cache
def load_crd() -> dict[str, Any]:
    """The vendored CRD, parsed once (a megabyte of YAML: libyaml's parser when PyYAML has it)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return dict(yaml.load(CRD.read_text(), Loader=loader))


def crd_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the CRD's ray.io/v1 version (shared: not to be changed)."""
    crd = load_crd()
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert version["served"] and version["storage"]
    return dict(version["schema"]["openAPIV3Schema"])


def strict(schema: Any) -> Any:
    """The schema with every object's unknown fields an error, as the API server treats them under
    Strict field validation (kubectl's default): an object schema that lists `properties` and
    neither sets `additionalProperties` nor `x-kubernetes-preserve-unknown-fields` gets
    `additionalProperties: false`. Objects declared without properties (`metadata`: the API server
    checks ObjectMeta itself) and preserve-unknown ones stay open."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) if key not in ("enum", "default", "required") else value for key, value in schema.items()}
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = strict(crd_schema())
    # A CRD schema is OpenAPI 3.0's subset of JSON Schema draft 4 (type, properties, items,
    # required, anyOf, enum, pattern, ...); draft 4 reads every keyword it uses the same way.
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def test_the_vendored_crd_is_kuberays_file_unchanged() -> None:
    text = CRD.read_text()
    header, body = text.split("\n---\n", 1)
    recorded = re.search(r"^#\s+sha256\s+([0-9a-f]{64})", header, re.M)
    assert recorded, "the header records the upstream file's sha256"
    assert hashlib.sha256(("---\n" + body).encode()).hexdigest() == recorded.group(1)
    assert all(line.startswith("#") for line in header.splitlines() if line.strip())
    assert "ray-project/kuberay" in header and "v1.7.0" in header
    crd = load_crd()
    assert (crd["kind"], crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (
        "CustomResourceDefinition",
        "ray.io",
        "RayService",
    )


def test_valid_against_kuberays_crd(manifest: dict[str, Any], validator: jsonschema.protocols.Validator) -> None:
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    ("where", "field"),
    [
        pytest.param(("spec",), "serveConfig", id="v1alpha1-serveConfig"),
        pytest.param(("spec", "rayClusterConfig"), "workerGroupSpec", id="misspelt-group-list"),
        pytest.param(("spec", "rayClusterConfig", "headGroupSpec"), "image", id="image-outside-the-template"),
        pytest.param(
            ("spec", "rayClusterConfig", "workerGroupSpecs", 1, "template", "spec", "containers", 0, "readinessProbe"),
            "path",
            id="probe-path-not-under-httpGet",
        ),
    ],
)
def test_the_strict_schema_catches_an_unknown_field(
    manifest: dict[str, Any], validator: jsonschema.protocols.Validator, where: tuple[Any, ...], field: str
) -> None:
    """Each of these the CRD's schema as written would accept (the API server would drop the field
    in silence under non-strict validation); the strict schema does not."""
    broken = copy.deepcopy(manifest)
    node: Any = broken
    for key in where:
        node = node[key]
    node[field] = "x"
    jsonschema.Draft4Validator(crd_schema()).validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_the_crds_cel_rules_do_not_apply(manifest: dict[str, Any], cluster: dict[str, Any]) -> None:
    """The CRD's x-kubernetes-validations (CEL; jsonschema cannot run them) all guard managedBy
    and gcsFaultToleranceOptions, which this manifest leaves unset."""
    schema = json.dumps(crd_schema()["properties"]["spec"])
    assert schema.count("x-kubernetes-validations") == 3
    assert "managedBy" not in manifest["spec"]
    assert "managedBy" not in cluster and "gcsFaultToleranceOptions" not in cluster


@pytest.mark.parametrize("version", VERSIONS)
def test_pod_templates_are_valid_kubernetes_pod_templates(cluster: dict[str, Any], version: str) -> None:
    """The CRD embeds PodTemplateSpec as generated for one Kubernetes release; kubernetes-validate
    checks each template against the real one of the oldest and newest releases meant."""
    for name, group in groups(cluster):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"clipgate-{name}"}}
        kubernetes_validate.validate({**wrapped, "template": group["template"]}, version, strict=True)


# --- KubeRay's own checks (ray-operator/controllers/ray/utils/validation.go) ---


def test_kuberay_accepts_the_cluster(manifest: dict[str, Any], cluster: dict[str, Any]) -> None:
    name = manifest["metadata"]["name"]
    assert len(name) <= MAX_NAME_LENGTH and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert manifest["spec"].get("upgradeStrategy", {}).get("type", "NewCluster") in {
        "NewCluster",
        "NewClusterWithIncrementalUpgrade",
        "None",
    }
    for group_name, group in groups(cluster):
        params = group["rayStartParams"]
        assert "labels" not in params, group_name  # the group's `labels` field instead
        sets_resources = any(params.get(key) for key in ("num-cpus", "num-gpus", "memory", "resources"))
        assert not (sets_resources and group.get("resources")), f"{group_name}: resources set twice"
        assert group["template"]["spec"]["containers"], group_name
    for group in workers(cluster):
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    names = [group["groupName"] for group in workers(cluster)]
    assert len(names) == len(set(names))


def test_not_in_the_plain_kustomization() -> None:
    """`kubectl apply -k configs/k8s` must work on a cluster without the KubeRay operator."""
    kustomization = yaml.safe_load((ROOT / "configs" / "k8s" / "kustomization.yaml").read_text())
    assert not any("ray" in resource for resource in kustomization["resources"])
    assert "KubeRay operator" in MANIFEST.read_text().split("apiVersion:")[0]


# --- the serve config: clipgate.ray:build, with known arguments ---


def test_the_serve_config_builds_clipgate(serve_config: dict[str, Any], application: dict[str, Any]) -> None:
    assert application["import_path"] == "clipgate.ray:build"
    assert application["route_prefix"] == "/"
    assert application["name"] == "clipgate"
    # The code is the image's: nothing fetched or installed at deploy time.
    assert "working_dir" not in application.get("runtime_env", {})
    assert "pip" not in application.get("runtime_env", {})
    http = serve_config["http_options"]
    assert http["host"] == "0.0.0.0", "Ray's default, 127.0.0.1, is unreachable from the Service"


def test_the_builds_arguments_are_known(application: dict[str, Any]) -> None:
    args = application["args"]
    unknown = {key for key in args if key not in BUILD_ARGS and "." not in key}
    assert not unknown, f"not arguments of clipgate.ray:build: {sorted(unknown)}"
    assert args.get("mode", "whole") in MODES
    assert isinstance(args["model"], str) and args["model"]
    assert "model.id" not in args, "the model is the `model` argument"
    for key in ("replicas", "encoder_replicas"):
        if key in args:
            assert isinstance(args[key], int) and args[key] >= 1, key
    for key in ("num_cpus", "num_gpus"):
        if key in args:
            assert isinstance(args[key], int | float) and args[key] >= 0, key
    if "encoder_replicas" in args:
        assert args["mode"] == "split", "encoder_replicas applies to split mode only"


def dotted(application: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The args' dotted configuration keys as TOML tables: {"server": {"request_timeout_s": 60}}."""
    tables: dict[str, dict[str, Any]] = {}
    for key, value in application["args"].items():
        if "." in key:
            section, _, name = key.partition(".")
            tables.setdefault(section, {})[name] = value
    return tables


@pytest.fixture(scope="module")
def config(application: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The configuration the replicas run with: the image's defaults and the args' dotted keys,
    loaded as a config file (so an unknown key, a wrong type or a value out of range fails here
    as clipgate would fail at start). JSON literals are valid TOML for the scalars and string
    lists that configuration values are."""
    text = "".join(
        f"[{section}]\n" + "".join(f"{name} = {json.dumps(value)}\n" for name, value in table.items())
        for section, table in dotted(application).items()
    )
    path = tmp_path_factory.mktemp("kuberay") / "args.toml"
    path.write_text(text)
    assert tomllib.loads(text) == dotted(application)
    return load_app_config(path, {})


def test_every_dotted_argument_is_a_clipgate_configuration_key(application: dict[str, Any], config: Config) -> None:
    for section, table in dotted(application).items():
        loaded = config.protocol(section) if section in config.protocols else getattr(config, section)
        for name, value in table.items():
            assert getattr(loaded, name) == (tuple(value) if isinstance(value, list) else value), f"{section}.{name}"


def test_a_misspelt_dotted_argument_would_fail(
    application: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The check above is not vacuous: a key that is not clipgate's fails to load."""
    path = tmp_path_factory.mktemp("kuberay") / "bad.toml"
    path.write_text("[batching]\nmax_batch_size = 32\n")
    with pytest.raises(ValueError, match="batching.max_batch_size"):
        load_app_config(path, {})


def test_the_serve_config_is_valid_for_ray_serve(serve_config: dict[str, Any], application: dict[str, Any]) -> None:
    """Against Ray Serve's own config schema (what `serve deploy` and KubeRay submit; the ray extra
    is a test dependency); its models ignore unknown fields, so the keys are checked too."""
    with warnings.catch_warnings():  # Ray's pydantic models warn on import under pydantic 2
        warnings.simplefilter("ignore")
        from ray.serve import schema
    schema.ServeDeploySchema.model_validate(serve_config)
    assert set(serve_config) <= set(schema.ServeDeploySchema.model_fields)
    assert set(serve_config["http_options"]) <= set(schema.HTTPOptionsSchema.model_fields)
    assert set(application) <= set(schema.ServeApplicationSchema.model_fields)


# --- the cluster: Ray version, ports, GPUs, capacity ---


def ray_pin() -> str:
    """The major.minor of ray in pyproject's `ray` extra (ray[serve]==2.60.*)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for requirement in extras.get("ray", []):
        found = re.match(r"ray(\[[^\]]*\])?\s*==\s*(\d+\.\d+)\.\*", requirement)
        if found:
            return found.group(2)
    raise AssertionError(f"pyproject's ray extra pins no ray[serve]==X.Y.*: {extras.get('ray')}")


def test_ray_version_is_the_extras_pin(cluster: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", cluster["rayVersion"])
    assert cluster["rayVersion"].startswith(ray_pin() + "."), (cluster["rayVersion"], ray_pin())


def test_one_image_for_every_ray_pod(cluster: dict[str, Any]) -> None:
    """The Ray version is one for the cluster, so the image is too: configs/image's, cpu or cuda."""
    images = {ray_container(group)["image"] for _, group in groups(cluster)}
    assert len(images) == 1, images
    (image,) = images
    assert image.rsplit("/", 1)[-1].split(":")[0] == "clipgate"


def ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def test_ray_ports(cluster: dict[str, Any], serve_config: dict[str, Any]) -> None:
    head = cluster["headGroupSpec"]
    assert HEAD_PORTS.items() <= ports(ray_container(head)).items()
    # rayStartParams may move them; then the container must say so too.
    params = head["rayStartParams"]
    assert int(params.get("port", HEAD_PORTS["gcs-server"])) == HEAD_PORTS["gcs-server"]
    assert int(params.get("dashboard-port", HEAD_PORTS["dashboard"])) == HEAD_PORTS["dashboard"]
    assert int(params.get("ray-client-server-port", HEAD_PORTS["client"])) == HEAD_PORTS["client"]
    serve_port = serve_config["http_options"].get("port", 8000)
    assert serve_port == HEAD_PORTS["serve"]
    for group in workers(cluster):
        assert ports(ray_container(group)).get(SERVE_PORT_NAME) == serve_port, group["groupName"]


def test_no_replicas_on_the_head(cluster: dict[str, Any]) -> None:
    assert cluster["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    assert gpus(cluster["headGroupSpec"]) == 0


def test_cpu_and_gpu_workers(cluster: dict[str, Any]) -> None:
    gpu_groups = [g for g in workers(cluster) if gpus(g) > 0]
    cpu_groups = [g for g in workers(cluster) if gpus(g) == 0]
    assert gpu_groups and cpu_groups
    for group in gpu_groups:
        resources = ray_container(group)["resources"]
        # an extended resource: a request, if given, must equal the limit
        assert (
            resources["requests"].get("nvidia.com/gpu", resources["limits"]["nvidia.com/gpu"])
            == (resources["limits"]["nvidia.com/gpu"])
        )
        assert "num-gpus" not in group["rayStartParams"], "KubeRay reads it from the limit"


def test_the_replicas_fit_the_worker_groups(application: dict[str, Any], cluster: dict[str, Any]) -> None:
    """At the groups' maxReplicas, every replica the serve config asks for has a place."""
    args = application["args"]
    gpu_slots = sum(g["maxReplicas"] * gpus(g) for g in workers(cluster))
    cpu_slots = sum(g["maxReplicas"] * cpus(g) for g in workers(cluster) if gpus(g) == 0)
    replicas, num_cpus, num_gpus = args.get("replicas", 1), args.get("num_cpus", 1), args.get("num_gpus", 0)
    if args.get("mode", "whole") == "split":
        assert num_gpus > 0, "split mode is for GPU fleets: the encoders ask for GPUs"
        assert args.get("encoder_replicas", 1) * num_gpus <= gpu_slots
        assert replicas * num_cpus <= cpu_slots
    else:
        assert replicas * num_gpus <= gpu_slots or num_gpus == 0
    assert cpus(cluster["headGroupSpec"]) == 0


# --- operating rules, as for configs/k8s/deployment.yaml ---


def test_resource_requests_and_limits(cluster: dict[str, Any]) -> None:
    """Requests for the scheduler; limits, because Ray's logical CPUs and memory are read from them."""
    for name, group in groups(cluster):
        resources = ray_container(group)["resources"]
        for kind in ("cpu", "memory"):
            assert resources["requests"].get(kind) and resources["limits"].get(kind), (name, kind)
    autoscaler = cluster.get("autoscalerOptions", {})
    if cluster.get("enableInTreeAutoscaling"):
        assert autoscaler["resources"]["requests"] and autoscaler["resources"]["limits"]


def test_runs_as_non_root_without_privileges(cluster: dict[str, Any]) -> None:
    for name, group in groups(cluster):
        pod = group["template"]["spec"].get("securityContext", {})
        for container in group["template"]["spec"]["containers"]:
            own = container.get("securityContext", {})
            assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, name
            assert own.get("runAsUser", pod.get("runAsUser")) not in (None, 0), name
            assert own["allowPrivilegeEscalation"] is False, name
            assert own["capabilities"]["drop"] == ["ALL"], name
    if cluster.get("enableInTreeAutoscaling"):  # the autoscaler sidecar, in the head pod
        own = cluster["autoscalerOptions"]["securityContext"]
        assert own["allowPrivilegeEscalation"] is False and own["capabilities"]["drop"] == ["ALL"]


def test_a_read_only_root_still_has_a_writable_tmp(cluster: dict[str, Any]) -> None:
    """Ray keeps its session directory and logs under /tmp/ray; the model volume stays read-only."""
    for name, group in groups(cluster):
        container = ray_container(group)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert not mounts["/tmp"].get("readOnly", False), name
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], name
        assert mounts["/data"]["readOnly"] is True, name


def test_worker_readiness_is_the_serve_proxy_over_http(cluster: dict[str, Any]) -> None:
    """KubeRay's own readiness probe for RayService workers runs wget, which the image lacks; the
    manifest's is an HTTP probe on the Serve proxy's health path instead."""
    runtime = IMAGE_DIR.joinpath("Containerfile.cuda").read_text().split("AS runtime", 1)[1]
    assert "wget" not in runtime
    for group in workers(cluster):
        probe = ray_container(group)["readinessProbe"]
        assert probe["httpGet"] == {"path": "/-/healthz", "port": SERVE_PORT_NAME}, group["groupName"]


def test_a_stopped_pod_lets_its_requests_finish(cluster: dict[str, Any], serve_config: dict[str, Any]) -> None:
    """clipgate answers its own timeout (vendor-shaped) before the proxy's plain 408, and a worker
    pod that is stopped waits out the longest a request can take through the proxy."""
    application = serve_config["applications"][0]
    timeout = float(application["args"].get("server.request_timeout_s", Config().server.request_timeout_s))
    proxy_timeout = serve_config["http_options"]["request_timeout_s"]
    assert proxy_timeout > timeout
    for group in workers(cluster):
        grace = group["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= proxy_timeout, group["groupName"]
