"""The generated Deployment's container settings, applied to the real image by Docker as a
kubelet would apply them: its user, read-only root with only its emptyDir mounts writable, no
capabilities, no privilege escalation, its limits and environment. The image must serve under
them, answer its probes' paths, run its pre-stop command, and stop within its grace period.

No Kubernetes can run here; this is what can be shown of the manifest against the image."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import pytest
import yaml

from mlimg.manifests import cpu_cores, memory_bytes
from tests.e2e.conftest import post, run_mlimg, serving
from tests.e2e.test_build import iris_frame


def deployment_container(model: Path, image: str, out: Path) -> tuple[dict, dict]:
    """The generated Deployment's container and pod spec (the engine read from the image)."""
    result = run_mlimg(
        "generate-manifests", "-m", str(model), "--image", image, "-d", str(out),
        "--name", "iris", "--cpu", "1", "--memory", "1Gi",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deployment = next(yaml.safe_load_all((out / "iris.kubernetes.yaml").read_text()))
    pod = deployment["spec"]["template"]["spec"]
    return pod["containers"][0], pod


def docker_options(container: dict) -> dict:
    """The container's Kubernetes settings as Docker run options."""
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0
    return {
        "user": f"{security['runAsUser']}:{security['runAsGroup']}",
        "read_only": security["readOnlyRootFilesystem"],
        "tmpfs": {mount["mountPath"]: "" for mount in container["volumeMounts"]},
        "cap_drop": security["capabilities"]["drop"],
        "security_opt": [] if security["allowPrivilegeEscalation"] else ["no-new-privileges"],
        "environment": {item["name"]: item["value"] for item in container["env"]},
        "mem_limit": memory_bytes(container["resources"]["limits"]["memory"]),
        "nano_cpus": int(cpu_cores(container["resources"]["limits"]["cpu"]) * 1e9),
        "ports": {
            f"{port['containerPort']}/tcp": ("127.0.0.1", None)
            for port in container["ports"]
            if port["containerPort"] != 8080
        },
    }


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.parametrize("engine", ["mlimg", "mlserver"])
def test_the_image_runs_under_its_deployments_settings(
    request: pytest.FixtureRequest, docker_client, sklearn_model: Path, tmp_path: Path, engine: str
) -> None:
    image = request.getfixturevalue("iris_image" if engine == "mlimg" else "mlserver_iris_image")
    container_spec, pod = deployment_container(sklearn_model, image, tmp_path / "out")
    assert {p["name"] for p in container_spec["ports"]} == (
        {"http"} if engine == "mlimg" else {"http", "grpc", "metrics"}
    )
    frame = iris_frame()
    expected = mlflow.pyfunc.load_model(str(sklearn_model)).predict(frame).tolist()
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))}).encode()
    with serving(docker_client, image, **docker_options(container_spec)) as url:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert get(f"{url}{container_spec[probe]['httpGet']['path']}")[0] == 200
        assert post(url, body, "application/json") == (200, {"predictions": expected})
        (running,) = docker_client.containers.list(
            filters={"ancestor": image, "label": "mlimg.e2e"}
        )
        if engine == "mlserver":
            running.reload()
            metrics_port = running.ports["8082/tcp"][0]["HostPort"]
            status, text = get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert status == 200 and b"# TYPE" in text
        pre_stop = container_spec["lifecycle"]["preStop"]["exec"]["command"]
        started = time.monotonic()
        assert running.exec_run(pre_stop).exit_code == 0
        assert time.monotonic() - started >= 4  # it pauses, so the endpoints catch up
        grace = pod["terminationGracePeriodSeconds"]
        running.stop(timeout=grace)  # SIGTERM, then SIGKILL after the grace period
        assert running.wait(timeout=grace + 10)["StatusCode"] == 0  # it drained and exited


def test_manifests_refuse_an_image_of_another_model_or_engine(
    iris_image: str, sklearn_model: Path, pyfunc_model: Path, tmp_path: Path
) -> None:
    """The image's labels, read from the engine, must agree with -m and --engine."""
    out = tmp_path / "out"
    other = run_mlimg(
        "generate-manifests", "-m", str(pyfunc_model), "--image", iris_image, "-d", str(out)
    )
    assert other.returncode == 2 and "holds another model" in other.stderr
    engine = run_mlimg(
        "generate-manifests", "-m", str(sklearn_model), "--image", iris_image, "-d", str(out),
        "--engine", "mlserver",
    )  # fmt: skip
    assert (
        engine.returncode == 2 and "was built for the mlimg engine, not mlserver" in engine.stderr
    )
    assert not out.exists()
