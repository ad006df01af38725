"""What clients send that is wrong, or only unusual: never a 500, never a row lost.

Real models, through the WSGI app in-process, against mlflow.pyfunc's own predictions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
from werkzeug.test import Client

from mlimg_runtime.app import create_app
from mlimg_runtime.config import ServerConfig
from mlimg_runtime.model import ServedModel

COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def client_for(model, batching: str = "auto") -> Client:
    served = ServedModel()
    served.set(model, "3.17.2")
    return Client(create_app(served, ServerConfig(batching=batching)))


@pytest.fixture(scope="module")
def iris_model(sklearn_model: Path):
    return mlflow.pyfunc.load_model(str(sklearn_model))


@pytest.fixture(scope="module", params=["auto", "off"])
def iris(request, iris_model) -> Client:
    """The sklearn model (double columns), with batching (the plain-rows path) and without."""
    return client_for(iris_model, request.param)


def post(client: Client, body: bytes | str, content_type: str = "application/json"):
    response = client.post("/invocations", data=body, content_type=content_type)
    return response.status_code, response.get_json()


def split(rows: str) -> str:
    return f'{{"dataframe_split": {{"columns": {json.dumps(COLUMNS)}, "data": {rows}}}}}'


def records(rows: list[str]) -> str:
    parts = [
        "{"
        + ", ".join(f"{json.dumps(c)}: {v}" for c, v in zip(COLUMNS, row.split(","), strict=True))
        + "}"
        for row in rows
    ]
    return f'{{"dataframe_records": [{", ".join(parts)}]}}'


CSV_HEADER = ",".join(f'"{c}"' for c in COLUMNS)

BAD_INPUTS = {
    "NaN": ("[[NaN, 3.5, 1.4, 0.2]]", ["NaN,3.5,1.4,0.2"], None),
    "Infinity": ("[[Infinity, 3.5, 1.4, 0.2]]", ["-Infinity,3.5,1.4,0.2"], None),
    "1e400": ("[[1e400, 3.5, 1.4, 0.2]]", ["1e400,3.5,1.4,0.2"], None),
    "null in a numeric column": ("[[null, 3.5, 1.4, 0.2]]", ["null,3.5,1.4,0.2"], ",3.5,1.4,0.2"),
    "zero rows": ("[]", None, ""),
    "ragged rows": ("[[5.1, 3.5, 1.4, 0.2], [5.1, 3.5]]", None, "5.1,3.5,1.4,0.2\n5.1,3.5"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_the_clients_error_never_a_500(iris: Client, case: str, caplog) -> None:
    split_rows, record_rows, csv_rows = BAD_INPUTS[case]
    bodies = [(split(split_rows), "application/json")]
    if record_rows is not None:
        bodies.append((records(record_rows), "application/json"))
    if csv_rows is not None:
        bodies.append((f"{CSV_HEADER}\n{csv_rows}\n", "text/csv"))
    caplog.set_level(logging.INFO, logger="mlimg_runtime")
    for body, content_type in bodies:
        caplog.clear()
        status, answer = post(iris, body, content_type)
        assert status == 400, (content_type, body, answer)
        assert answer["error_code"] == "BAD_REQUEST"
        lines = [r for r in caplog.records if r.name == "mlimg_runtime"]
        assert len(lines) <= 1 and not any(r.exc_info for r in lines), lines


def test_a_model_failing_on_its_own_is_still_a_500(loaded_models: dict) -> None:
    status, answer = post(client_for(loaded_models["broken"]), '{"inputs": {"a": [1.0]}}')
    assert status == 500
    assert "RuntimeError: this model always fails" in answer["message"]


@pytest.mark.parametrize("form", ["split", "split-mixed", "records", "csv"])
def test_whole_numbers_for_double_columns_are_accepted(iris: Client, iris_model, form: str) -> None:
    """JavaScript and many other clients write 2.0 as 2; MLflow's server accepts it."""
    rows = [[5, 3, 1, 0], [7, 3, 5, 2], [6, 3.5, 4, 1]]
    expected = iris_model.predict(pd.DataFrame(rows, columns=COLUMNS, dtype=float)).tolist()
    if form == "split":  # one request of whole numbers only: the batched plain-rows path
        bodies = [split(json.dumps([row])) for row in rows[:2]]
        answers = [post(iris, body)[1]["predictions"][0] for body in bodies]
        assert answers == expected[:2]
        return
    if form == "split-mixed":
        body, content_type = split(json.dumps(rows)), "application/json"
    elif form == "records":
        body = records([",".join(map(str, row)) for row in rows])
        content_type = "application/json"
    else:
        body = CSV_HEADER + "\n" + "\n".join(",".join(map(str, row)) for row in rows) + "\n"
        content_type = "text/csv"
    status, answer = post(iris, body, content_type)
    assert status == 200, answer
    assert answer["predictions"] == expected


def test_a_headerless_csv_for_a_tensor_model_keeps_every_row(loaded_models: dict) -> None:
    client = client_for(loaded_models["tensor"])
    status, answer = post(client, "1,2\n3,4\n5,6\n", "text/csv")
    assert status == 200, answer
    assert answer["predictions"] == [3.0, 7.0, 11.0]


def test_a_csv_with_a_header_for_a_tensor_model(loaded_models: dict) -> None:
    client = client_for(loaded_models["tensor"])
    status, answer = post(client, "x,y\n1,2\n3,4\n", "text/csv")
    assert status == 200, answer
    assert answer["predictions"] == [3.0, 7.0]


def test_a_headerless_csv_for_named_columns_keeps_every_row(iris: Client, iris_model) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    expected = iris_model.predict(pd.DataFrame(rows, columns=COLUMNS)).tolist()
    status, answer = post(iris, "\n".join(",".join(map(str, r)) for r in rows), "text/csv")
    assert status == 200, answer
    assert answer["predictions"] == expected
