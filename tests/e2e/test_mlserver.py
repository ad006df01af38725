"""The MLServer engine's images: the image contract kept, and what MLServer adds (the V2
protocol through an independent client, gRPC and metrics ports, parallel workers)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from sklearn.datasets import load_iris

from mlimg_runtime import contract
from tests.e2e.conftest import build, serving
from tests.e2e.test_build import build_retrained, steps_from_cache
from tests.e2e.test_hardening import wait_healthy
from tests.e2e.test_protocol_images import base_url, exchange, running, stop_during_a_request
from tests.protocol_models import make_protocol_model

IRIS = load_iris(as_frame=True).data.iloc[::7]


def published(container, port: int) -> int:
    container.reload()
    return int(container.ports[f"{port}/tcp"][0]["HostPort"])


@contextlib.contextmanager
def serving_all_ports(docker_client, image: str, **options):
    """The image with its HTTP, gRPC and metrics ports on 127.0.0.1."""
    ports = {f"{port}/tcp": ("127.0.0.1", None) for port in (8080, 8081, 8082)}
    with serving(docker_client, image, ports=ports, **options) as url:
        container = docker_client.containers.list(filters={"label": "mlimg.e2e"})[0]
        yield url, container


def v2_client(url: str):
    """tritonclient's HTTP client. MLServer has no binary tensor extension: tensors are sent
    as JSON (binary_data=False)."""
    import tritonclient.http as triton

    return triton, triton.InferenceServerClient(url=url.removeprefix("http://"))


def test_image_contract(docker_client, mlserver_iris_image: str) -> None:
    config = docker_client.images.get(mlserver_iris_image).attrs["Config"]
    assert config["Labels"]["mlimg.engine"] == "mlserver"
    assert config["User"] == "10001:10001"
    assert {"8080/tcp", "8081/tcp", "8082/tcp"} <= set(config["ExposedPorts"])
    assert config["Entrypoint"] == ["python", "-m", "mlimg_runtime.mlserver_engine"]
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python"]
    size = docker_client.images.get(mlserver_iris_image).attrs["Size"]
    assert size < 1_000_000_000, "mlserver-mlflow's full-mlflow dependency must stay out"


def test_invocations_with_workers_metrics_and_v2_over_grpc(
    docker_client, mlserver_iris_image: str, sklearn_model: Path
) -> None:
    expected = mlflow.pyfunc.load_model(str(sklearn_model)).predict(IRIS).tolist()
    body = json.dumps({"dataframe_split": IRIS.to_dict(orient="split")}).encode()
    env = {"MLIMG_WORKERS": "2"}
    with serving_all_ports(docker_client, mlserver_iris_image, environment=env) as (url, box):
        answers: list[tuple[int, object]] = []

        def client() -> None:
            for _ in range(20):
                answers.append(exchange(f"{url}/invocations", body, "application/json"))

        threads = [threading.Thread(target=client) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert answers == [(200, {"predictions": expected})] * 120
        assert "2 worker(s)" in box.logs().decode()
        metrics_url = f"http://127.0.0.1:{published(box, 8082)}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            metrics = response.read().decode()
        assert "rest_server_requests" in metrics
        import tritonclient.grpc as triton_grpc

        grpc = triton_grpc.InferenceServerClient(url=f"127.0.0.1:{published(box, 8081)}")
        assert grpc.is_server_live() and grpc.is_model_ready("model")
        inputs = []
        for name in IRIS.columns:
            column = triton_grpc.InferInput(name, [len(IRIS), 1], "FP64")
            column.set_data_from_numpy(IRIS[[name]].to_numpy(dtype=np.float64))
            inputs.append(column)
        result = grpc.infer("model", inputs)
        [output] = result.get_response(as_json=True)["outputs"]
        assert result.as_numpy(output["name"]).ravel().tolist() == expected


def test_v2_protocol_with_tritonclient_for_a_column_signature(
    docker_client, mlserver_iris_image: str, sklearn_model: Path
) -> None:
    expected = mlflow.pyfunc.load_model(str(sklearn_model)).predict(IRIS)
    with serving(docker_client, mlserver_iris_image) as url:
        triton, client = v2_client(url)
        assert client.is_server_live() and client.is_model_ready("model")
        metadata = client.get_model_metadata("model")
        assert [spec["name"] for spec in metadata["inputs"]] == list(IRIS.columns)
        inputs = []
        for name in IRIS.columns:
            column = triton.InferInput(name, [len(IRIS), 1], "FP64")
            column.set_data_from_numpy(IRIS[[name]].to_numpy(dtype=np.float64), binary_data=False)
            inputs.append(column)
        result = client.infer("model", inputs)
        [output] = result.get_response()["outputs"]
        assert result.as_numpy(output["name"]).ravel().tolist() == expected.tolist()


def test_v2_protocol_with_tritonclient_for_a_tensor_signature(
    docker_client, mlserver_protocol_images: dict, loaded_models: dict
) -> None:
    data = np.array([[1.0, 2.0], [3.5, 4.0], [-1.0, 0.25]])
    expected = loaded_models["tensor"].predict(data)
    with serving(docker_client, mlserver_protocol_images["tensor"]) as url:
        triton, client = v2_client(url)
        metadata = client.get_model_metadata("model")
        tensor = triton.InferInput(metadata["inputs"][0]["name"], list(data.shape), "FP64")
        tensor.set_data_from_numpy(data, binary_data=False)
        result = client.infer("model", [tensor])
        [output] = result.get_response()["outputs"]
        assert result.as_numpy(output["name"]).ravel().tolist() == expected.tolist()
        # input the model refuses is the client's error, as on /invocations
        bad = triton.InferInput(metadata["inputs"][0]["name"], [2, 3], "FP64")
        bad.set_data_from_numpy(np.ones((2, 3)), binary_data=False)
        with pytest.raises(triton.InferenceServerException) as refused:
            client.infer("model", [bad])
        assert refused.value.status() == "400", refused.value


def test_read_only_root_and_an_arbitrary_user(
    docker_client, mlserver_iris_image: str, sklearn_model: Path
) -> None:
    expected = mlflow.pyfunc.load_model(str(sklearn_model)).predict(IRIS).tolist()
    body = json.dumps({"dataframe_split": IRIS.to_dict(orient="split")}).encode()
    options = {"read_only": True, "user": "43210:43210", "healthcheck": {"interval": 2 * 10**9}}
    with serving(docker_client, mlserver_iris_image, **options) as url:
        assert exchange(f"{url}/invocations", body, "application/json") == (
            200,
            {"predictions": expected},
        )
        container = docker_client.containers.list(filters={"label": "mlimg.e2e"})[0]
        assert wait_healthy(container) == "healthy", container.logs().decode()[-2000:]


def test_retrained_model_rebuilds_only_the_model_layers(
    docker_client, mlserver_iris_image: str, tmp_path: Path, ca_cert: Path
) -> None:
    _, result = build_retrained(
        tmp_path, "mlimg-test/iris-retrained-mlserver:e2e", ca_cert, "--engine", "mlserver"
    )
    cached, steps = steps_from_cache(result.stderr)
    assert steps - cached == 2


def test_probes_while_loading(docker_client, mlserver_protocol_images: dict) -> None:
    """/ping is 503 until the model has loaded (readiness); /v2/health/live and the
    contract's liveness path answer 200 as soon as the HTTP server is up (liveness)."""
    container = running(docker_client, mlserver_protocol_images["slow"])  # loads in 4 s or more
    try:
        url = base_url(container)
        pings: list[int] = []
        live: list[int] = []
        alive: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and 200 not in pings:
            with contextlib.suppress(OSError, ValueError):
                pings.append(exchange(f"{url}/ping", timeout=2)[0])
                live.append(exchange(f"{url}/v2/health/live", timeout=2)[0])
                alive.append(exchange(f"{url}{contract.LIVENESS_PATH}", timeout=2)[0])
            time.sleep(0.2)
        assert 503 in pings and pings[-1] == 200, pings
        first_503 = pings.index(503)
        assert live[first_503] == 200 and alive[first_503] == 200, (pings, live, alive)
    finally:
        container.remove(force=True)


