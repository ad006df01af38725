"""`mlimg generate-manifests`: what each file holds, validated as Kubernetes, KServe and Compose
would read it (see tests/manifest_checks.py for how, with no API server), and that validation
catches a broken manifest."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlimg.manifests import label_value, object_name
from mlimg_runtime import contract
from tests.builder.test_cli import assert_clean_failure, mlimg
from tests.manifest_checks import KUBERNETES_VERSIONS, InvalidManifest, validate_object
from tests.models import PYFUNC_MLMODEL, write_fake_model

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example.com/team/iris@{DIGEST}"
RUN_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mlmodel = PYFUNC_MLMODEL + f"run_id: {RUN_ID}\n"
    dest = tmp_path_factory.mktemp("m") / "Iris Classifier"
    return write_fake_model(dest, mlmodel, "mlflow==3.17.2\nscikit-learn\n")


def generate(model: Path, out: Path, *options: str, engine: str = "mlimg") -> dict[str, list]:
    """Every target's documents, by target."""
    targets = ("kubernetes", "kserve", "compose")
    args = ["-m", str(model), "--image", IMAGE, "-d", str(out), "--engine", engine]
    args += [arg for target in targets for arg in ("--target", target)]
    result = mlimg("generate-manifests", *args, *options, cwd=out.parent)
    assert result.returncode == 0, result.stderr
    files = {target: out / f"iris-classifier.{target}.yaml" for target in targets}
    for target, path in files.items():
        assert f"apply it with: {'kubectl apply' if target != 'compose' else 'docker stack'}" in (
            result.stderr
        )
        assert path.read_text().startswith("# Made by mlimg ")
    return {target: list(yaml.safe_load_all(path.read_text())) for target, path in files.items()}


def by_kind(documents: list[dict]) -> dict[str, dict]:
    return {document["kind"]: document for document in documents}


@pytest.mark.parametrize("engine", ["mlimg", "mlserver"])
def test_every_object_is_valid_for_the_oldest_and_newest_kubernetes(
    model: Path, tmp_path: Path, engine: str
) -> None:
    documents = generate(model, tmp_path / "out", engine=engine)
    objects = documents["kubernetes"] + documents["kserve"]
    assert [o["kind"] for o in objects] == [
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "InferenceService",
    ]  # fmt: skip
    for document in objects:
        for version in KUBERNETES_VERSIONS:
            validate_object(document, version)


def test_the_deployment_follows_the_image_contract(model: Path, tmp_path: Path) -> None:
    objects = by_kind(generate(model, tmp_path / "out", "--cpu", "2500m")["kubernetes"])
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["startupProbe"]["httpGet"] == {"path": "/ping", "port": 8080}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ping", "port": 8080}
    # liveness on a path that answers while the model loads (the runtime's /version)
    assert container["livenessProbe"]["httpGet"] == {"path": contract.LIVENESS_PATH, "port": 8080}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsNonRoot"] is True and security["runAsUser"] == contract.USER_ID
    assert pod["securityContext"]["runAsUser"] == contract.USER_ID
    assert container["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    # two whole CPUs in 2500m: two workers
    assert {"name": "MLIMG_WORKERS", "value": "2"} in container["env"]
    assert container["resources"]["limits"] == {"cpu": "2500m", "memory": "2Gi"}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    graceful = contract.default("graceful_timeout")
    assert pod["terminationGracePeriodSeconds"] > graceful + 5  # the pre-stop pause, then drain
    labels = deployment["metadata"]["labels"]
    assert labels["mlimg/model-name"] == "Iris-Classifier" and labels["mlimg/run-id"] == RUN_ID
    assert deployment["metadata"]["annotations"]["mlimg/model-name"] == "Iris Classifier"
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "iris-classifier",
        "app.kubernetes.io/instance": "iris-classifier",
    }
    # the autoscaler owns the replica count; the budget lets one pod go at a time
    assert "replicas" not in deployment["spec"]
    assert objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"


def test_without_autoscaler_or_budget(model: Path, tmp_path: Path) -> None:
    options = ("--no-autoscaler", "--no-disruption-budget", "--replicas", "3")
    documents = generate(model, tmp_path / "out", *options)
    objects = by_kind(documents["kubernetes"])
    assert set(objects) == {"Deployment", "Service"}
    assert objects["Deployment"]["spec"]["replicas"] == 3
    predictor = documents["kserve"][0]["spec"]["predictor"]
    assert predictor["minReplicas"] == predictor["maxReplicas"] == 3


