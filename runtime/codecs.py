"""Request decoding and response encoding: functions over bytes, frames and arrays, no HTTP.

    decode_request(content_type, body, signature, rows) -> ModelInput(data, params, unwrapped)
    encode_predictions(predictions, unwrapped) -> bytes

Decoding follows MLflow's scoring server (3.x) wherever that server works, so existing clients
keep working, and goes further where the protocol document shows a request that MLflow
refuses: `application/csv`, a top-level list of records, ragged `inputs`, datetimes with mixed
offsets, a header-less CSV row. Any failure to decode is a `BadRequest` (400) or an
`UnsupportedMediaType` (415); nothing a client sends can make decoding raise anything else.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import datetime as dt
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlimg_runtime.contract import FORMAT_KEYS, STREAM_KEY, answered_unwrapped
from mlimg_runtime.errors import BadRequest, ScoringError, UnsupportedMediaType
from mlimg_runtime.model import NO_SIGNATURE, Signature

JSON = "application/json"
CSV_TYPES = ("text/csv", "application/csv")
PARQUET = "application/vnd.apache.parquet"
MEDIA_TYPES = (JSON, *CSV_TYPES, PARQUET)
_PREFIX = 80  # how much of a payload an error message may quote


@dataclass(frozen=True)
class ModelInput:
    data: Any
    params: dict[str, Any] = field(default_factory=dict)
    unwrapped: bool = False  # a raw LLM payload: the answer is not wrapped in "predictions"
    stream: bool = False  # `"stream": true`: answered chunk by chunk (predict_stream)


# JSON's scalar types that pandas reads into one dtype per column whatever the other rows are.
_PLAIN_TYPES = frozenset({float, int, str, bool})
_INT64_RANGE = range(-(2**63), 2**63)
_NUMPY_TYPES = {float: np.float64, int: np.int64, bool: np.bool_}


@dataclass(frozen=True)
class Rows:
    """A `dataframe_split` body of plain rows, kept as the lists JSON gave.

    Each column holds values of one type, the same in every row (float, int within int64, str
    or bool), so pandas gives a column the same dtype whether it reads these rows alone or
    after another request's rows of the same `key`: a batch of them makes one DataFrame that
    equals its requests' frames put end to end, for the price of one.
    """

    columns: tuple[str, ...]
    data: list[list[Any]]
    kinds: tuple[type, ...]

    def __len__(self) -> int:
        return len(self.data)

    @property
    def key(self) -> tuple:
        return self.columns, self.kinds

    def frame(self) -> pd.DataFrame:
        return Rows.joined([self])

    @staticmethod
    def joined(parts: list[Rows]) -> pd.DataFrame:
        """One DataFrame of `parts` (all of one key) end to end."""
        data = parts[0].data if len(parts) == 1 else [row for part in parts for row in part.data]
        columns = list(parts[0].columns)
        kinds = set(parts[0].kinds)
        dtype = _NUMPY_TYPES.get(kinds.pop()) if len(kinds) == 1 else None
        if dtype is not None:  # one numeric type: the frame pandas would infer, in half the time
            return pd.DataFrame(np.array(data, dtype=dtype), columns=columns)
        frame = pd.DataFrame(data=data, columns=columns)
        floats = [name for name, kind in zip(columns, parts[0].kinds) if kind is float]
        if floats:  # whole numbers sent for float columns: pandas read them as integers
            frame = frame.astype(dict.fromkeys(floats, np.float64))
        return frame


def as_frame(data: Any) -> Any:
    """`data`, with `Rows` made a DataFrame."""
    return data.frame() if isinstance(data, Rows) else data


def parse_content_type(header: str | None) -> str:
    """The request's media type, lower-cased; 415 for a missing, unknown or non-UTF-8 one."""
    if not header or not header.strip():
        raise UnsupportedMediaType(_media_help("no Content-Type header"))
    media, *parameters = (part.strip() for part in header.split(";"))
    media = media.lower()
    for parameter in filter(None, parameters):
        key, _, value = parameter.partition("=")
        key, value = key.strip().lower(), value.strip().strip('"').lower()
        if key != "charset":
            raise UnsupportedMediaType(f"unrecognized Content-Type parameter {key!r}")
        if value not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"only UTF-8 is supported, not charset={value!r}")
    if media not in MEDIA_TYPES:
        raise UnsupportedMediaType(_media_help(f"unsupported Content-Type {media[:60]!r}"))
    return media


