"""Decoding and encoding as pure functions, and their properties under hostile input."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlimg_runtime.codecs import (
    MEDIA_TYPES,
    Rows,
    decode_csv,
    decode_json,
    decode_request,
    encode_predictions,
    parse_content_type,
)
from mlimg_runtime.errors import BadRequest, ScoringError, UnsupportedMediaType
from mlimg_runtime.model import Signature

FRAME = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
TYPED = Signature(column_types={"a": "long", "b": "binary", "c": "datetime"})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("application/json", "application/json"),
        ("Application/JSON; charset=utf-8", "application/json"),
        ("text/csv;charset=UTF-8", "text/csv"),
        ("application/csv", "application/csv"),
        ("application/vnd.apache.parquet", "application/vnd.apache.parquet"),
    ],
)
def test_content_types(header: str, expected: str) -> None:
    assert parse_content_type(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "text/plain",
        "application/xml",
        "text/csv; charset=latin-1",
        "application/json; boundary=x",
    ],
)
def test_unsupported_content_types(header) -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_content_type(header)


def test_dataframe_split_and_records() -> None:
    split = json.dumps({"dataframe_split": FRAME.to_dict(orient="split")}).encode()
    pd.testing.assert_frame_equal(decode_request("application/json", split).data, FRAME)
    records = json.dumps({"dataframe_records": FRAME.to_dict(orient="records"), "params": {"k": 3}})
    decoded = decode_request("application/json", records.encode())
    pd.testing.assert_frame_equal(decoded.data, FRAME)
    assert decoded.params == {"k": 3} and not decoded.unwrapped


def test_top_level_records_list() -> None:
    body = json.dumps(FRAME.to_dict(orient="records")).encode()
    pd.testing.assert_frame_equal(decode_request("application/json", body).data, FRAME)


def test_raw_llm_payload_splits_params_by_the_param_schema() -> None:
    signature = Signature(param_names=frozenset({"temperature"}))
    body = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "n": 2}'
    decoded = decode_request("application/json", body, signature)
    assert decoded.unwrapped
    assert decoded.params == {"temperature": 0.5}
    assert decoded.data == {"messages": [{"role": "user", "content": "hi"}], "n": 2}


@pytest.mark.parametrize(
    "payload",
    [
        {"prompt": "Once upon a time", "max_tokens": 5},
        {"input": ["embed me", "and me"], "max_tokens": 5},
    ],
)
def test_raw_completions_and_embeddings_payloads(payload: dict) -> None:
    signature = Signature(param_names=frozenset({"max_tokens"}))
    decoded = decode_request("application/json", json.dumps(payload).encode(), signature)
    assert decoded.unwrapped and decoded.params == {"max_tokens": 5}
    assert decoded.data == {k: v for k, v in payload.items() if k != "max_tokens"}


def split_body(columns: list, data: list, **extra) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": data}, **extra}).encode()


def test_plain_split_rows_are_left_as_rows_for_a_batch() -> None:
    body = split_body(["a", "n", "s", "t"], [[1.5, 2, "x", True], [0.5, -3, "y", False]])
    rows = decode_json(body, rows=True).data
    assert isinstance(rows, Rows) and len(rows) == 2
    pd.testing.assert_frame_equal(rows.frame(), decode_json(body).data)


@pytest.mark.parametrize(
    ("body", "signature"),
    [
        (split_body(["a"], [[1.0], [None]]), Signature()),  # a missing value
        (split_body(["a"], [[1.0], [2]]), Signature()),  # two types in one column
        (split_body(["a"], [[2**63]]), Signature()),  # read as uint64 alone
        (split_body(["a", "a"], [[1.0, 2.0]]), Signature()),  # refused as a DataFrame is
        (split_body(["a"], [[[1.0]]]), Signature()),  # a nested value
        (split_body(["a"], [[1.0]], params={"k": 1}), Signature()),
        (split_body(["b"], [["aGk="]]), TYPED),  # binary: decoded after reading
        (json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1.0]], "index": [7]}}), None),
    ],
)
def test_other_split_bodies_become_dataframes(body, signature) -> None:
    body = body.encode() if isinstance(body, str) else body
    try:
        expected = decode_json(body, signature or Signature())
    except BadRequest:
        with pytest.raises(BadRequest):
            decode_json(body, signature or Signature(), rows=True)
        return
    decoded = decode_json(body, signature or Signature(), rows=True)
    assert isinstance(decoded.data, pd.DataFrame)
    pd.testing.assert_frame_equal(decoded.data, expected.data)


# Property: plain rows of one key, joined into one frame, give exactly the frames that the
# requests would have given alone, end to end: batching them cannot change a dtype or a value.

plain_values = {
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "int": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "str": st.text(max_size=5),
    "bool": st.booleans(),
}


@st.composite
def plain_requests(draw) -> list[bytes]:
    kinds = draw(st.lists(st.sampled_from(sorted(plain_values)), min_size=1, max_size=4))
    columns = [f"c{index}" for index in range(len(kinds))]
    row = st.tuples(*(plain_values[kind] for kind in kinds)).map(list)
    requests = st.lists(st.lists(row, min_size=1, max_size=3), min_size=1, max_size=5)
    return [split_body(columns, data) for data in draw(requests)]


@settings(max_examples=200, deadline=None)
@given(plain_requests())
def test_joined_rows_equal_the_requests_frames_end_to_end(bodies: list[bytes]) -> None:
    parts = [decode_json(body, rows=True).data for body in bodies]
    assert all(isinstance(part, Rows) and part.key == parts[0].key for part in parts)
    alone = [decode_json(body).data for body in bodies]
    pd.testing.assert_frame_equal(Rows.joined(parts), pd.concat(alone, ignore_index=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=3),
            min_size=2,
            max_size=2,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_rows_or_not_a_split_body_decodes_to_the_same_frame(data: list) -> None:
    body = split_body(["a", "b"], data)
    expected = decode_json(body).data
    decoded = decode_json(body, rows=True).data
    frame = decoded.frame() if isinstance(decoded, Rows) else decoded
    pd.testing.assert_frame_equal(frame, expected)


def test_binary_and_datetime_columns_are_decoded() -> None:
    body = json.dumps(
        [
            {"a": 1, "b": "aGk=", "c": "2020-01-01T00:00:00Z"},
            {"a": 2, "b": "eW8=", "c": "2020-01-01T02:00:00+02:00"},
        ]
    ).encode()
    frame = decode_request("application/json", body, TYPED).data
    assert frame["b"].tolist() == [b"hi", b"yo"]
    assert frame["c"].tolist() == [pd.Timestamp("2020-01-01")] * 2
    assert str(frame["c"].dtype) == "datetime64[ns]"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"a": 1, "b": "***", "c": "2020-01-01"}, "not valid base64"),
        ({"a": 1, "b": 12, "c": "2020-01-01"}, "send base64 strings"),
        ({"a": 1, "b": "aGk=", "c": "soon"}, "ISO 8601"),
        ({"a": 1, "b": "aGk=", "c": 5}, "ISO 8601"),
    ],
)
def test_undecodable_typed_values(row: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_request("application/json", json.dumps([row]).encode(), TYPED)


def test_headerless_csv_takes_the_signature_columns() -> None:
    signature = Signature(column_types={"x": "double", "y": "double"})
    frame = decode_request("text/csv", b"1,2\n3,4\n", signature).data
    assert frame.to_dict(orient="list") == {"x": [1.0, 3.0], "y": [2.0, 4.0]}


def test_csv_with_header_keeps_it() -> None:
    signature = Signature(column_types={"x": "double", "y": "double"})
    frame = decode_request("text/csv", b"x,y\n3,4\n", signature).data
    assert frame.to_dict(orient="list") == {"x": [3.0], "y": [4.0]}


def test_ragged_inputs_become_one_row_each() -> None:
    decoded = decode_request("application/json", b'{"inputs": [["a"], ["b", "c"]]}')
    assert decoded.data.iloc[:, 0].tolist() == [["a"], ["b", "c"]]


def test_encoding_matches_mlflow() -> None:
    from mlflow.pyfunc.scoring_server import predictions_to_json

    for value in (
        np.array([1, 2, 3]),
        np.array([[1.5, 2.5]]),
        np.array(["a", "b"], dtype=object),
        pd.DataFrame({"a": [1, 2], "b": ["x", "y"], "t": pd.to_datetime(["2020-01-01"] * 2)}),
        pd.Series([0.5, 1.5], name="score"),
        [1, "a", None, b"bytes"],
        {"k": [1, 2], "b": b"\x00\x01"},
    ):
        expected = io.StringIO()
        predictions_to_json(value, expected)
        assert json.loads(encode_predictions(value)) == json.loads(expected.getvalue()), value


def test_unwrapped_encoding() -> None:
    assert json.loads(encode_predictions([{"x": 1}], unwrapped=True)) == [{"x": 1}]


# Property: whatever a client sends, decoding answers a ModelInput or a 400/415, nothing else.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
format_keys = st.sampled_from(
    ["dataframe_split", "dataframe_records", "instances", "inputs", "messages", "params", "x"]
)
payloads = (
    json_values
    | st.dictionaries(format_keys, json_values, min_size=1, max_size=3)
    | st.builds(
        lambda columns, data: {"dataframe_split": {"columns": columns, "data": data}},
        st.lists(st.sampled_from(["a", "b", "c", 1, None]), max_size=4),
        st.lists(st.lists(json_values, max_size=4), max_size=3),
    )
    | st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values), max_size=3)
)


def assert_decodes_or_refuses(content_type: str | None, body: bytes, signature=TYPED) -> None:
    """The decoders themselves, below decode_request's last-resort catch, raise only 400/415."""
    try:
        media = parse_content_type(content_type)
        if media == "application/json":
            decode_json(body, signature)
        elif media.endswith("csv"):
            decode_csv(body, signature)
    except ScoringError as exc:
        assert exc.status in (400, 415), exc
        assert len(exc.message) < 1000


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads)
def test_any_json_payload_decodes_or_is_refused(payload) -> None:
    body = json.dumps(payload).encode()
    assert_decodes_or_refuses("application/json", body)
    assert_decodes_or_refuses("application/json", body, Signature())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([*MEDIA_TYPES, None, "text/plain"]))
