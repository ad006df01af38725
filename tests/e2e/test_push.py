"""`mlimg push` and `build --push` against real registries on 127.0.0.1: an open one and one
behind htpasswd. An image goes up, is removed here, comes back by its digest and serves; each
failure (no credentials, wrong ones, no registry answering, a tag naming no registry) is one
clear message and leaves the local image as it was."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import mlflow.pyfunc
import pytest
import yaml
from docker.errors import ImageNotFound

from tests.e2e.conftest import build, post, remove_tag, run_mlimg, serving
from tests.e2e.test_build import iris_frame
from tests.probes import free_port
from tests.registries import container_registry, docker_config

USER, PASSWORD = "mlimg", "s3cret-for-tests"


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory):
    with container_registry(tmp_path_factory.mktemp("open-registry")) as address:
        yield address


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("auth-registry")
    with container_registry(workdir, credentials=(USER, PASSWORD)) as address:
        yield address


@pytest.fixture
def pushable_image(docker_client, iris_image: str):
    """An image of its own on top of the iris image (a label apart: no layer of its own), so
    that removing it after the push leaves the shared iris image alone."""
    dockerfile = f"FROM {iris_image}\nLABEL mlimg.e2e.push=true\n"
    image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), rm=True)
    yield image.id
    with contextlib.suppress(ImageNotFound):
        docker_client.images.remove(image.id, force=True, noprune=True)


def pinned_reference(stdout: str) -> str:
    reference = stdout.strip().splitlines()[-1]
    assert "@sha256:" in reference, stdout
    return reference


def assert_serves_iris(docker_client, image: str, sklearn_model: Path) -> None:
    frame = iris_frame()
    expected = mlflow.pyfunc.load_model(str(sklearn_model)).predict(frame).tolist()
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))}).encode()
    with serving(docker_client, image) as url:
        assert post(url, body, "application/json") == (200, {"predictions": expected})


def test_push_remove_pull_by_digest_and_serve(
    docker_client, pushable_image: str, open_registry: str, sklearn_model: Path, tmp_path: Path
) -> None:
    reference = f"{open_registry}/mlimg-test/iris:1"
    docker_client.images.get(pushable_image).tag(reference)
    result = run_mlimg("push", reference, DOCKER_CONFIG=str(docker_config(tmp_path / "cfg")))
    assert result.returncode == 0, result.stderr
    pinned = pinned_reference(result.stdout)
    assert pinned.startswith(f"{open_registry}/mlimg-test/iris@sha256:")
    assert "pushed layer" in result.stderr and "already in the registry" in result.stderr

    docker_client.images.remove(pushable_image, force=True, noprune=True)
    with pytest.raises(ImageNotFound):
        docker_client.images.get(pushable_image)
    pulled = docker_client.images.pull(pinned)
    assert pulled.id == pushable_image  # the same image, byte for byte, from the registry
    assert_serves_iris(docker_client, pinned, sklearn_model)


def test_a_registry_that_wants_credentials(
    docker_client, pushable_image: str, auth_registry: str, sklearn_model: Path, tmp_path: Path
) -> None:
    reference = f"{auth_registry}/mlimg-test/iris:1"
    docker_client.images.get(pushable_image).tag(reference)

    none = run_mlimg("push", reference, DOCKER_CONFIG=str(docker_config(tmp_path / "none")))
    assert none.returncode == 1 and "Traceback" not in none.stderr
    assert "asks for credentials and your Docker config has none for it" in none.stderr
    assert f"run `docker login {auth_registry}`" in none.stderr

    wrong_config = docker_config(tmp_path / "wrong", {auth_registry: (USER, "not-the-password")})
    wrong = run_mlimg("push", reference, DOCKER_CONFIG=str(wrong_config))
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert "refused the credentials your Docker config holds for it" in wrong.stderr
    assert docker_client.images.get(reference).id == pushable_image  # untouched

    right_config = docker_config(tmp_path / "right", {auth_registry: (USER, PASSWORD)})
    right = run_mlimg("push", reference, DOCKER_CONFIG=str(right_config))
    assert right.returncode == 0, right.stderr
    pinned = pinned_reference(right.stdout)
    docker_client.images.remove(pushable_image, force=True, noprune=True)
    credentials = {"username": USER, "password": PASSWORD}
    assert docker_client.images.pull(pinned, auth_config=credentials).id == pushable_image


def test_an_unreachable_registry_a_missing_registry_and_a_missing_image(
    docker_client, pushable_image: str, tmp_path: Path
) -> None:
    config = str(docker_config(tmp_path / "cfg"))
    nowhere = f"127.0.0.1:{free_port()}/mlimg-test/iris:1"
    docker_client.images.get(pushable_image).tag(nowhere)
    result = run_mlimg("push", nowhere, DOCKER_CONFIG=config)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"the registry {nowhere.split('/')[0]} cannot be reached" in result.stderr
    assert docker_client.images.get(nowhere).id == pushable_image

    result = run_mlimg("push", "mlimg-test/iris:e2e", DOCKER_CONFIG=config)
    assert result.returncode == 2
    assert "'mlimg-test/iris:e2e' names no registry" in result.stderr

    result = run_mlimg("push", f"{nowhere.split('/')[0]}/mlimg-test/absent:1", DOCKER_CONFIG=config)
    assert result.returncode == 2 and "no local image" in result.stderr


def test_build_push_and_manifests_pinned_to_the_pushed_digest(
    docker_client,
    iris_image: str,
    open_registry: str,
    sklearn_model: Path,
    ca_cert: Path,
    tmp_path: Path,
) -> None:
    """The iris image rebuilt from cache, tagged for the registry, pushed, and its manifests
    written with the digest the registry gave."""
    tag = f"{open_registry}/mlimg-test/iris:2"
    out = tmp_path / "manifests"
    try:
        result = build(
            sklearn_model, tag, ca_cert, "--push", "--manifests", str(out),
            "--target", "kubernetes", "--target", "compose", "--name", "iris",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        pinned = pinned_reference(result.stdout)
        deployment = next(yaml.safe_load_all((out / "iris.kubernetes.yaml").read_text()))
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == pinned
        compose = yaml.safe_load((out / "iris.compose.yaml").read_text())
        assert compose["services"]["iris"]["image"] == pinned
        digest = pinned.split("@")[1]
        assert docker_client.images.get_registry_data(pinned).id == digest
    finally:
        remove_tag(docker_client, tag)