# What decoding may cost, estimated from the body before it is parsed (the parsers cannot be
# stopped half-way): a value (a JSON number or short string, a CSV field) costs at most about
# 48 bytes as a Python object in a list and then a DataFrame cell, and text twice its length;
# a CSV column costs the C parser about 4 KiB of its own (ARCHITECTURE.md, "Measurements").
_VALUE_COST = 48
_COLUMN_COST = 4096


def decoded_size(content_type: str | None, body: bytes) -> int:
    """About how many bytes decoding `body` would take; 0 when the type is not one we decode."""
    try:
        media = parse_content_type(content_type)
    except UnsupportedMediaType:
        return 0
    if media == PARQUET:
        return _parquet_size(body)
    values = body.count(b",") + body.count(b"\n") + 1
    size = values * _VALUE_COST + 2 * len(body)
    if media in CSV_TYPES:
        end = body.find(b"\n")
        size += (body.count(b",", 0, end if end >= 0 else len(body)) + 1) * _COLUMN_COST
    return size


def _parquet_size(body: bytes) -> int:
    """Parquet's own account of its uncompressed data, read from the footer before any column
    is: a 0.9 MB zstd file can hold gigabytes."""
    try:
        import pyarrow.parquet as pq

        metadata = pq.ParquetFile(io.BytesIO(body)).metadata
    except Exception:  # no pyarrow, or not Parquet: reading it says so
        return 0
    data = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    cells = metadata.num_rows * metadata.num_columns
    return 2 * data + cells * 16 + metadata.num_columns * _COLUMN_COST


def decode_request(
    content_type: str | None, body: bytes, signature: Signature = NO_SIGNATURE, rows: bool = False
) -> ModelInput:
    """The request as model input. With `rows`, a `dataframe_split` of plain rows is left as
    `Rows` (for a batch to join) instead of a DataFrame."""
    media = parse_content_type(content_type)
    try:
        if media == JSON:
            return decode_json(body, signature, rows)
        if media == PARQUET:
            return ModelInput(prepare_frame(decode_parquet(body), signature))
        return ModelInput(prepare_frame(decode_csv(body, signature), signature))
    except ScoringError:
        raise
    except Exception as exc:  # a decoder's own failure on hostile input is still the client's
        raise BadRequest(f"the request body could not be decoded: {_first_line(exc)}") from None


def decode_csv(body: bytes, signature: Signature = NO_SIGNATURE) -> pd.DataFrame:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the CSV body is not UTF-8: {exc}") from None
    try:
        return pd.read_csv(io.StringIO(text), **csv_options(text, signature))
    except (ValueError, TypeError, OverflowError, pd.errors.ParserError) as exc:
        raise BadRequest(f"the CSV body could not be parsed: {_first_line(exc)}") from None


def csv_options(start: str, signature: Signature) -> dict[str, Any]:
    """pandas.read_csv's header, names and dtype for a CSV that begins with `start`."""
    names = list(signature.column_types)
    header = _has_header(start, names, signature)
    return {
        "header": 0 if header else None,
        "names": None if header or not names else names,
        "dtype": csv_dtypes(signature),
    }


