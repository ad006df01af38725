"""The virtualenv and local env managers build images that serve the same predictions as
pyfunc, with an SBOM equal to what pip lists in them. (uv is the default, exercised by
test_build.py; conda's channels are unreachable here, so conda is tested by rendering only.)"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pytest

from tests.e2e.conftest import build, serving
from tests.e2e.test_build import iris_frame, post
from tests.e2e.test_sbom import pip_list, sbom_components


@pytest.mark.parametrize("env_manager", ["virtualenv", "local"])
def test_env_manager_image_serves_pyfunc_predictions(
    docker_client, sklearn_model: Path, ca_cert: Path, env_manager: str, tmp_path: Path
) -> None:
    tag = f"mlimg-test/iris-{env_manager}:e2e"
    result = build(sklearn_model, tag, ca_cert, "--env-manager", env_manager)
    assert result.returncode == 0, result.stderr
    labels = docker_client.images.get(tag).attrs["Config"]["Labels"]
    assert labels["mlimg.env-manager"] == env_manager
    frame = iris_frame()
    expected = mlflow.pyfunc.load_model(str(sklearn_model)).predict(frame).tolist()
    with serving(docker_client, tag) as url:
        body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))})
        status, answer = post(url, body.encode(), "application/json")
    assert status == 200, answer
    assert answer == {"predictions": expected}
    python = "/opt/venv/bin/python" if env_manager == "virtualenv" else None
    assert sbom_components(tag, tmp_path) == pip_list(tag, python)
