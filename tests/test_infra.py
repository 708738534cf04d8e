"""The serving manifests agree with each other and with the CLI they run (no Docker engine or
cluster runs here, so this checks what can be checked offline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from data2model.cli import parser

INFRA = Path(__file__).resolve().parents[1] / "infra"


def dockerfile_cmd() -> list[str]:
    (line,) = [line for line in (INFRA / "serving/Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    return json.loads(line.removeprefix("CMD "))


def test_dockerfile_runs_d2m_serve_on_its_exposed_port_with_a_valid_command_line():
    text = (INFRA / "serving/Dockerfile").read_text()
    cmd = dockerfile_cmd()
    assert cmd[:2] == ["d2m", "serve"]
    args = parser().parse_args(cmd[1:])
    assert f"EXPOSE {args.port}" in text
    assert re.search(r"pip install -c constraints\.txt", text), "the image must install the verified pins"
    assert "USER " in text  # not root


def test_k8s_deployment_probes_and_service_target_the_served_port():
    deployment, service = yaml.safe_load_all((INFRA / "k8s/model-server.yaml").read_text())
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == dockerfile_cmd()
    (port,) = container["ports"]
    assert port["containerPort"] == parser().parse_args(container["command"][1:]).port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": port["name"]}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = json.dumps(container.get("env", []))
    assert "SECRET" not in env.upper() and "PASSWORD" not in env.upper()  # credentials come from a Secret


def test_the_served_inference_log_is_writable_and_reaches_the_monitoring_flow():
    """The server runs as a non-root user: its log folder must be its own, and on compose and
    Kubernetes a volume the monitoring flow reads as well (its working directory's serve.log.folder)."""
    from data2model.params import load_params

    folder = load_params(INFRA.parent).serve.log.folder
    dockerfile = (INFRA / "serving/Dockerfile").read_text()
    user = re.search(r"^USER (\d+)", dockerfile, re.M).group(1)
    assert re.search(rf"mkdir -p /app/{folder} && chown -R {user} /app/", dockerfile)
    deployment, _ = yaml.safe_load_all((INFRA / "k8s/model-server.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (mount,) = pod["containers"][0]["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = yaml.safe_load((INFRA / "k8s/workspace.yaml").read_text())
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert deployment["metadata"]["namespace"] == claim["metadata"]["namespace"]
    assert mount == {"name": mount["name"], "mountPath": f"/app/{folder}", "subPath": folder}
    assert pod["securityContext"]["fsGroup"] == int(user)
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    assert f"../{folder}:/app/{folder}" in compose["model-server"]["volumes"]
    assert "..:/workspace" in compose["prefect-worker"]["volumes"] and compose["prefect-worker"]["working_dir"] == "/workspace"
