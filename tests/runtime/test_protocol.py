"""The conformance suite in-process: the Flask app on real models, answers against pyfunc."""

from __future__ import annotations

import io
import json
import time

import pytest
from werkzeug.test import Client

from mlimg_runtime.app import create_app
from mlimg_runtime.config import ServerConfig
from mlimg_runtime.model import ServedModel
from tests.conformance import CASES, check_answer


def client_for(model, config: ServerConfig | None = None):
    served = ServedModel()
    served.set(model, "3.17.2")
    return Client(create_app(served, config))


@pytest.fixture(scope="module")
def clients(loaded_models: dict) -> dict:
    return {name: client_for(model) for name, model in loaded_models.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_conformance(case, clients: dict, loaded_models: dict) -> None:
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    response = clients[case.model].post("/invocations", data=case.body, headers=headers)
    assert response.mimetype == "application/json"
    check_answer(case, loaded_models[case.model], response.status_code, response.get_json())


def test_ping_and_health_answer_503_until_the_model_is_loaded(loaded_models: dict) -> None:
    served = ServedModel()
    client = Client(create_app(served))
    for path in ("/ping", "/health"):
        response = client.get(path)
        assert response.status_code == 503
        assert response.get_json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    response = client.post("/invocations", json={"inputs": [1.0]})
    assert response.status_code == 503
    served.set(loaded_models["vector"], "3.17.2")
    assert client.get("/ping").status_code == 200
    assert client.post("/invocations", json={"inputs": [1.0]}).get_json() == {"predictions": [2.0]}


def test_version(clients: dict) -> None:
    from mlimg_runtime import __version__

    body = clients["sklearn"].get("/version").get_json()
    assert body == {"mlflow_version": "3.17.2", "mlimg_version": __version__}


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("get", "/invocations", 405, "BAD_REQUEST"),
        ("put", "/invocations", 405, "BAD_REQUEST"),
        ("post", "/ping", 405, "BAD_REQUEST"),
        ("get", "/nope", 404, "ENDPOINT_NOT_FOUND"),
    ],
)
def test_http_errors_are_json(clients: dict, method: str, path: str, status: int, code: str):
    response = getattr(clients["sklearn"], method)(path)
    assert response.status_code == status
    assert response.get_json()["error_code"] == code


def test_body_over_the_limit_is_413(loaded_models: dict) -> None:
    client = client_for(loaded_models["sklearn"], ServerConfig(max_request_bytes=1000))
    response = client.post("/invocations", data=b"1" * 2000, content_type="text/csv")
    assert response.status_code == 413
    assert "MLIMG_MAX_REQUEST_BYTES" in response.get_json()["message"]


def test_a_chunked_body_over_the_limit_is_413(loaded_models: dict) -> None:
    client = client_for(loaded_models["sklearn"], ServerConfig(max_request_bytes=1000))
    response = client.post(  # no Content-Length: the body is read up to the limit and one byte
        "/invocations", input_stream=io.BytesIO(b"1" * 2000), content_type="text/csv"
    )
    assert response.status_code == 413
    small = client.post("/invocations", input_stream=io.BytesIO(b"a\n1\n"), content_type="text/csv")
    assert small.status_code in (200, 400), small.get_data(as_text=True)  # read, then judged


def test_invocations_allow_only_post(clients: dict) -> None:
    response = clients["sklearn"].get("/invocations")
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")


def test_a_content_length_that_is_not_a_number_is_400(clients: dict) -> None:
    response = clients["sklearn"].post(
        "/invocations",
        data=b"{}",
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": "many"},
    )
    assert response.status_code == 400
    assert "Content-Length" in response.get_json()["message"]


def test_request_outliving_the_timeout_is_504(loaded_models: dict) -> None:
    client = client_for(loaded_models["slow"], ServerConfig(timeout=1))
    started = time.monotonic()
    response = client.post(
        "/invocations", json={"dataframe_records": [{"a": 1.0}], "params": {"seconds": 3}}
    )
    assert response.status_code == 504
    assert response.get_json()["error_code"] == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 2.5


def test_stack_traces_only_when_enabled(loaded_models: dict) -> None:
    body = {"dataframe_records": [{"a": 1.0}]}
    plain = client_for(loaded_models["broken"]).post("/invocations", json=body).get_json()
    assert "stack_trace" not in plain
    config = ServerConfig(include_traceback=True)
    traced = client_for(loaded_models["broken"], config).post("/invocations", json=body).get_json()
    assert "RuntimeError: this model always fails" in traced["stack_trace"]


def test_error_messages_quote_only_a_prefix(clients: dict) -> None:
    body = b'{"dataframe_split": ' + b"x" * 100_000
    response = clients["sklearn"].post("/invocations", data=body, content_type="application/json")
    assert response.status_code == 400
    assert len(json.dumps(response.get_json())) < 600


# Property: through the whole app, on models whose own code cannot fail on schema-valid input,
# no request of any shape is answered 500 (a 500 is reserved for a model that raises).

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.runtime.test_codecs import payloads  # noqa: E402


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(payload=payloads)
def test_no_payload_is_a_server_error(clients: dict, payload) -> None:
    body = json.dumps(payload).encode()
    for name in ("binary", "datetime", "vector"):
        response = clients[name].post("/invocations", data=body, content_type="application/json")
        assert response.status_code in (200, 400), (name, response.get_json())
        if response.status_code == 400:
            assert set(response.get_json()) == {"error_code", "message"}
