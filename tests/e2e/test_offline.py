"""Air-gapped builds: a wheelhouse (`mlimg wheels`) is all the build has. `mlimg build
--wheelhouse` builds with no index and no network, from no cache, and the image serves what the
online build's serves; a wheel missing from the same Dockerfile's context fails the build with
the package named."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import mlflow.pyfunc
import pytest

from mlimg import daemon
from mlimg.errors import BuildFailed
from tests.e2e.conftest import post, remove_tag, run_mlimg, serving
from tests.e2e.test_build import iris_frame, steps_from_cache
from tests.e2e.test_sbom import sbom_components

OFFLINE_TAG = "mlimg-test/iris-offline:e2e"


@pytest.fixture(scope="module")
def wheelhouse(sklearn_model: Path, ca_cert: Path, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("offline") / "wheelhouse"
    result = run_mlimg(
        "wheels", "-m", str(sklearn_model), "-d", str(directory), "--ca-cert", str(ca_cert)
    )
    assert result.returncode == 0, result.stderr
    return directory


def network_events(client, since: int) -> list[tuple[str, str]]:
    """Every network (dis)connection of a container since `since`: (action, network name)."""
    until = int(time.time()) + 1
    events = client.events(since=since, until=until, decode=True, filters={"type": "network"})
    return [(event["Action"], event["Actor"]["Attributes"].get("name", "")) for event in events]


def test_an_offline_build_from_no_cache_serves_what_the_online_build_serves(
    docker_client, iris_image: str, sklearn_model: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    since = int(time.time())
    try:
        # The smoke test's container has a network of its own: it is left out here, and the
        # image is served below instead.
        result = run_mlimg("build", "-m", str(sklearn_model), "-t", OFFLINE_TAG, "--wheelhouse",
                           str(wheelhouse), "--no-cache", "--no-smoke-test")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"installing from the wheelhouse {wheelhouse}, with no index" in result.stderr
        assert steps_from_cache(result.stderr)[0] == 0
        # Every step's container had the "none" network, and nothing else.
        events = network_events(docker_client, since)
        connected = [name for action, name in events if action == "connect"]
        assert len(connected) >= 5 and set(connected) == {"none"}, events

        frame = iris_frame()
        expected = mlflow.pyfunc.load_model(str(sklearn_model)).predict(frame).tolist()
        body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))}).encode()
        answers = []
        for image in (OFFLINE_TAG, iris_image):
            with serving(docker_client, image) as url:
                answers.append(post(url, body, "application/json"))
        assert answers == [(200, {"predictions": expected})] * 2

        # The same packages, versions included, as the online build installed.
        (tmp_path / "offline").mkdir()
        (tmp_path / "online").mkdir()
        offline = sbom_components(OFFLINE_TAG, tmp_path / "offline")
        assert offline == sbom_components(iris_image, tmp_path / "online")
        labels = docker_client.images.get(OFFLINE_TAG).labels
        lock_text = (wheelhouse / "requirements.lock").read_text()
        assert labels["mlimg.lock"] == "sha256:" + hashlib.sha256(lock_text.encode()).hexdigest()
    finally:
        remove_tag(docker_client, OFFLINE_TAG)


def test_a_wheel_missing_from_the_context_fails_the_build_naming_it(
    docker_client, sklearn_model: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    """mlimg names a missing file before building (below); a context edited by hand, or a
    wheelhouse emptied after generate-dockerfile, fails in the build with the package named."""
    context = tmp_path / "context"
    result = run_mlimg("generate-dockerfile", "-m", str(sklearn_model), "--wheelhouse",
                       str(wheelhouse), "-d", str(context))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"docker build --network none -t IMAGE {context}" in result.stderr
    [wheel] = (context / "wheels").glob("scikit_learn-1.9.1-*.whl")
    wheel.unlink()
    with pytest.raises(BuildFailed) as failed:
        daemon.build_image(docker_client, context, {}, lambda line: None, network="none")
    message = str(failed.value)
    assert "the wheelhouse has no file for scikit-learn==1.9.1: fill it again" in message
    assert "\x1b[" not in message and "\n  \n" not in message  # no colours, no blank lines


def test_a_wheelhouse_missing_a_file_is_named_before_building(
    docker_client, sklearn_model: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(wheelhouse, partial)
    [wheel] = partial.glob("scikit_learn-1.9.1-*.whl")
    wheel.unlink()
    result = run_mlimg("build", "-m", str(sklearn_model), "-t", OFFLINE_TAG, "--wheelhouse",
                       str(partial))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"the wheelhouse {partial} has no file for scikit-learn==1.9.1" in result.stderr
    assert "building " not in result.stderr  # refused before any build step


def test_an_image_for_another_platform_is_refused_before_building(
    docker_client, sklearn_model: Path, ca_cert: Path
) -> None:
    """Nothing here runs arm64: the refusal says where such an image can be built."""
    result = run_mlimg("build", "-m", str(sklearn_model), "-t", OFFLINE_TAG, "--platform",
                       "linux/arm64", "--ca-cert", str(ca_cert))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "this Docker engine runs linux/amd64 and cannot build or smoke-test a linux/arm64" in (
        result.stderr
    )
    assert "generate-dockerfile --platform linux/arm64" in result.stderr


@pytest.mark.parametrize("env_manager", ["virtualenv", "local"])
def test_the_other_wheel_managers_build_offline(
    docker_client, sklearn_model: Path, wheelhouse: Path, env_manager: str
) -> None:
    """pip, not uv, installs these (the virtualenv's build requirements first, from their own
    section of the lock); the smoke test checks the predictions."""
    tag = f"mlimg-test/iris-offline-{env_manager}:e2e"
    try:
        result = run_mlimg("build", "-m", str(sklearn_model), "-t", tag, "--wheelhouse",
                           str(wheelhouse), "--env-manager", env_manager)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "/invocations answered 200 with predictions" in result.stderr
    finally:
        remove_tag(docker_client, tag)