def test_timeout_and_body_limit(docker_client, mlserver_protocol_images: dict) -> None:
    env = {"MLIMG_TIMEOUT": "1", "MLIMG_MAX_REQUEST_BYTES": "2000"}
    with serving(docker_client, mlserver_protocol_images["slow"], environment=env) as url:
        slow = json.dumps({"dataframe_records": [{"a": 1.0}], "params": {"seconds": 3}}).encode()
        status, answer = exchange(f"{url}/invocations", slow, "application/json")
        assert status == 504 and answer["error_code"] == "DEADLINE_EXCEEDED", answer
        status, answer = exchange(f"{url}/invocations", b"a\n" + b"1\n" * 2000, "text/csv")
        assert status == 413 and answer["error_code"] == "BAD_REQUEST", answer
        big = json.dumps({"inputs": [{"name": "a", "datatype": "FP64", "shape": [600, 1],
                                      "data": [1.5] * 600}]}).encode()  # fmt: skip
        status, answer = exchange(f"{url}/v2/models/model/infer", big, "application/json")
        assert status == 413 and answer["error_code"] == "BAD_REQUEST", answer


def test_sigterm_finishes_the_request_in_flight(
    docker_client, mlserver_protocol_images: dict
) -> None:
    answers, exit_code, _ = stop_during_a_request(docker_client, mlserver_protocol_images["slow"])
    assert answers == [(200, {"predictions": [0]})]
    assert exit_code == 0


