"""The model's side of `mlimg predict --runner spark`: run in Spark's Python workers, in the
model's environment, over the Arrow batches of a DataFrame (`DataFrame.mapInPandas`).

The model is loaded once per Python worker, by `model.load_model`, and each batch goes through
the same decoding of typed columns (`codecs.prepare_frame`) and the same `model.predict` with
its errors sorted as the server's. A batch the model refuses is predicted again row by row to
name the first row it refuses; that row's id (Spark's `monotonically_increasing_id`, which the
driver turns into a position in the input) travels in the exception's message.

No pyspark import: the functions here receive and return pandas frames only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd

from mlimg_runtime.codecs import csv_dtypes, prediction_frame, prepare_frame
from mlimg_runtime.errors import BadRequest, ScoringError
from mlimg_runtime.model import Signature, load_model, predict

ROW_ID = "__mlimg_row_id"  # the column the driver adds: each row's id, not a model input
ROW_ERROR = "mlimg-row-error"  # marks a refused row in the message Spark carries back
_models: dict[str, tuple[Any, Signature]] = {}  # by path: one load per Python worker


def _model(path: str) -> tuple[Any, Signature]:
    if path not in _models:
        model, _ = load_model(_resolve(path))
        _models[path] = (model, Signature.of(model))
    return _models[path]


def load_in_worker(model_path: str) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A function for mapInPandas that loads the model into the Python worker running it (kept
    there for the worker's next tasks and jobs), reads its input and gives nothing."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        _model(model_path)
        for _ in batches:  # all of it: a worker that leaves input unread is not reused
            pass
        return iter(())

    return run


def _resolve(path: str) -> str:
    """A model shipped with the job (`archive:NAME`) is where Spark unpacked it: a directory
    named NAME in the worker's current directory (SparkFiles' root for archives)."""
    if path.startswith("archive:"):
        from pyspark import SparkFiles

        name = path.split(":", 1)[1]
        return os.path.join(SparkFiles.getRootDirectory(), name)
    return path


def predict_batches(
    model_path: str, keep: list[str], csv_strings: bool = False
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function mapInPandas runs: each batch's kept columns beside its predictions.

    `csv_strings`: the batch holds CSV fields as text, to be typed as the server types a CSV
    body (by the signature's column types).
    """

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model, signature = _model(model_path)
        for batch in batches:
            yield _predict_batch(model, signature, batch, keep, csv_strings)

    return run


def _predict_batch(
    model: Any, signature: Signature, batch: pd.DataFrame, keep: list[str], csv_strings: bool
) -> pd.DataFrame:
    ids = batch[ROW_ID] if ROW_ID in batch.columns else None
    inputs = batch.drop(columns=[ROW_ID], errors="ignore")
    try:
        predictions = predict(model, _model_input(inputs, signature, csv_strings), {})
    except ScoringError as exc:
        raise RuntimeError(_refused_row(model, signature, inputs, ids, csv_strings, exc)) from None
    kept = batch[keep].reset_index(drop=True) if keep else pd.DataFrame(index=range(len(batch)))
    return pd.concat([kept, prediction_frame(predictions, len(batch))], axis=1)


def _model_input(inputs: pd.DataFrame, signature: Signature, csv_strings: bool) -> pd.DataFrame:
    """The batch as the server would hand it to the model: CSV text typed by the signature
    (as a CSV body is read), then typed columns decoded."""
    frame = inputs.reset_index(drop=True)
    if csv_strings:
        dtypes = csv_dtypes(signature)
        if isinstance(dtypes, dict):
            dtypes = {name: kind for name, kind in dtypes.items() if name in frame.columns}
        try:
            frame = frame.astype(dtypes) if dtypes else frame
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"a CSV field does not fit the model's signature: {exc}") from None
    return prepare_frame(frame, signature)


def _refused_row(
    model: Any,
    signature: Signature,
    inputs: pd.DataFrame,
    ids: Any,
    csv_strings: bool,
    error: ScoringError,
) -> str:
    """The message for a refused batch: the first row refused alone, with its id."""
    for position in range(len(inputs)):
        try:
            row = _model_input(inputs.iloc[[position]], signature, csv_strings)
            predict(model, row, {})
        except ScoringError as exc:
            row_id = int(ids.iloc[position]) if ids is not None else -1
            return f"{ROW_ERROR}:{row_id}:{exc.message}"
    return f"{ROW_ERROR}:-1:{error.message} (no row alone was refused: the batch as a whole was)"


def output_schema_probe(
    model_path: str, keep: list[str], csv_strings: bool = False
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A function for mapInPandas that predicts a few rows and returns the Arrow schema of
    the output (serialized), from which the driver declares the job's output schema."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pyarrow as pa

        model, signature = _model(model_path)
        found = False
        # Every batch is read, even after the first: a Python worker that leaves input unread
        # is not reused, and the next job's would load the model again.
        for batch in batches:
            if len(batch) and not found:
                found = True
                out = _predict_batch(model, signature, batch, keep, csv_strings)
                schema = pa.Schema.from_pandas(out, preserve_index=False)
                yield pd.DataFrame({"schema": [schema.serialize().to_pybytes()]})

    return run


def object_store(uri: str) -> tuple[Any, str]:
    """A pyarrow file system and path for an object-store URI, reached as MLflow reaches it
    (for S3: MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL, and the usual AWS credentials)."""
    from pyarrow import fs

    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    if uri.startswith("s3://") and endpoint:
        bucket_path = uri[len("s3://") :]
        scheme = "http" if endpoint.startswith("http://") else "https"
        host = endpoint.split("://", 1)[-1].rstrip("/")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        return fs.S3FileSystem(endpoint_override=host, scheme=scheme, region=region), bucket_path
    return fs.FileSystem.from_uri(uri)


def read_objects(
    csv_columns: list[str] | None, batch_rows: int
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A function for mapInPandas over a frame of object URIs (column `uri`): each object's
    rows, in batches. Parquet as it is; CSV (with `csv_columns`, its header) as text, typed
    later by the signature as the server types a CSV body."""

    def run(listings: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        for listing in listings:
            for uri in listing["uri"]:
                filesystem, path = object_store(uri)
                if csv_columns is None:
                    with filesystem.open_input_file(path) as source:
                        for batch in pq.ParquetFile(source).iter_batches(batch_size=batch_rows):
                            yield batch.to_pandas()
                    continue
                types = {name: pa.string() for name in csv_columns}
                options = pacsv.ConvertOptions(column_types=types, strings_can_be_null=False)
                read = pacsv.ReadOptions(block_size=1 << 22)
                with filesystem.open_input_stream(path) as source:
                    reader = pacsv.open_csv(source, read_options=read, convert_options=options)
                    for batch in reader:
                        yield batch.to_pandas()

    return run
