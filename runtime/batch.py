"""Batch inference on files (`mlimg predict`), run in the model's environment.

    python -m mlimg_runtime.batch --model DIR [--input FILE] [--output FILE] [--type csv|json]

CSV input is read and predicted in chunks of rows, so memory stays bounded however large the
file; each chunk's predictions are written before the next is read, in input order. JSON input
is one request body (any form /invocations accepts) and is read whole. The output is CSV when
its path ends in .csv, JSON ({"predictions": [...]}) otherwise; stdin and stdout stand in for
absent paths.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import pandas as pd

from mlimg_runtime.codecs import (
    csv_options,
    decode_json,
    json_default,
    jsonable,
    prediction_frame,
    prepare_frame,
)
from mlimg_runtime.errors import BadRequest, ScoringError
from mlimg_runtime.model import Signature, load_failure_hint, load_model, predict

log = logging.getLogger("mlimg_runtime")
DEFAULT_CHUNK_ROWS = 10_000


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        model, _ = load_model(args.model)
    except Exception as exc:
        print(
            f"mlimg: error: could not load the model: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        hint = load_failure_hint(exc)
        if hint:
            print(hint, file=sys.stderr)
        return 1
    signature = Signature.of(model)
    source = sys.stdin.buffer if args.input in (None, "-") else open(args.input, "rb")  # noqa: SIM115
    to_csv = args.format == "csv" if args.format else str(args.output).lower().endswith(".csv")
    to_stdout = args.output in (None, "-")
    # Standard output gets the answer whole or nothing: it is spooled to an unnamed file (on
    # disk, as a large input's predictions may not fit memory) and copied out once complete.
    sink = (
        tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        if to_stdout
        else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    )
    try:
        if args.type == "csv":
            chunks = _csv_chunks(source, signature, args.chunk_rows, _size(args.input))
        else:
            body = source.read()
            decoded = decode_json(body, signature)
            chunks = iter([(decoded.data, decoded.params)])
        writer = _CsvWriter(sink) if to_csv else _JsonWriter(sink)
        for data, params in chunks:
            writer.write(predict(model, data, params))
        writer.close()
        if to_stdout:
            sink.seek(0)
            shutil.copyfileobj(sink, sys.stdout)
            sys.stdout.flush()
    except ScoringError as exc:
        print(f"mlimg: error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        sink.close()
    return 0


def _csv_chunks(
    source: IO[bytes], signature: Signature, chunk_rows: int, size: int | None
) -> Iterator[tuple[pd.DataFrame, dict[str, Any]]]:
    progress = _Progress(source, size)
    text = io.TextIOWrapper(source, encoding="utf-8")
    rows = 0
    try:
        first = text.readline()  # whether it is a header is decided as for a request
        options = csv_options(first, signature)
        reader = pd.read_csv(_Prefixed(first, text), chunksize=chunk_rows, **options)
        for chunk in reader:
            rows += len(chunk)
            yield prepare_frame(chunk, signature), {}
            progress.show(rows)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise BadRequest(f"the CSV input could not be read near row {rows}: {exc}") from None
    finally:
        progress.done(rows)


class _Prefixed(io.TextIOBase):
    """A text stream whose first line was read already, given back in front of the rest."""

    def __init__(self, first: str, rest: IO[str]):
        self._first = first
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        if not self._first:
            return self._rest.read(size)
        if size is None or size < 0:
            text, self._first = self._first + self._rest.read(), ""
            return text
        text, self._first = self._first[:size], self._first[size:]
        return text

    def readline(self, size: int | None = -1) -> str:
        if self._first:
            text, self._first = self._first, ""
            return text
        return self._rest.readline(size)


class _CsvWriter:
    """Predictions as CSV rows, one per input row, in the columns of `prediction_frame`; a value
    that is itself an array (a row of a 3-D output) is written as JSON text."""

    def __init__(self, sink: IO[str]):
        self._sink = sink
        self._header = True

    def write(self, predictions: Any) -> None:
        frame = prediction_frame(predictions)
        for name, column in frame.items():
            if pd.api.types.is_object_dtype(column) and column.map(_is_array).any():
                frame[name] = column.map(lambda v: json.dumps(jsonable(v), default=json_default))
        frame.to_csv(self._sink, index=False, header=self._header)
        self._header = False

    def close(self) -> None:
        self._sink.flush()


def _is_array(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


class _JsonWriter:
    """{"predictions": [...]}, written as the chunks come, as /invocations would answer."""

    def __init__(self, sink: IO[str]):
        self._sink = sink
        self._first = True
        self._sink.write('{"predictions": [')

    def write(self, predictions: Any) -> None:
        items = jsonable(predictions)
        if not isinstance(items, list):
            items = [items]
        for item in items:
            self._sink.write(("" if self._first else ", ") + json.dumps(item, default=json_default))
            self._first = False

    def close(self) -> None:
        self._sink.write("]}\n")
        self._sink.flush()


class _Progress:
    """A progress line on a terminal: rows done and, for a file, how much of it was read."""

    def __init__(self, source: IO[bytes], size: int | None):
        self._source = source
        self._size = size
        self._on = sys.stderr.isatty()

    def show(self, rows: int) -> None:
        if not self._on:
            return
        done = ""
        if self._size:
            with contextlib.suppress(OSError):
                done = f" ({100 * self._source.tell() / self._size:.0f}% of the input)"
        sys.stderr.write(f"\rpredicted {rows:,} rows{done}")
        sys.stderr.flush()

    def done(self, rows: int) -> None:
        if self._on:
            sys.stderr.write(f"\rpredicted {rows:,} rows\n")


def _size(path: str | None) -> int | None:
    if path in (None, "-"):
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlimg_runtime.batch")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument(
        "--format", choices=("csv", "json"), help="of the output (by default, its suffix)"
    )
    parser.add_argument("--type", choices=("csv", "json"), default="json")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
