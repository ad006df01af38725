"""The generated compose file on a real orchestrator: Docker Swarm on this engine rolls three
replicas from model version 1 to version 2 (a retrained model, a model-only rebuild) under a
steady stream of requests, with not one failed; then an update to an image whose model cannot
load is rolled back by Swarm itself, again with not one failed request.

This is the evidence that the image's readiness (/ping and the health check), SIGTERM drain
and the compose file's update policy are right for an orchestrator. See tests/swarm.py for
the load balancer this kernel needs, and for the clean-up.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow.pyfunc
import pytest
import yaml

from tests.e2e.conftest import build, run_mlimg
from tests.e2e.test_build import iris_frame, steps_from_cache
from tests.models import make_sklearn_model
from tests.probes import free_port
from tests.protocol_models import make_protocol_model
from tests.swarm import (
    build_load_balancer,
    deploy,
    running_images,
    stack,
    swarm_mode,
    update_state,
)

STACK, SERVICE = "mlimgtest", "iris"
V2_TAG = "mlimg-test/iris-v2:e2e"
UNLOADABLE_TAG = "mlimg-test/unloadable:e2e"
REPLICAS = 3
CLIENTS = 4
MAX_REQUESTS = 200_000  # a bound, never reached at this machine's rate over a few minutes


class Traffic:
    """Clients posting the same rows through the load balancer until stopped, each answer
    (or error) counted."""

    def __init__(self, url: str, body: bytes) -> None:
        self.url, self.body = url, body
        self.outcomes: collections.Counter = collections.Counter()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def _client(self) -> None:
        while not self.stopping.is_set() and self.total < MAX_REQUESTS:
            request = urllib.request.Request(
                self.url, data=self.body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    outcome = (response.status, response.read().decode())
            except urllib.error.HTTPError as exc:
                outcome = (exc.code, exc.read().decode()[:300])
            except OSError as exc:  # refused, reset, timed out: a connection error
                outcome = ("connection error", repr(exc)[:300])
            with self.lock:
                self.outcomes[outcome] += 1


def compose_for(model: Path, image: str, out: Path) -> Path:
    result = run_mlimg(
        "generate-manifests", "-m", str(model), "--image", image, "-d", str(out),
        "--target", "compose", "--name", SERVICE, "--replicas", str(REPLICAS),
        "--cpu", "0.4", "--memory", "512Mi", "--endpoint-mode", "dnsrr",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out / f"{SERVICE}.compose.yaml"


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def answer(url: str, body: bytes) -> tuple[object, str] | None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except (OSError, urllib.error.HTTPError):
        return None


def test_rolling_update_without_a_failed_request_then_an_automatic_rollback(
    docker_client, iris_image: str, sklearn_model: Path, ca_cert: Path, tmp_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v2_model = make_sklearn_model(tmp_path / "iris-v2", relabel=1)
        unloadable = make_protocol_model("unloadable", tmp_path / "unloadable")
    result = build(v2_model, V2_TAG, ca_cert)
    assert result.returncode == 0, result.stderr
    cached, steps = steps_from_cache(result.stderr)
    assert steps - cached == 2  # version 2 is a model-only rebuild
    # A broken release reaches the registry when its build skips the smoke test.
    result = build(unloadable, UNLOADABLE_TAG, ca_cert, "--no-smoke-test")
    assert result.returncode == 0, result.stderr

    frame = iris_frame()
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))}).encode()
    expected = {
        version: json.dumps(
            {"predictions": mlflow.pyfunc.load_model(str(path)).predict(frame).tolist()}
        )
        for version, path in (("v1", sklearn_model), ("v2", v2_model))
    }
    assert expected["v1"] != expected["v2"]
    answers = {(200, text): version for version, text in expected.items()}

    files = {
        "v1": compose_for(sklearn_model, iris_image, tmp_path / "v1"),
        "v2": compose_for(v2_model, V2_TAG, tmp_path / "v2"),
        "unloadable": compose_for(unloadable, UNLOADABLE_TAG, tmp_path / "unloadable"),
    }
    port = free_port()
    balancer = tmp_path / "lb.yaml"
    lb_image = build_load_balancer(docker_client, f"{STACK}_{SERVICE}", 8080)
    lb_service = {"image": lb_image, "ports": [{"target": 80, "published": port, "mode": "host"}]}
    balancer.write_text(yaml.safe_dump({"version": "3.8", "services": {"lb": lb_service}}))
    url = f"http://127.0.0.1:{port}/invocations"
    service = f"{STACK}_{SERVICE}"

    with swarm_mode(docker_client), stack(docker_client, STACK):
        deploy(STACK, files["v1"], balancer)
        wait_for(
            lambda: (
                running_images(docker_client, service) == [iris_image] * REPLICAS
                and answer(url, body) == (200, expected["v1"])
            ),
            240,
            "three replicas of version 1 answering through the load balancer",
        )

        with Traffic(url, body) as traffic:
            time.sleep(2)
            started = time.monotonic()
            deploy(STACK, files["v2"], balancer)
            wait_for(lambda: update_state(docker_client, service) == "completed", 400, "the update")
            update_seconds = time.monotonic() - started
            time.sleep(3)
        by_version = collections.Counter(
            answers.get(o, "other") for o in traffic.outcomes.elements()
        )
        failed = {o: n for o, n in traffic.outcomes.items() if o not in answers}
        print(f"update: {update_seconds:.0f}s, {traffic.total} requests, {dict(by_version)}")
        assert not failed, failed
        assert by_version["v1"] > 0 and by_version["v2"] > 0
        assert running_images(docker_client, service) == [V2_TAG] * REPLICAS

        with Traffic(url, body) as traffic:
            time.sleep(2)
            started = time.monotonic()
            deploy(STACK, files["unloadable"], balancer)
            wait_for(
                lambda: (
                    update_state(docker_client, service)
                    in ("rollback_completed", "completed", "paused")
                ),
                400,
                "the failed update to end",
            )
            rollback_seconds = time.monotonic() - started
            time.sleep(3)
        assert update_state(docker_client, service) == "rollback_completed"
        print(
            f"rollback: {rollback_seconds:.0f}s, {traffic.total} requests, {dict(traffic.outcomes)}"
        )
        assert dict(traffic.outcomes) == {(200, expected["v2"]): traffic.total}
        assert traffic.total > 0
        assert running_images(docker_client, service) == [V2_TAG] * REPLICAS
