"""Every infra manifest parses and validates against its schema, offline: Kubernetes objects
against the API's JSON schemas (kubernetes-validate bundles them, as kubeconform would fetch
them), the KubeRay cluster's pod templates and the Prefect job template's rendered Job likewise;
compose.yaml structurally (and with `docker compose config` where that client exists). The
manifests also agree with each other: addresses, ports, pools."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"
K8S_VERSION = "1.30.0"
PREFECT_FILES = {"prefect.yaml"}  # Prefect's deployment file, not a Kubernetes manifest


def k8s_documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted((INFRA / "k8s").glob("*.yaml")) if path.name not in PREFECT_FILES
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_core_kubernetes_object_validates_strictly_against_the_api_schema():
    core = [(name, doc) for name, doc in k8s_documents() if not doc["apiVersion"].startswith("ray.io/")]
    assert {doc["kind"] for _, doc in core} >= {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"}
    for name, doc in core:
        try:
            validate(doc)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {err.message} at {list(err.path)}")


def test_the_validator_rejects_a_wrong_field():
    (deployment, *_) = by_kind("Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "http"}]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_raycluster_has_cpu_and_gpu_groups_with_valid_pod_templates():
    (cluster,) = by_kind("RayCluster")
    spec = cluster["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head schedules no training
    templates = [spec["headGroupSpec"]["template"], *(g["template"] for g in groups.values())]
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay wants map[string]string
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == "1"
    for template in templates:
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "ray"}, "template": template})
        for container in template["spec"]["containers"]:
            assert {"secretRef": {"name": "data2model-ray"}} in container["envFrom"]  # Ray's auth token
        assert workspace_path(template["spec"]) == "/workspace"


def workspace_path(pod_spec: dict) -> str:
    """Where a pod mounts the shared workspace claim: the driver's Job and the Ray pods must
    agree, because the training workers import the project's code from the driver's folder."""
    (claim,) = [doc for doc in by_kind("PersistentVolumeClaim")]
    (volume,) = [v["name"] for v in pod_spec["volumes"] if v["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]]
    (mount,) = [m["mountPath"] for m in pod_spec["containers"][0]["volumeMounts"] if m["name"] == volume]
    return mount


def render(node, values: dict):
    """Prefect's job-template substitution: a string that is exactly "{{ var }}" becomes the
    value (any type); placeholders inside longer strings are replaced as text."""
    if isinstance(node, dict):
        return {k: render(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [render(v, values) for v in node]
    if isinstance(node, str):
        whole = re.fullmatch(r"\{\{ (\w+) \}\}", node)
        if whole:
            return values[whole.group(1)]
        return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(values[m.group(1)]), node)
    return node


def work_pool_template() -> dict:
    return json.loads((INFRA / "k8s/prefect-work-pool.json").read_text())


def test_prefect_base_job_template_renders_to_a_valid_job_that_reaches_ray_and_mlflow():
    template = work_pool_template()
    variables = template["variables"]["properties"]
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert used <= set(variables), f"undeclared variables: {used - set(variables)}"
    values = {name: spec.get("default") for name, spec in variables.items()}
    values |= {"command": ["prefect", "flow-run", "execute"], "env": [{"name": k, "value": v} for k, v in values["env"].items()],
               "labels": {"app.kubernetes.io/name": "data2model"}}
    job = render(template["job_configuration"]["job_manifest"], values)
    validate(job | {"metadata": job["metadata"] | {"name": "data2model-run"}})
    pod = job["spec"]["template"]["spec"]
    assert workspace_path(pod) == pod["containers"][0]["workingDir"] == "/workspace"  # the clone lands where Ray reads

    (cluster,) = by_kind("RayCluster")
    (mlflow,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "mlflow"]
    meta = cluster["metadata"]
    env = variables["env"]["default"]
    assert env["RAY_ADDRESS"] == f"{meta['name']}-head-svc.{meta['namespace']}.svc:6379"  # KubeRay's head Service
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow.{mlflow['metadata']['namespace']}.svc:{mlflow['spec']['ports'][0]['port']}"


def test_kubernetes_deployment_file_targets_the_pool_the_worker_polls():
    (deployment,) = yaml.safe_load((INFRA / "k8s/prefect.yaml").read_text())["deployments"]
    (process,) = yaml.safe_load((INFRA.parent / "prefect.yaml").read_text())["deployments"]
    (worker,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "prefect-worker"]
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--pool") + 1] == deployment["work_pool"]["name"]
    assert deployment["entrypoint"] == process["entrypoint"]


def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def test_compose_services_bind_loopback_and_use_only_declared_settings():
    text = (INFRA / "compose.yaml").read_text()
    services = compose()["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker", "ray-head", "ray-worker", "model-server"} <= set(services)
    for name, service in services.items():
        assert "image" in service, name
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port} beyond loopback"
        for needed in service.get("depends_on", []):
            assert needed in services, f"{name} depends on unknown {needed}"
        if "build" in service:
            assert (INFRA / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines() if line and not line.startswith("#"))
    used = set(re.findall(r"\$\{(\w+)(?::-[^}]*)?\}", text))
    assert used <= set(example), f"settings missing from .env.example: {used - set(example)}"
    for key, value in example.items():
        if re.search("PASSWORD|SECRET|TOKEN|ACCESS_KEY", key):
            assert value == "change-me", f"{key} in .env.example must be a placeholder"


def test_compose_wires_the_engines_to_each_other():
    services = compose()["services"]
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://") and "@postgres:5432/mlflow" in mlflow["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://") and mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "mlflow:5000" in mlflow["MLFLOW_ALLOWED_HOSTS"].split(",")  # MLflow's Host-header guard lets the others in
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    worker = services["prefect-worker"]["environment"]
    assert worker["RAY_ADDRESS"] == "ray-head:6379" and worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for name in ("prefect-worker", "ray-head", "ray-worker"):
        assert services[name]["environment"]["RAY_AUTH_TOKEN"] == "${RAY_AUTH_TOKEN}"
    assert services["model-server"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def docker_compose_available() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not docker_compose_available(), reason="no `docker compose` client here; the structural checks above still run")
def test_docker_compose_config_accepts_the_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text((INFRA / ".env.example").read_text())
    proc = subprocess.run(["docker", "compose", "-f", str(INFRA / "compose.yaml"), "--env-file", str(env), "config", "-q"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