def test_the_mlserver_engine_adds_its_ports_and_declares_v2_to_kserve(
    model: Path, tmp_path: Path
) -> None:
    documents = generate(model, tmp_path / "out", engine="mlserver")
    objects = by_kind(documents["kubernetes"])
    ports = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert [(p["name"], p["containerPort"]) for p in ports] == [
        ("http", 8080), ("grpc", contract.MLSERVER_GRPC_PORT),
        ("metrics", contract.MLSERVER_METRICS_PORT),
    ]  # fmt: skip
    template = objects["Deployment"]["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/port"] == str(contract.MLSERVER_METRICS_PORT)
    assert {p["name"] for p in objects["Service"]["spec"]["ports"]} == {"http", "grpc", "metrics"}
    service = documents["kserve"][0]
    (container,) = service["spec"]["predictor"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PROTOCOL"] == "v2" and env["MLIMG_MODEL_NAME"] == "iris-classifier"
    assert service["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8082"
    assert len(container["ports"]) == 1  # Knative allows one


def test_the_compose_file_rolls_start_first_and_rolls_back(model: Path, tmp_path: Path) -> None:
    options = ("--cpu", "0.5", "--memory", "512Mi", "--replicas", "3")
    (compose,) = generate(model, tmp_path / "out", *options)["compose"]
    assert compose["version"] == "3.8"
    service = compose["services"]["iris-classifier"]
    assert service["image"] == IMAGE and service["read_only"] is True
    assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "mlimg_runtime.healthcheck"]
    deploy = service["deploy"]
    assert deploy["replicas"] == 3
    assert deploy["update_config"]["order"] == "start-first"
    assert deploy["update_config"]["failure_action"] == "rollback"
    assert deploy["resources"]["limits"] == {"cpus": "0.5", "memory": "512m"}
    assert service["environment"] == {"MLIMG_WORKERS": "1"}
    assert service["ports"] == [{"target": 8080, "published": 5000, "protocol": "tcp"}]
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert grace > contract.default("graceful_timeout")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose")
def test_docker_compose_accepts_the_compose_file_and_refuses_a_broken_one(
    model: Path, tmp_path: Path
) -> None:
    generate(model, tmp_path / "out", "--endpoint-mode", "dnsrr")
    path = tmp_path / "out" / "iris-classifier.compose.yaml"
    assert "ports" not in yaml.safe_load(path.read_text())["services"]["iris-classifier"]
    check = ["docker-compose", "-f", str(path), "config", "-q"]
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0
    path.write_text(path.read_text().replace("interval: 5s", "intervall: 5s"))
    broken = subprocess.run(check, capture_output=True, text=True)
    assert broken.returncode != 0 and "intervall" in broken.stderr


def mutated(document: dict, path: str, value: Any, rename: str | None = None) -> dict:
    """A copy of the document with one field changed (or renamed) at a dotted path."""
    document = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = document
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if rename is not None:
        node[rename] = node.pop(last)
    else:
        node[last] = value
    return document


@pytest.mark.parametrize(
    ("kind", "path", "value", "rename"),
    [
        ("Deployment", "spec.template.spec.containers.0.readinessProbe.httpGet.path", None, "paht"),
        ("Deployment", "spec.template.spec.containers.0.livenessProbe", None, "livenesProbe"),
        ("HorizontalPodAutoscaler", "spec.minReplicas", "2", None),
        ("Deployment", "spec.revisionHistoryLimit", "5", None),
        ("Service", "spec.ports.0.port", "eighty", None),
        ("PodDisruptionBudget", "spec.selector", None, "selectors"),
        ("Deployment", "kind", "Deploymnet", None),
        ("InferenceService", "spec.predictor.minReplicas", "2", None),
        ("InferenceService", "spec.predictor.maxReplicas", None, "maxReplica"),
        ("InferenceService", "spec.predictor.containers.0.readinessProbe", None, "readynessProbe"),
        ("InferenceService", "spec.predictor.containers.0.name", "model", None),
        ("InferenceService", "apiVersion", "serving.kserve.io/v1alpha1", None),
        ("InferenceService", "metadata.name", "Iris_Classifier", None),
        ("InferenceService", "spec.predictor", None, "predicter"),
    ],
)
def test_validation_catches_a_broken_manifest(
    model: Path, tmp_path: Path, kind: str, path: str, value: Any, rename: str | None
) -> None:
    documents = generate(model, tmp_path / "out")
    document = by_kind(documents["kubernetes"] + documents["kserve"])[kind]
    broken = mutated(document, path, value, rename)
    for version in KUBERNETES_VERSIONS:
        validate_object(document, version)  # the original passes: the mutation is the cause
        with pytest.raises(InvalidManifest):
            validate_object(broken, version)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--cpu", "two"), "--cpu 'two'"),
        (("--memory", "2GB"), "--memory '2GB'"),
        (("--name", "Iris_Model"), "--name 'Iris_Model'"),
        (("--replicas", "4", "--max-replicas", "3"), "--max-replicas 3 is below --replicas 4"),
        (("--image", "registry.example.com/iris@sha256:beef"), "the digest is not"),
        (("--image", "Registry/Iris:1"), "--image 'Registry/Iris:1' is not a valid image"),
    ],
)
def test_bad_options_are_refused_and_nothing_is_written(
    model: Path, tmp_path: Path, options: tuple[str, ...], message: str
) -> None:
    args = ("-m", str(model), "--image", IMAGE, "-d", str(tmp_path / "out"), *options)
    result = mlimg("generate-manifests", *args, cwd=tmp_path)
    assert_clean_failure(result, message)
    assert result.returncode == 2
    assert not (tmp_path / "out").exists()


def test_names_and_label_values_are_made_safe() -> None:
    assert object_name("Iris Classifier_v2") == "iris-classifier-v2"
    assert object_name("2024 model") == "model-2024-model"
    assert object_name("___") == "model"
    assert len(object_name("x" * 80)) == 53
    assert label_value("runs:/abc/model") == "runs-abc-model"
    assert label_value("-" + "a" * 70) == "a" * 63
