"""The WSGI app in-process, on real MLflow models, against mlflow.pyfunc's own predictions."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
from werkzeug.test import Client

from mlimg_runtime.app import create_app
from mlimg_runtime.config import ServerConfig
from mlimg_runtime.model import ServedModel


def client_for(model_dir: Path, config: ServerConfig | None = None):
    served = ServedModel()
    served.set(mlflow.pyfunc.load_model(str(model_dir)), "3.17.2")
    return Client(create_app(served, config))


@pytest.fixture(scope="module")
def sklearn_client(sklearn_model: Path):
    return client_for(sklearn_model)


@pytest.fixture(scope="module")
def pyfunc_client(pyfunc_model: Path):
    return client_for(pyfunc_model)


def iris_frame() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    return load_iris(as_frame=True).data.iloc[::15]


def test_ping_health_version(sklearn_client) -> None:
    assert sklearn_client.get("/ping").status_code == 200
    assert sklearn_client.get("/health").status_code == 200
    version = sklearn_client.get("/version")
    assert version.status_code == 200
    assert version.get_json()["mlflow_version"] == "3.17.2"


@pytest.mark.parametrize("form", ["split", "records", "csv"])
def test_sklearn_predictions_equal_pyfunc(sklearn_client, sklearn_model: Path, form: str) -> None:
    frame = iris_frame()
    expected = mlflow.pyfunc.load_model(str(sklearn_model)).predict(frame).tolist()
    if form == "csv":
        response = sklearn_client.post(
            "/invocations", data=frame.to_csv(index=False), content_type="text/csv"
        )
    else:
        key = f"dataframe_{form}"
        body = {key: json.loads(frame.to_json(orient=form))}
        response = sklearn_client.post("/invocations", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"predictions": expected}


def test_pyfunc_dataframe_output(pyfunc_client, pyfunc_model: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 3.0, 5.0], "b": [2.0, 4.0, 0.5]})
    expected = mlflow.pyfunc.load_model(str(pyfunc_model)).predict(frame)
    response = pyfunc_client.post(
        "/invocations", json={"dataframe_split": frame.to_dict(orient="split")}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"predictions": expected.to_dict(orient="records")}


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{bad", "application/json", 400),
        (b'{"dataframe_split": {"columns": ["x"], "data": [[1]]}}', "application/json", 400),
        (b"1,2,3,4", "text/plain", 415),
        (b"1,2,3,4", None, 415),
    ],
)
def test_errors_use_mlflow_error_shape(sklearn_client, body, content_type, status) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = sklearn_client.post("/invocations", data=body, headers=headers)
    assert response.status_code == status
    payload = response.get_json()
    assert set(payload) == {"error_code", "message"}
    assert payload["error_code"] == "BAD_REQUEST"
    assert "Traceback" not in payload["message"]


def test_invocations_is_post_only(sklearn_client) -> None:
    response = sklearn_client.get("/invocations")
    assert response.status_code == 405
    assert response.get_json()["error_code"] == "BAD_REQUEST"


def test_unknown_path_is_json_404(sklearn_client) -> None:
    response = sklearn_client.get("/nope")
    assert response.status_code == 404 and "error_code" in response.get_json()


@pytest.mark.parametrize(
    ("model_fixture", "batching"), [("sklearn_model", "auto"), ("pyfunc_model", "on")]
)
def test_concurrent_requests_in_batches_get_their_own_predictions(
    request, model_fixture: str, batching: str
) -> None:
    """sklearn is batched by default (row-wise); the custom pyfunc only when told to. Either
    way each of many concurrent requests must get exactly what pyfunc gives for its rows."""
    model_dir = request.getfixturevalue(model_fixture)
    config = ServerConfig(batching=batching, batch_wait_ms=1.0)
    client = client_for(model_dir, config)
    model = mlflow.pyfunc.load_model(str(model_dir))
    if model_fixture == "sklearn_model":
        frame = iris_frame()
    else:
        frame = pd.DataFrame({"a": [float(i) for i in range(10)], "b": [i / 4 for i in range(10)]})
    parts = [frame.iloc[i % 9 : i % 9 + 1 + i % 2] for i in range(120)]

    def expected(part: pd.DataFrame):
        output = model.predict(part)
        return output.to_dict(orient="records") if hasattr(output, "to_dict") else output.tolist()

    def ask(part: pd.DataFrame):
        body = {"dataframe_split": json.loads(part.to_json(orient="split", index=False))}
        response = client.post("/invocations", json=body)
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, parts))
    assert [status for status, _ in answers] == [200] * len(parts)
    assert [answer["predictions"] for _, answer in answers] == [expected(p) for p in parts]
