"""Models users bring that need more of the image than Python packages: a LightGBM model
links to the system's OpenMP runtime (libgomp1), which slim bases do not carry."""

from __future__ import annotations

import json
import urllib.request
import warnings
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.conftest import build, serving
from tests.models import example_requirements

LIGHTGBM_TAG = "mlimg-test/lightgbm:e2e"


def make_lightgbm_model(dest: Path) -> tuple[Path, pd.DataFrame, list]:
    lightgbm = pytest.importorskip("lightgbm")
    import mlflow.lightgbm
    import mlflow.pyfunc
    from sklearn.datasets import load_iris

    features, target = load_iris(return_X_y=True, as_frame=True)
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(features, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.lightgbm.save_model(
            model,
            dest,
            input_example=features.iloc[:3],
            pip_requirements=[*example_requirements(), f"lightgbm=={lightgbm.__version__}"],
        )
    frame = features.iloc[::10]
    return dest, frame, mlflow.pyfunc.load_model(str(dest)).predict(frame).tolist()


def test_a_lightgbm_model_gets_its_openmp_runtime(
    docker_client, tmp_path: Path, ca_cert: Path
) -> None:
    model, frame, expected = make_lightgbm_model(tmp_path / "lightgbm")
    result = build(model, LIGHTGBM_TAG, ca_cert)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "/invocations answered 200 with predictions" in result.stderr
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))}).encode()
    with serving(docker_client, LIGHTGBM_TAG) as url:
        request = urllib.request.Request(
            f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read()) == {"predictions": expected}