def _has_header(text: str, names: list[str], signature: Signature) -> bool:
    """Whether the CSV's first line names its columns, decided from the signature and the line
    itself, so that no row is ever read as a header by mistake (and silently dropped).

    With named columns, the first line is data when none of its fields names a column and it
    has one field per column (the spec's header-less '1,2,3,4'). Without, it is data when
    every field is a number (or empty); a header has names. An unnamed tensor of strings
    leaves no way to tell: such a request is refused with how to send it instead.
    """
    try:
        first = next(csv.reader(io.StringIO(text)), [])
    except csv.Error as exc:
        raise BadRequest(f"the CSV body could not be parsed: {_first_line(exc)}") from None
    if names:
        return bool(set(first) & set(names)) or len(first) != len(names)
    numeric = all(_is_number(field) for field in first)
    if signature.text_tensor and not numeric:
        raise BadRequest(
            "the model takes a tensor of strings, so a CSV body cannot say whether its first "
            'line is a header or a row: send JSON instead ({"inputs": [...]})'
        )
    return not numeric


def _is_number(field: str) -> bool:
    field = field.strip()
    if not field:
        return True  # a missing value, not a column's name
    try:
        float(field)
    except ValueError:
        return False
    return True


def csv_dtypes(signature: Signature) -> Any:
    """Read typed where the signature names plain columns (binary and datetime are cast
    after), or as the tensor's floats; None where it says nothing."""
    if signature.tensor_dtype is not None and signature.tensor_dtype.kind == "f":
        return signature.tensor_dtype  # every column: whole numbers read as floats
    dtypes = {
        name: _PANDAS_TYPES[kind]
        for name, kind in signature.column_types.items()
        if kind in _PANDAS_TYPES
    }
    return dtypes or None


def decode_parquet(body: bytes) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(body))
    except ImportError:
        raise UnsupportedMediaType(
            "Parquet input needs pyarrow (or fastparquet) in the model's environment; mlimg "
            "images have it when the model requires it or when built with --full-mlflow"
        ) from None
    except (ValueError, OSError, TypeError) as exc:
        raise BadRequest(f"the Parquet body could not be read: {_first_line(exc)}") from None


def _not_a_json_number(constant: str) -> Any:
    raise BadRequest(f"{constant} is not a JSON number (RFC 8259); send null for a missing value")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadRequest(f"{text[:40]} is out of the range of a double")
    return value


# An exponent of three digits or more: the only way a JSON number can overflow a double.
_HUGE_EXPONENT = re.compile(rb"[0-9][eE][+]?[0-9]{3}")


def decode_json(body: bytes, signature: Signature = NO_SIGNATURE, rows: bool = False) -> ModelInput:
    # NaN and Infinity are not JSON; neither is a number beyond a double (1e400), which
    # Python would read as infinity. Checking each float costs a call per number: it is
    # done only for a body holding a large exponent.
    floats = _finite if _HUGE_EXPONENT.search(body) else None
    try:
        payload = json.loads(body, parse_constant=_not_a_json_number, parse_float=floats)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(
            f"the body is not valid JSON ({_first_line(exc)}): {_prefix(body)}"
        ) from None
    if isinstance(payload, list):
        # The record-oriented list that the protocol document shows for binary and datetimes.
        return ModelInput(prepare_frame(_records_frame(payload, "the top-level list"), signature))
    if not isinstance(payload, dict):
        raise BadRequest(f"expected a JSON object or a list of records, got {_prefix(body)}")
    return decode_payload(payload, signature, rows)


