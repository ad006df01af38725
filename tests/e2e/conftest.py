"""End-to-end fixtures: a real Docker engine, real builds through the `mlimg` command."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlimg import daemon
from mlimg.errors import EngineUnavailable
from tests.probes import answers_ping, post  # noqa: F401 - post for the e2e tests

BUILD_TIMEOUT = 1200
IRIS_TAG = "mlimg-test/iris:e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = daemon.connect()
    except EngineUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the end-to-end tests must run, but: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    yield client
    for container in client.containers.list(all=True, filters={"label": "mlimg.e2e"}):
        container.remove(force=True)


def run_mlimg(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the real command (with `env` added to the environment); its output is echoed so a
    CI log shows each build."""
    result = subprocess.run(
        [sys.executable, "-m", "mlimg", *args],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env={**os.environ, **env},
    )
    sys.stderr.write(f"$ mlimg {' '.join(args)}\n{result.stderr}{result.stdout}")
    return result


def build(model: Path, tag: str, ca_cert: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_mlimg("build", "-m", str(model), "-t", tag, "--ca-cert", str(ca_cert), *extra)


@contextmanager
def serving(client, image: str, timeout: float = 120.0, **run_options) -> Iterator[str]:
    """Run `image` with its port (and any other in `ports`) on 127.0.0.1, yield its base URL
    once /ping answers."""
    ports = {"8080/tcp": ("127.0.0.1", None), **run_options.pop("ports", {})}
    container = client.containers.run(
        image, detach=True, ports=ports, labels={"mlimg.e2e": "true"}, **run_options
    )
    try:
        deadline = time.monotonic() + timeout
        port = None
        while time.monotonic() < deadline:
            container.reload()
            assert container.status not in ("exited", "dead"), container.logs().decode()
            bindings = (container.ports or {}).get("8080/tcp")
            if bindings:
                port = bindings[0]["HostPort"]
                if answers_ping(f"http://127.0.0.1:{port}"):
                    break
            time.sleep(0.25)
        else:
            pytest.fail(f"{image} did not answer /ping: {container.logs().decode()[-2000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        container.remove(force=True)


def remove_tag(client, tag: str) -> None:
    from docker.errors import ImageNotFound

    with contextlib.suppress(ImageNotFound):
        client.images.remove(tag, force=True, noprune=True)


@pytest.fixture(scope="session")
def iris_image(docker_client, sklearn_model: Path, ca_cert: Path) -> str:
    """The sklearn iris model's image, built once for every module that serves it."""
    result = build(sklearn_model, IRIS_TAG, ca_cert)
    assert result.returncode == 0, result.stderr
    assert "/ping answered 200" in result.stderr
    assert "/invocations answered 200 with predictions" in result.stderr
    return IRIS_TAG


MLSERVER_IRIS_TAG = "mlimg-test/iris-mlserver:e2e"


@pytest.fixture(scope="session")
def mlserver_iris_image(docker_client, sklearn_model: Path, ca_cert: Path) -> str:
    """The iris model's image with the MLServer engine, built once."""
    result = build(sklearn_model, MLSERVER_IRIS_TAG, ca_cert, "--engine", "mlserver")
    assert result.returncode == 0, result.stderr
    assert "/invocations answered 200 with predictions" in result.stderr
    return MLSERVER_IRIS_TAG


@pytest.fixture(scope="session")
def mlserver_protocol_images(
    docker_client, protocol_models: dict, mlserver_iris_image: str, ca_cert: Path
) -> dict:
    """The conformance models' images with the MLServer engine, by model name. They share the
    dependency layers of the iris image: each build runs the model's own steps only."""
    from tests.protocol_models import PROTOCOL_MODELS

    images = {"sklearn": mlserver_iris_image}
    for name in PROTOCOL_MODELS:
        tag = f"mlimg-test/proto-{name}-mlserver:e2e"
        result = build(protocol_models[name], tag, ca_cert, "--engine", "mlserver")
        assert result.returncode == 0, result.stderr
        images[name] = tag
    return images
