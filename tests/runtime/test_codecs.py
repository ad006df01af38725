import json

import numpy as np
import pandas as pd
import pytest

from mlimg_runtime.codecs import decode_request, encode_predictions, media_type
from mlimg_runtime.errors import BadRequest, UnsupportedMediaType

FRAME = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("application/json", "application/json"),
        ("Application/JSON; charset=utf-8", "application/json"),
        ("text/csv;charset=UTF-8", "text/csv"),
        (None, ""),
    ],
)
def test_media_type(header, expected) -> None:
    assert media_type(header) == expected


def test_dataframe_split() -> None:
    body = json.dumps({"dataframe_split": FRAME.to_dict(orient="split")}).encode()
    decoded = decode_request("application/json", body)
    pd.testing.assert_frame_equal(decoded.data, FRAME)
    assert decoded.params == {}


def test_dataframe_records_and_params() -> None:
    body = json.dumps(
        {"dataframe_records": FRAME.to_dict(orient="records"), "params": {"k": 3}}
    ).encode()
    decoded = decode_request("application/json", body)
    pd.testing.assert_frame_equal(decoded.data, FRAME)
    assert decoded.params == {"k": 3}


def test_top_level_records_list() -> None:
    body = json.dumps(FRAME.to_dict(orient="records")).encode()
    pd.testing.assert_frame_equal(decode_request("application/json", body).data, FRAME)


@pytest.mark.parametrize("content_type", ["text/csv", "application/csv", "TEXT/CSV; charset=utf-8"])
def test_csv(content_type: str) -> None:
    decoded = decode_request(content_type, FRAME.to_csv(index=False).encode())
    pd.testing.assert_frame_equal(decoded.data, FRAME)


def test_instances_and_inputs_become_arrays() -> None:
    decoded = decode_request("application/json", b'{"inputs": [[1, 2], [3, 4], [5, 6]]}')
    np.testing.assert_array_equal(decoded.data, np.array([[1, 2], [3, 4], [5, 6]]))
    decoded = decode_request("application/json", b'{"instances": [{"a": 1}, {"a": 2}]}')
    np.testing.assert_array_equal(decoded.data["a"], np.array([1, 2]))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"foo": 1}', "exactly one of"),
        (b'{"inputs": [1], "instances": [1]}', "exactly one of"),
        (b'{"dataframe_split": [1, 2]}', "'dataframe_split' must be an object"),
        (b'{"dataframe_records": [1, 2]}', "list of JSON objects"),
        (b'{"inputs": [1], "params": [1]}', "'params' must be a JSON object"),
        (b"42", "expected a JSON object"),
    ],
)
def test_bad_json_is_a_bad_request(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_request("application/json", body)


def test_error_messages_quote_only_a_prefix() -> None:
    body = b"{" + b"x" * 10_000
    with pytest.raises(BadRequest) as excinfo:
        decode_request("application/json", body)
    assert len(excinfo.value.message) < 400


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/xml"])
def test_unsupported_content_types(content_type) -> None:
    with pytest.raises(UnsupportedMediaType):
        decode_request(content_type, b"1,2")


def test_encoding_matches_mlflow_shapes() -> None:
    import io

    from mlflow.pyfunc.scoring_server import predictions_to_json

    for value in (
        np.array([1, 2, 3]),
        np.array([[1.5, 2.5]]),
        pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
        pd.Series([0.5, 1.5], name="score"),
        [1, "a", None],
        {"k": [1, 2]},
    ):
        expected = io.StringIO()
        predictions_to_json(value, expected)
        assert json.loads(encode_predictions(value)) == json.loads(expected.getvalue())
