"""Request decoding and response encoding: pure functions over bytes, frames and arrays.

decode_request(content_type, body) -> ModelInput(data, params)
encode_predictions(predictions) -> bytes
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlimg_runtime.errors import BadRequest, UnsupportedMediaType

JSON = "application/json"
CSV_TYPES = ("text/csv", "application/csv")
FORMAT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_PREFIX = 80  # how much of a payload an error message may quote


@dataclass(frozen=True)
class ModelInput:
    data: Any
    params: dict[str, Any] = field(default_factory=dict)


def media_type(content_type: str | None) -> str:
    """The media type without parameters, lower-cased: 'Text/CSV; charset=utf-8' -> 'text/csv'."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_request(content_type: str | None, body: bytes) -> ModelInput:
    kind = media_type(content_type)
    if kind == JSON:
        return decode_json(body)
    if kind in CSV_TYPES:
        return ModelInput(decode_csv(body))
    shown = content_type if content_type else "none"
    raise UnsupportedMediaType(
        f"unsupported Content-Type {shown!r}: use application/json, text/csv or application/csv"
    )


def decode_csv(body: bytes) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(body))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise BadRequest(f"the CSV body could not be parsed: {_first_line(exc)}") from None


def decode_json(body: bytes) -> ModelInput:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(
            f"the body is not valid JSON ({_first_line(exc)}): {_prefix(body)}"
        ) from None
    if isinstance(payload, list):
        return ModelInput(_records_frame(payload))
    if not isinstance(payload, dict):
        raise BadRequest(f"expected a JSON object or a list of records, got {_prefix(body)}")
    keys = [key for key in FORMAT_KEYS if key in payload]
    if len(keys) != 1:
        found = f"found {', '.join(keys)}" if keys else f"found keys {sorted(payload)[:10]}"
        raise BadRequest(
            f"the JSON body must hold exactly one of {', '.join(FORMAT_KEYS)}; {found}"
        )
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest("'params' must be a JSON object")
    unknown = set(payload) - {keys[0], "params"}
    if unknown:
        raise BadRequest(f"unexpected keys beside {keys[0]!r}: {sorted(unknown)[:10]}")
    return ModelInput(_decode_format(keys[0], payload[keys[0]]), params)


def _decode_format(key: str, value: Any) -> Any:
    if key == "dataframe_split":
        return _split_frame(value)
    if key == "dataframe_records":
        return _records_frame(value)
    return _tensor_input(value)


def _split_frame(value: Any) -> pd.DataFrame:
    if not isinstance(value, dict) or "data" not in value:
        raise BadRequest("'dataframe_split' must be an object with 'data' (and 'columns')")
    try:
        return pd.DataFrame(
            data=value["data"], columns=value.get("columns"), index=value.get("index")
        )
    except (ValueError, TypeError) as exc:
        raise BadRequest(
            f"'dataframe_split' does not form a DataFrame: {_first_line(exc)}"
        ) from None


def _records_frame(value: Any) -> pd.DataFrame:
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise BadRequest("records must be a list of JSON objects, one per row")
    try:
        return pd.DataFrame.from_records(value)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"the records do not form a DataFrame: {_first_line(exc)}") from None


def _tensor_input(value: Any) -> Any:
    """TF-serving style input: a list becomes an array, a dict of lists a dict of arrays."""
    if isinstance(value, dict):
        return {key: _array(item) for key, item in value.items()}
    if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
        columns = {key for row in value for key in row}
        return {key: _array([row.get(key) for row in value]) for key in sorted(columns)}
    return _array(value)


def _array(value: Any) -> Any:
    try:
        return np.asarray(value)
    except ValueError:  # ragged nesting: leave it to the model
        return value


def encode_predictions(predictions: Any) -> bytes:
    """MLflow's response shape: {"predictions": ...}, frames as records, arrays as lists."""
    return json.dumps({"predictions": jsonable(predictions)}, default=_json_default).encode()


def jsonable(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return value.to_dict(orient="records")
    if isinstance(value, pd.Series):
        return pd.DataFrame(value).to_dict(orient="records")
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, pd.DataFrame, pd.Series)):
        return jsonable(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (dt.datetime, dt.date, pd.Timestamp)):
        return value.isoformat()
    raise TypeError(f"the model returned a {type(value).__name__}, which has no JSON form")


def _prefix(body: bytes) -> str:
    text = body[:_PREFIX].decode("utf-8", errors="replace")
    return repr(text + ("..." if len(body) > _PREFIX else ""))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