def decode_payload(
    payload: dict[str, Any], signature: Signature = NO_SIGNATURE, rows: bool = False
) -> ModelInput:
    """A JSON object body as model input; `stream` is taken out of it first."""
    stream = payload.pop(STREAM_KEY, False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest(f"'{STREAM_KEY}' must be true or false, not {json.dumps(stream)[:40]}")
    if answered_unwrapped(payload):
        return _llm_input(payload, signature, stream)
    keys = [key for key in FORMAT_KEYS if key in payload]
    if len(keys) != 1:
        found = f"found {', '.join(keys)}" if keys else f"found keys {sorted(payload)[:10]}"
        raise BadRequest(
            f"the JSON body must hold exactly one of {', '.join(FORMAT_KEYS)} "
            f"(or a raw chat, completions or embeddings payload); {found}"
        )
    key = keys[0]
    unknown = set(payload) - {key, "params"}
    if unknown:
        raise BadRequest(f"unexpected keys beside {key!r}: {sorted(unknown)[:10]}")
    params = payload.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest("'params' must be a JSON object")
    value = payload[key]
    if stream and key in ("instances", "inputs"):
        # predict_stream takes one input as it is (a string, a dict...); mlflow checks it
        # against the signature, as it does on the host.
        data = value
    elif key == "dataframe_split":
        plain = _plain_rows(value, signature) if rows and not params and not stream else None
        data = plain or prepare_frame(_split_frame(value), signature)
    elif key == "dataframe_records":
        data = prepare_frame(_records_frame(value, "'dataframe_records'"), signature)
    else:
        data = _tensor_input(key, value, signature)
    return ModelInput(data, params, stream=stream)


def _llm_input(payload: dict[str, Any], signature: Signature, stream: bool) -> ModelInput:
    """Raw chat/completions/embeddings: keys the param schema names are params, the rest data."""
    data = {k: v for k, v in payload.items() if k not in signature.param_names}
    params = {k: v for k, v in payload.items() if k in signature.param_names}
    return ModelInput(data, params, unwrapped=True, stream=stream)


def _split_frame(value: Any) -> pd.DataFrame:
    if not isinstance(value, dict) or "data" not in value:
        raise BadRequest("'dataframe_split' must be an object with 'data' (and 'columns')")
    extra = set(value) - {"columns", "data", "index"}
    if extra:
        raise BadRequest(f"'dataframe_split' has unexpected keys {sorted(extra)[:10]}")
    try:
        return pd.DataFrame(
            data=value["data"], columns=value.get("columns"), index=value.get("index")
        )
    except (ValueError, TypeError, AssertionError) as exc:
        message = f"'dataframe_split' does not form a DataFrame: {_first_line(exc)}"
        raise BadRequest(message) from None


def _plain_rows(value: Any, signature: Signature) -> Rows | None:
    """`value` as `Rows` if it is `columns` and `data` only, of distinct string columns that
    decoding leaves alone (not binary or datetime) and rows of plain values, one type per
    column; otherwise None, and it is decoded into a DataFrame as any other."""
    if not isinstance(value, dict) or value.keys() != {"columns", "data"}:
        return None
    columns, data = value["columns"], value["data"]
    if type(columns) is not list or type(data) is not list or not columns or not data:
        return None
    if not all(type(name) is str for name in columns) or len(set(columns)) != len(columns):
        return None
    if any(signature.column_types.get(name) in _COLUMN_DECODERS for name in columns):
        return None
    if type(data[0]) is not list:
        return None
    kinds = tuple(map(type, data[0]))
    if len(kinds) != len(columns) or not _PLAIN_TYPES.issuperset(kinds):
        return None
    if any(type(row) is not list or tuple(map(type, row)) != kinds for row in data):
        return None
    for index, kind in enumerate(kinds):
        if kind is int and not all(row[index] in _INT64_RANGE for row in data):
            return None  # pandas reads larger integers as uint64 or object, per request
    # Whole numbers sent for a float column (JavaScript writes 2.0 as 2) are floats.
    floating = tuple(signature.column_types.get(name) in _FLOAT_TYPES for name in columns)
    kinds = tuple(float if kind is int and f else kind for kind, f in zip(kinds, floating))
    return Rows(tuple(columns), data, kinds)


def _records_frame(value: Any, what: str) -> pd.DataFrame:
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise BadRequest(f"{what} must be a list of JSON objects, one per row")
    return pd.DataFrame.from_records(value) if value else pd.DataFrame()


def _tensor_input(key: str, value: Any, signature: Signature) -> Any:
    """`instances` / `inputs`: parsed as MLflow parses them, plus ragged nested lists."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.proto_json_utils import parse_tf_serving_input

    if _is_ragged(value):
        # MLflow turns these into numpy arrays and fails; each inner list is one row's value.
        schema = signature.input_schema
        name = schema.input_names()[0] if schema is not None and len(schema.inputs) == 1 else 0
        return pd.DataFrame({name: value})
    try:
        return parse_tf_serving_input({key: value}, schema=signature.input_schema)
    except MlflowException as exc:
        raise BadRequest(_first_line(exc.message)) from None


def _is_ragged(value: Any) -> bool:
    if not isinstance(value, list) or not value:
        return False
    if not all(isinstance(item, list) for item in value):
        return False
    return len({len(item) for item in value}) > 1


def prepare_frame(frame: pd.DataFrame, signature: Signature) -> pd.DataFrame:
    """Check a decoded frame and decode what JSON and CSV cannot carry natively: base64
    binary and ISO 8601 datetime columns."""
    if frame.columns.has_duplicates:
        duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})[:5]
        raise BadRequest(f"the input names columns more than once: {duplicated}")
    for name, kind in signature.column_types.items():
        decode = _COLUMN_DECODERS.get(kind)
        if decode is not None and name in frame.columns:
            frame[name] = decode(frame[name], name)
        elif (
            kind in _FLOAT_TYPES
            and name in frame.columns
            and pd.api.types.is_integer_dtype(frame[name])
        ):  # whole numbers sent for a float column (JavaScript writes 2.0 as 2)
            frame[name] = frame[name].astype(_PANDAS_TYPES[kind])
    return frame


def _binaries(column: pd.Series, name: str) -> list[Any]:
    return [_base64(value, name) for value in column]


def _base64(value: Any, column: str) -> Any:
    if value is None or isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, float) and np.isnan(value):
        return None
    if not isinstance(value, str):
        raise BadRequest(f"column {column!r} is binary: send base64 strings, not {_type(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"column {column!r} holds a value that is not valid base64") from None


def _datetimes(column: pd.Series, name: str) -> pd.Series:
    """ISO 8601 strings to naive datetimes; offsets (a trailing Z included) are moved to UTC."""
    if not pd.api.types.is_datetime64_any_dtype(column):
        if any(not isinstance(v, str) for v in column.tolist() if v is not None):
            raise BadRequest(f"column {name!r} is a datetime: send ISO 8601 strings")
        try:
            column = _parse_iso8601(column)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequest(
                f"column {name!r}: not an ISO 8601 datetime ({_first_line(exc)})"
            ) from None
    if getattr(column.dt, "tz", None) is not None:
        column = column.dt.tz_convert(None)
    if hasattr(column.dt, "as_unit"):
        column = column.dt.as_unit("ns")  # MLflow's datetime type is nanoseconds
    return column


# The signature's column types that decoding turns from JSON or CSV text into values.
_COLUMN_DECODERS = {"binary": _binaries, "datetime": _datetimes}

_PANDAS_MAJOR = int(pd.__version__.split(".")[0])
# pandas 2 parses mixed ISO 8601 forms only when told so; pandas 1 always did.
_ISO8601 = {"format": "ISO8601"} if _PANDAS_MAJOR >= 2 else {}
_ISO_DATETIME = (
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d+)?)?)?)?"
    r"(?:Z|[+-]\d{2}(?::?\d{2})?)?"
)


def _parse_iso8601(column: pd.Series) -> pd.Series:
    """ISO 8601 strings (None kept) to UTC datetimes, each value by its own offset.

    pandas 2's format="ISO8601" gives a value without an offset the offset of the value
    before it (2021-03-01T08:00:00 after a +02:00 value became 06:00 UTC); there each value is
    checked to be ISO 8601, then parsed on its own (format="mixed").
    """
    if _PANDAS_MAJOR != 2:
        return pd.to_datetime(column, utc=True, **_ISO8601)
    text = column.astype("string")
    wrong = ~text.str.fullmatch(_ISO_DATETIME).fillna(True).astype(bool)
    if wrong.any():
        raise ValueError(f"{text[wrong].iloc[0]!r} is not ISO 8601")
    return pd.to_datetime(column, utc=True, format="mixed")


def prediction_frame(predictions: Any, rows: int | None = None) -> pd.DataFrame:
    """Predictions as columns, one row per input row, as a user loads them back into pandas: a
    frame's own columns, a dict's keys, records' fields, `prediction` for one value per row,
    `prediction_0`, `prediction_1`... for several (predict_proba's). `rows`, when given, is
    the number of input rows, checked."""
    if isinstance(predictions, pd.DataFrame):
        frame = predictions.reset_index(drop=True)
    elif isinstance(predictions, pd.Series):
        frame = pd.DataFrame({"prediction": predictions.reset_index(drop=True)})
    elif isinstance(predictions, dict):
        frame = pd.DataFrame({str(key): list(value) for key, value in predictions.items()})
    elif isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
        frame = pd.DataFrame(predictions)
    else:
        frame = _array_frame(predictions)
    if rows is not None and len(frame) != rows:
        raise ValueError(f"the model returned {len(frame)} predictions for {rows} rows")
    return frame


def _array_frame(predictions: Any) -> pd.DataFrame:
    try:
        array = np.asarray(predictions)
    except ValueError:  # rows of different lengths: a list per row
        return pd.DataFrame({"prediction": list(predictions)})
    if array.ndim == 0:
        return pd.DataFrame({"prediction": [array.item()]})
    if array.ndim == 1:
        return pd.DataFrame({"prediction": array})  # as it is: a list of it took half the job
    if array.ndim == 2:
        return pd.DataFrame(array, columns=[f"prediction_{i}" for i in range(array.shape[1])])
    return pd.DataFrame({"prediction": list(array)})  # an array per row


def encode_predictions(predictions: Any, unwrapped: bool = False) -> bytes:
    """MLflow's response: {"predictions": ...} (frames as records), or the bare value."""
    value = jsonable(predictions)
    body = value if unwrapped else {"predictions": value}
    return json.dumps(body, default=json_default).encode()


def jsonable(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return value.to_dict(orient="records")
    if isinstance(value, pd.Series):
        return pd.DataFrame(value).to_dict(orient="records")
    if isinstance(value, np.ndarray):
        return _array_value(value)
    return value


def _array_value(array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind in ("S", "M", "m"):
        return [
            json_default(item) if not _is_json_native(item) else item for item in array.tolist()
        ]
    return array.tolist()


def _is_json_native(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


def json_default(value: Any) -> Any:
    """The conversions MLflow's NumpyEncoder makes, for values json cannot encode itself."""
    if isinstance(value, np.ndarray):
        return _array_value(value)
    if isinstance(value, np.generic):
        return value.item() if not isinstance(value, np.datetime64) else str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.encodebytes(value).decode("ascii")
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (pd.DataFrame, pd.Series)):
        return jsonable(value)
    if hasattr(value, "model_dump"):  # pydantic models, as MLflow's encoder allows
        return value.model_dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)  # MLflow's chat types, as it serialises them
    raise TypeError(f"the model returned a {type(value).__name__}, which has no JSON form")


_FLOAT_TYPES = frozenset({"float", "double"})
_PANDAS_TYPES = {
    "boolean": "bool",
    "integer": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "string": "object",
}


def _media_help(problem: str) -> str:
    return f"{problem}: use application/json, text/csv, application/csv or {PARQUET}"


def _type(value: Any) -> str:
    return type(value).__name__


def _prefix(body: bytes) -> str:
    text = body[:_PREFIX].decode("utf-8", errors="replace")
    return repr(text + ("..." if len(body) > _PREFIX else ""))


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
