"""deploy/k8s: every overlay rendered (deploy/k8s/render.py, the kustomize subset used
there; the same as `kubectl kustomize` wherever kubectl is installed) and every object
validated by kubernetes-validate against the Kubernetes 1.37 schemas in strict mode
(unknown fields fail). The custom resources (ServiceMonitor, KEDA ScaledObject) have no
schema there, so their references are checked here instead. The replica's probes, port,
flags and environment variables are checked against the server itself: its routes
(openapi.yaml, which tests/http_openapi.rs holds to the route table) and
`tessera serve --help`.
"""

import re
import shutil
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from conftest import ROOT, binary

sys.path.insert(0, str(ROOT / "deploy/k8s"))
import render  # noqa: E402  (deploy/k8s/render.py)

KUBERNETES = "1.37.0"
K8S = ROOT / "deploy/k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject"}


def rendered(overlay: str) -> dict:
    objects = render.render(K8S / "overlays" / overlay)
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert len(by_key) == len(objects), "two objects share a kind and name"
    return by_key


def validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_overlays_are_cpu_and_gpu():
    assert OVERLAYS == ["cpu", "gpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_strict_schema_validation(overlay):
    objects = rendered(overlay)
    kinds = {kind for kind, _ in objects}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap",
            "NetworkPolicy", "ServiceMonitor", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    for (kind, name), obj in objects.items():
        assert obj["metadata"]["namespace"] == "tessera", (kind, name)
        if kind not in CUSTOM_KINDS:
            validate(obj)


@pytest.mark.parametrize("extra", ["base/secret.example.yaml", "extras/keda-scaledobject.yaml"])
def test_files_outside_the_kustomization_validate(extra):
    for obj in yaml.safe_load_all((K8S / extra).read_text()):
        if obj["kind"] not in CUSTOM_KINDS:
            validate(obj)


def test_a_wrong_field_fails_validation():
    """The check can fail: a misspelt field is refused in strict mode."""
    deployment = rendered("cpu")[("Deployment", "tessera")]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_render_matches_kubectl_kustomize(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, check=True).stdout
    real = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out) if o}
    assert rendered(overlay) == real


def serve_help() -> str:
    return subprocess.run([binary(), "serve", "--help"], capture_output=True, text=True, check=True).stdout


def replica(objects: dict) -> dict:
    return objects[("Deployment", "tessera")]["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replica_probes_port_and_flags_match_the_server(overlay):
    objects = rendered(overlay)
    pod = replica(objects)
    (container,) = pod["containers"]
    assert container["args"][0] == "serve"
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"][1:])
    help_text = serve_help()
    for flag in flags:
        assert f"--{flag}" in help_text, flag
    for env in container["env"]:
        assert f"[env: {env['name']}" in help_text, env["name"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(flags["port"])}
    routes = yaml.safe_load((ROOT / "openapi.yaml").read_text())["paths"]
    for probe, path in (("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["path"] in routes and "get" in routes[get["path"]]
        assert get["port"] in ("http", ports["http"])
    # The kubelet waits for preStop, then the drain (--shutdown-timeout), then tessera's
    # own hard exit a few seconds later (serve.rs: ABORT_GRACE + EXIT_GRACE = 5 s).
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > container["lifecycle"]["preStop"]["sleep"]["seconds"] + float(flags["shutdown-timeout"]) + 5
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsNonRoot"] and security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert flags["moderation-policy"].startswith(mounts["moderation"] + "/")
    assert objects[("ConfigMap", "tessera-moderation")]["data"]["policy.toml"] == \
        (ROOT / "deploy/moderation/example.toml").read_text()
    service = objects[("Service", "tessera")]
    assert service["spec"]["ports"][0]["targetPort"] in ports


def test_gpu_overlay_asks_for_one_gpu_per_replica():
    pod = replica(rendered("gpu"))
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] and pod["tolerations"]
    assert "nvidia.com/gpu" not in str(replica(rendered("cpu")))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_gateway_and_network_policy_fit_together(overlay):
    objects = rendered(overlay)
    metric_names = set(re.findall(r'"(tessera_[a-z_]+)"', (ROOT / "src/metrics.rs").read_text()))
    hpa = objects[("HorizontalPodAutoscaler", "tessera")]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in metric_names and hpa["spec"]["scaleTargetRef"]["name"] == "tessera"
    assert metric in objects[("ConfigMap", "tessera-prometheus-adapter")]["data"]["config.yaml"]
    (keda,) = yaml.safe_load_all((K8S / "extras/keda-scaledobject.yaml").read_text())
    assert keda["spec"]["scaleTargetRef"]["name"] == "tessera" and metric in keda["spec"]["triggers"][0]["metadata"]["query"]
    replica_labels = objects[("Deployment", "tessera")]["spec"]["template"]["metadata"]["labels"]
    monitor = objects[("ServiceMonitor", "tessera")]["spec"]
    service = objects[("Service", "tessera")]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["endpoints"][0]["path"] == "/metrics"
    policy = objects[("NetworkPolicy", "tessera-replicas")]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= replica_labels.items()
    router = objects[("Deployment", "tessera-router")]["spec"]["template"]
    allowed = [rule["from"][0].get("podSelector", {}).get("matchLabels") for rule in policy["ingress"]]
    assert any(labels and labels.items() <= router["metadata"]["labels"].items() for labels in allowed)
    args = router["spec"]["containers"][0]["args"]
    selector = args[args.index("--selector") + 1:args.index("--selector") + 3]
    assert dict(s.split("=") for s in selector).items() <= replica_labels.items()
    assert f"--service-discovery-port={objects[('Service', 'tessera')]['spec']['ports'][0]['port']}" in args
    assert "--health-check-endpoint=/ready" in args and "--policy=cache_aware" in args
