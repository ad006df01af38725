"""The conformance suite against built images, and the server's behaviour as a process:
503 while loading, 504, 413, SIGTERM with a request in flight, JSON logs, workers, load failure.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mlimg_runtime import contract
from tests.conformance import CASES, check_answer
from tests.e2e.conftest import build, serving

CASES_BY_MODEL = defaultdict(list)
for _case in CASES:
    CASES_BY_MODEL[_case.model].append(_case)


def tag_of(name: str) -> str:
    return f"mlimg-test/proto-{name}:e2e"


def exchange(
    url: str, body: bytes | None = None, content_type: str | None = None, timeout: float = 30
) -> tuple[int, object]:
    """One HTTP exchange with exactly the headers given (urllib would add a Content-Type)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request("POST" if body is not None else "GET", parts.path, body, headers)
        response = connection.getresponse()
        payload = response.read().strip()
        return response.status, json.loads(payload) if payload else None
    finally:
        connection.close()


@pytest.fixture(scope="module")
def protocol_images(docker_client, protocol_models: dict, ca_cert: Path) -> dict:
    for name, path in protocol_models.items():
        result = build(path, tag_of(name), ca_cert)
        assert result.returncode == 0, result.stderr
    return {name: tag_of(name) for name in protocol_models}


@pytest.mark.parametrize("engine", ["mlimg", "mlserver"])
@pytest.mark.parametrize("model", sorted(CASES_BY_MODEL))
def test_conformance_against_the_image(
    request: pytest.FixtureRequest, loaded_models: dict, model: str, engine: str
) -> None:
    """The whole suite against each engine's image of each model: the same answers."""
    fixture = "protocol_images" if engine == "mlimg" else "mlserver_protocol_images"
    images = request.getfixturevalue(fixture)
    docker_client = request.getfixturevalue("docker_client")
    with serving(docker_client, images[model]) as url:
        for case in CASES_BY_MODEL[model]:
            status, answer = exchange(f"{url}/invocations", case.body, case.content_type)
            if case.id == "parquet":  # the image has mlflow-skinny, so no pyarrow: a clear 415
                assert status == 415 and "--full-mlflow" in answer["message"], answer
                continue
            check_answer(case, loaded_models[model], status, answer)
        status, answer = exchange(f"{url}/version")
        assert status == 200 and answer["mlflow_version"] == "3.17.2"
        status, answer = exchange(f"{url}/invocations")
        assert status == 405 and answer["error_code"] == "BAD_REQUEST"
        status, answer = exchange(f"{url}/no-such-path")
        assert status == 404 and answer["error_code"] == "ENDPOINT_NOT_FOUND", answer


def running(docker_client, image: str, **options):
    return docker_client.containers.run(
        image,
        detach=True,
        ports={"8080/tcp": ("127.0.0.1", None)},
        labels={"mlimg.e2e": "true"},
        **options,
    )


def base_url(container) -> str:
    for _ in range(100):
        container.reload()
        bindings = (container.ports or {}).get("8080/tcp")
        if bindings:
            return f"http://127.0.0.1:{bindings[0]['HostPort']}"
        time.sleep(0.1)
    raise AssertionError(container.logs().decode())


def test_ping_is_503_while_loading_then_200(docker_client, protocol_images: dict) -> None:
    """/ping is 503 while the model loads (readiness), /version 200 from the start (the
    liveness probe of the generated manifests)."""
    container = running(docker_client, protocol_images["slow"])  # loads in 4s or more
    try:
        url = base_url(container)
        seen, live = [], []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and 200 not in seen:
            with contextlib.suppress(OSError, ValueError):
                seen.append(exchange(f"{url}/ping", timeout=2)[0])
                live.append(exchange(f"{url}{contract.LIVENESS_PATH}", timeout=2)[0])
            time.sleep(0.2)
        assert 503 in seen and seen[-1] == 200, seen
        assert seen.index(503) < seen.index(200)
        assert live[seen.index(503)] == 200, (seen, live)
    finally:
        container.remove(force=True)


def test_timeout_body_limit_and_json_logs(docker_client, protocol_images: dict) -> None:
    env = {"MLIMG_TIMEOUT": "1", "MLIMG_MAX_REQUEST_BYTES": "2000", "MLIMG_LOG_FORMAT": "json"}
    with serving(docker_client, protocol_images["slow"], environment=env) as url:
        slow = json.dumps({"dataframe_records": [{"a": 1.0}], "params": {"seconds": 3}}).encode()
        status, answer = exchange(f"{url}/invocations", slow, "application/json")
        assert status == 504 and answer["error_code"] == "DEADLINE_EXCEEDED"
        status, answer = exchange(f"{url}/invocations", b"a\n" + b"1\n" * 2000, "text/csv")
        assert status == 413
        container = docker_client.containers.list(filters={"label": "mlimg.e2e"})[0]
        deadline = time.monotonic() + 10  # access lines are written in batches, 200 ms late
        while True:
            lines = [json.loads(line) for line in container.logs().decode().splitlines() if line]
            access = [line for line in lines if line.get("path") == "/invocations"]
            if {line["status"] for line in access} >= {504, 413} or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert {line["status"] for line in access} >= {504, 413}
    assert all({"method", "path", "status", "latency_ms"} <= set(line) for line in access)


def stop_during_a_request(docker_client, image: str) -> tuple[list, int, float]:
    """`docker stop` a slow model's container a second into a 3-second request: the request's
    answers, the exit code and the seconds `docker stop` took."""
    with serving(docker_client, image) as url:
        container = docker_client.containers.list(filters={"label": "mlimg.e2e"})[0]
        answers = []
        body = json.dumps({"dataframe_records": [{"a": 1.0}], "params": {"seconds": 3}}).encode()
        client = threading.Thread(
            target=lambda: answers.append(exchange(f"{url}/invocations", body, "application/json"))
        )
        client.start()
        time.sleep(1)
        started = time.monotonic()
        container.stop(timeout=20)
        stopped_after = time.monotonic() - started
        client.join(10)
        container.reload()
        return answers, container.attrs["State"]["ExitCode"], stopped_after


def test_sigterm_finishes_the_request_in_flight(docker_client, protocol_images: dict) -> None:
    answers, exit_code, stopped_after = stop_during_a_request(
        docker_client, protocol_images["slow"]
    )
    assert answers == [(200, {"predictions": [0]})]
    assert exit_code == 0
    assert stopped_after < 8


def test_workers_follow_the_cpu_quota(docker_client, protocol_images: dict) -> None:
    with serving(docker_client, protocol_images["vector"], nano_cpus=1_000_000_000):
        container = docker_client.containers.list(filters={"label": "mlimg.e2e"})[0]
        assert "with 1 worker(s)" in container.logs().decode()


def test_a_model_that_fails_to_load_exits_non_zero(docker_client, protocol_images: dict) -> None:
    container = running(
        docker_client, protocol_images["vector"], environment={"MLIMG_MODEL_PATH": "/nonexistent"}
    )
    try:
        result = container.wait(timeout=60)
        assert result["StatusCode"] == 1
        assert "could not load the model at /nonexistent" in container.logs().decode()
    finally:
        container.remove(force=True)
