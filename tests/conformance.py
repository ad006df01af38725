"""The protocol conformance suite: every request form of the spec, and every error.

The same cases run in-process (Flask test client, tests/runtime/test_protocol.py) and against
built images (tests/e2e/test_protocol_images.py). A case's expected answer is computed from
`mlflow.pyfunc.load_model(...).predict` on the same data, encoded by MLflow's own encoder.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
IRIS = pd.DataFrame(IRIS_ROWS, columns=IRIS_COLUMNS)
B64 = ["dGVzdCBiaW5hcnkgZGF0YSAw", "dGVzdCBiaW5hcnkgZGF0YSAx", "dGVzdCBiaW5hcnkgZGF0YSAy"]
CHAT = [{"role": "user", "content": "Tell a joke!"}]
QA = {
    "question": ["What color is it?"],
    "context": ["Some people said it was green but I know that it is pink."],
}


@dataclass(frozen=True)
class Case:
    id: str
    model: str
    content_type: str | None
    body: bytes
    status: int = 200
    # For a 200: (data, params) to hand mlflow.pyfunc, and whether the answer is unwrapped.
    pyfunc_input: Callable[[], tuple[Any, dict | None]] | None = None
    unwrapped: bool = False
    message: str = ""  # for an error: a part of the message

    def expected(self, model: Any) -> Any:
        from mlflow.pyfunc.scoring_server import predictions_to_json, unwrapped_predictions_to_json

        data, params = self.pyfunc_input()
        predictions = model.predict(data, params=params)
        out = io.StringIO()
        (unwrapped_predictions_to_json if self.unwrapped else predictions_to_json)(predictions, out)
        return json.loads(out.getvalue())


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _typed_frame(b: list[Any]) -> pd.DataFrame:
    return pd.DataFrame({"a": list(range(len(b))), "b": b})


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


SPEC_EXAMPLES = [
    Case(
        "spec-curl-inputs",
        "tensor",
        "application/json",
        b'{"inputs": [[1, 2], [3, 4], [5, 6]]}',
        pyfunc_input=lambda: (np.array([[1, 2], [3, 4], [5, 6]], dtype="float64"), None),
    ),
    Case(
        "spec-csv-row",
        "sklearn",
        "application/csv",
        b"1,2,3,4",
        pyfunc_input=lambda: (pd.DataFrame([[1.0, 2.0, 3.0, 4.0]], columns=IRIS_COLUMNS), None),
    ),
    Case(
        "spec-dataframe-split",
        "sklearn",
        "application/json",
        _json({"dataframe_split": IRIS.to_dict(orient="split")}),
        pyfunc_input=lambda: (IRIS, None),
    ),
    Case(
        "spec-dataframe-records",
        "sklearn",
        "application/json",
        _json({"dataframe_records": IRIS.to_dict(orient="records")}),
        pyfunc_input=lambda: (IRIS, None),
    ),
    Case(
        "spec-instances",
        "vector",
        "application/json",
        b'{"instances": [1.0, 2.0, 5.0]}',
        pyfunc_input=lambda: (np.array([1.0, 2.0, 5.0]), None),
    ),
    Case(
        "spec-inputs-ragged",
        "words",
        "application/json",
        b'{"inputs": [["Cheese"], ["and", "Crackers"]]}',
        pyfunc_input=lambda: (pd.DataFrame({0: [["Cheese"], ["and", "Crackers"]]}), None),
    ),
    Case(
        "spec-chat-wrapped",
        "chat",
        "application/json",
        _json({"inputs": {"messages": CHAT}, "params": {"temperature": 0.5, "max_tokens": 20}}),
        pyfunc_input=lambda: ({"messages": CHAT}, {"temperature": 0.5, "max_tokens": 20}),
    ),
    Case(
        "spec-question-answering",
        "qa",
        "application/json",
        _json({"inputs": QA, "params": {"max_answer_len": 10}}),
        pyfunc_input=lambda: (pd.DataFrame(QA), {"max_answer_len": 10}),
    ),
    Case(
        "spec-chat-raw",
        "chat",
        "application/json",
        _json({"messages": CHAT, "temperature": 0.5, "max_tokens": 20}),
        pyfunc_input=lambda: ({"messages": CHAT}, {"temperature": 0.5, "max_tokens": 20}),
        unwrapped=True,
    ),
    Case(
        "spec-binary-records",
        "binary",
        "application/json",
        _json([{"a": i, "b": b} for i, b in enumerate(B64)]),
        pyfunc_input=lambda: (_typed_frame([base64.b64decode(b) for b in B64]), None),
    ),
    Case(
        "spec-datetime-records",
        "datetime",
        "application/json",
        _json(
            [
                {"a": 0, "b": "2020-01-01T00:00:00Z"},
                {"a": 1, "b": "2020-02-01T12:34:56Z"},
                {"a": 2, "b": "2021-03-01T00:00:00Z"},
            ]
        ),
        pyfunc_input=lambda: (
            _typed_frame(
                list(
                    pd.to_datetime(
                        ["2020-01-01 00:00:00", "2020-02-01 12:34:56", "2021-03-01 00:00:00"]
                    )
                )
            ),
            None,
        ),
    ),
]

MORE_FORMS = [
    Case(
        "csv-with-header",
        "sklearn",
        "text/csv",
        IRIS.to_csv(index=False).encode(),
        pyfunc_input=lambda: (IRIS, None),
    ),
    Case(
        "content-type-case-and-charset",
        "sklearn",
        "Text/CSV; charset=UTF-8",
        IRIS.to_csv(index=False).encode(),
        pyfunc_input=lambda: (IRIS, None),
    ),
    Case(
        "parquet",
        "sklearn",
        "application/vnd.apache.parquet",
        _parquet(IRIS),
        pyfunc_input=lambda: (IRIS, None),
    ),
    Case(
        "instances-records",
        "sklearn",
        "application/json; charset=utf-8",
        _json({"instances": IRIS.to_dict(orient="records")}),
        pyfunc_input=lambda: (IRIS, None),
    ),
    Case(
        "params-defaults-filled",
        "binary",
        "application/json",
        _json({"dataframe_records": [{"a": 1, "b": B64[0]}]}),
        pyfunc_input=lambda: (pd.DataFrame({"a": [1], "b": [base64.b64decode(B64[0])]}), None),
    ),
    Case(
        "params-given",
        "binary",
        "application/json",
        _json(
            {
                "dataframe_split": {"columns": ["a", "b"], "data": [[3, B64[1]]]},
                "params": {"scale": 2.0, "suffix": "s", "tags": ["p", "q"]},
            }
        ),
        pyfunc_input=lambda: (
            pd.DataFrame({"a": [3], "b": [base64.b64decode(B64[1])]}),
            {"scale": 2.0, "suffix": "s", "tags": ["p", "q"]},
        ),
    ),
    Case(
        "datetime-mixed-offsets",
        "datetime",
        "application/json",
        _json(
            {
                "dataframe_records": [
                    {"a": 0, "b": "2020-01-01T00:00:00Z"},
                    {"a": 1, "b": "2020-02-01T12:34:56+02:00"},
                    {"a": 2, "b": "2021-03-01T08:00:00"},
                ]
            }
        ),
        pyfunc_input=lambda: (
            _typed_frame(
                list(
                    pd.to_datetime(
                        ["2020-01-01 00:00:00", "2020-02-01 10:34:56", "2021-03-01 08:00:00"]
                    )
                )
            ),
            None,
        ),
    ),
]

MORE_FORMS.append(
    Case(
        "binary-datetime-and-params-together",
        "typed",
        "application/json",
        _json(
            {
                "dataframe_split": {
                    "columns": ["a", "b", "c"],
                    "data": [[1, B64[0], "2024-02-29T23:59:59.5-05:00"]],
                },
                "params": {"scale": 0.5},
            }
        ),
        pyfunc_input=lambda: (
            pd.DataFrame(
                {
                    "a": [1],
                    "b": [base64.b64decode(B64[0])],
                    "c": pd.to_datetime(["2024-03-01 04:59:59.5"]),
                }
            ),
            {"scale": 0.5},
        ),
    )
)

ERRORS = [
    Case("bad-json", "sklearn", "application/json", b"{not json", 400, message="not valid JSON"),
    Case(
        "no-format-key", "sklearn", "application/json", b'{"foo": [1]}', 400, message="exactly one"
    ),
    Case(
        "two-format-keys",
        "sklearn",
        "application/json",
        b'{"inputs": [[1]], "instances": [[1]]}',
        400,
        message="exactly one",
    ),
    Case(
        "wrong-columns",
        "sklearn",
        "application/json",
        b'{"dataframe_split": {"columns": ["x"], "data": [[1]]}}',
        400,
    ),
    Case(
        "uncastable-values",
        "sklearn",
        "application/json",
        _json({"dataframe_split": {"columns": IRIS_COLUMNS, "data": [["a", "b", "c", "d"]]}}),
        400,
    ),
    Case(
        "uncastable-csv",
        "sklearn",
        "text/csv",
        ("\n".join([",".join(IRIS_COLUMNS), "a,b,c,d"])).encode(),
        400,
    ),
    Case(
        "bad-base64",
        "binary",
        "application/json",
        b'{"dataframe_records": [{"a": 0, "b": "!!not base64"}]}',
        400,
        message="base64",
    ),
    Case(
        "bad-datetime",
        "datetime",
        "application/json",
        b'{"dataframe_records": [{"a": 0, "b": "yesterday"}]}',
        400,
        message="ISO 8601",
    ),
    Case(
        "param-of-wrong-type",
        "binary",
        "application/json",
        _json({"dataframe_records": [{"a": 0, "b": B64[0]}], "params": {"scale": "big"}}),
        400,
    ),
    Case(
        "params-not-an-object",
        "binary",
        "application/json",
        _json({"dataframe_records": [{"a": 0, "b": B64[0]}], "params": [1]}),
        400,
        message="'params' must be a JSON object",
    ),
    Case("no-content-type", "sklearn", None, b"1,2,3,4", 415, message="no Content-Type"),
    Case("text-plain", "sklearn", "text/plain", b"1,2,3,4", 415, message="unsupported"),
    Case(
        "latin-1",
        "sklearn",
        "text/csv; charset=latin-1",
        b"1,2,3,4",
        415,
        message="UTF-8",
    ),
    Case(
        "model-raises",
        "broken",
        "application/json",
        b'{"dataframe_records": [{"a": 1.0}]}',
        500,
        message="this model always fails",
    ),
]

CASES = SPEC_EXAMPLES + MORE_FORMS + ERRORS


def check_answer(case: Case, model: Any, status: int, answer: Any) -> None:
    """Assert that a server's (status, parsed JSON body) is the right one for `case`."""
    assert status == case.status, f"{case.id}: {status} {answer}"
    if case.status == 200:
        assert answer == case.expected(model), case.id
        return
    assert isinstance(answer, dict) and set(answer) == {"error_code", "message"}, answer
    expected_code = {400: "BAD_REQUEST", 415: "BAD_REQUEST", 500: "INTERNAL_ERROR"}[case.status]
    assert answer["error_code"] == expected_code, answer
    assert case.message in answer["message"], answer
    assert "Traceback" not in answer["message"] and len(answer["message"]) <= 600