def test_any_bytes_decode_or_are_refused(body: bytes, content_type) -> None:
    assert_decodes_or_refuses(content_type, body)


@pytest.mark.parametrize("flag", [True, False, None])
def test_stream_is_taken_out_of_the_payload_before_decoding(flag) -> None:
    body = {"dataframe_split": {"columns": ["a"], "data": [[1]]}, "stream": flag}
    decoded = decode_request("application/json", json.dumps(body).encode())
    assert decoded.stream is bool(flag)
    pd.testing.assert_frame_equal(decoded.data, pd.DataFrame({"a": [1]}))
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": flag}
    decoded = decode_request("application/json", json.dumps(chat).encode())
    assert decoded.unwrapped and decoded.stream is bool(flag)
    assert decoded.data == {"messages": [{"role": "user", "content": "hi"}]}


def test_a_stream_takes_inputs_as_they_are() -> None:
    """predict_stream takes one input as the host would give it: a string, a dict."""
    for value in ("some words", {"question": "why?"}):
        body = json.dumps({"inputs": value, "params": {"k": 1}, "stream": True}).encode()
        decoded = decode_request("application/json", body)
        assert (decoded.data, decoded.params, decoded.stream) == (value, {"k": 1}, True)


@pytest.mark.parametrize("flag", ["yes", 1, [True]])
def test_stream_must_be_a_boolean(flag) -> None:
    body = json.dumps({"inputs": "x", "stream": flag}).encode()
    with pytest.raises(BadRequest, match="'stream' must be true or false"):
        decode_request("application/json", body)