def test_a_model_that_fails_to_load_exits_non_zero(
    docker_client, mlserver_protocol_images: dict
) -> None:
    container = running(
        docker_client,
        mlserver_protocol_images["vector"],
        environment={"MLIMG_MODEL_PATH": "/nonexistent"},
    )
    try:
        result = container.wait(timeout=120)
        logs = container.logs().decode()
        assert result["StatusCode"] == 1, logs[-3000:]
        assert "the model at /nonexistent did not load" in logs
    finally:
        container.remove(force=True)


def test_an_inference_worker_that_dies_is_answered_in_json_and_replaced(
    docker_client, mlserver_iris_image: str, tmp_path: Path, ca_cert: Path
) -> None:
    """A model that kills its process (as a crashing native library does): that request is a
    JSON 500, requests while MLServer starts a new worker a JSON 503, then service resumes."""
    model = make_protocol_model("dying", tmp_path / "dying")
    tag = "mlimg-test/proto-dying-mlserver:e2e"
    result = build(model, tag, ca_cert, "--engine", "mlserver", "--no-smoke-test")
    assert result.returncode == 0, result.stderr
    one = json.dumps({"dataframe_records": [{"a": 1.0}]}).encode()
    dies = json.dumps({"dataframe_records": [{"a": 666.0}]}).encode()
    with serving(docker_client, tag, environment={"MLIMG_WORKERS": "1"}) as url:
        assert exchange(f"{url}/invocations", one, "application/json") == (
            200,
            {"predictions": [{"a": 2.0}]},
        )
        status, answer = exchange(f"{url}/invocations", dies, "application/json")
        assert status == 500 and answer["error_code"] == "INTERNAL_ERROR", answer
        statuses = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and 200 not in statuses:
            status, answer = exchange(f"{url}/invocations", one, "application/json")
            statuses.append(status)
            assert status in (200, 503), answer
            time.sleep(0.5)
        assert statuses[-1] == 200, statuses
