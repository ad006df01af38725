"""Answering /invocations, apart from any HTTP server: a body and its content type in, a
status and a JSON body out.

    body -> codecs.decode_request -> batching.Batcher (row-wise models) or model.predict
         -> codecs.encode_predictions

under a deadline counted from the request's arrival, and a budget for what decoding may take.
Every failure is answered as {"error_code", "message"} with its status; no stack trace unless
MLIMG_INCLUDE_TRACEBACK is set. mlimg's own server (`app`) and the MLServer engine
(`mlserver`) both answer through it; it imports neither flask nor gunicorn.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
import traceback
from typing import Any

from mlimg_runtime.batching import Batcher
from mlimg_runtime.codecs import (
    ModelInput,
    as_frame,
    decode_request,
    decoded_size,
    encode_predictions,
)
from mlimg_runtime.config import ServerConfig
from mlimg_runtime.errors import (
    ModelLoading,
    PayloadTooLarge,
    PredictionFailed,
    RequestTimeout,
    ScoringError,
    error_code,
)
from mlimg_runtime.memory import MemoryGate
from mlimg_runtime.model import ServedModel, predict

log = logging.getLogger("mlimg_runtime")
BODY_TOO_LARGE = "the request body is larger than the limit (MLIMG_MAX_REQUEST_BYTES)"


class Scorer:
    """Decodes, predicts (batched for row-wise models) and encodes one /invocations request."""

    def __init__(self, served: ServedModel, config: ServerConfig) -> None:
        self.served = served
        self.config = config
        self.deadline = _Deadline(config.timeout, config.threads)
        self.memory = MemoryGate(config.max_decoded_bytes)
        self.batcher = Batcher(
            lambda frame: predict(served.model, frame, {}, config.include_traceback),
            max_rows=config.max_batch_rows,
            max_wait=config.batch_wait_ms / 1000,
        )

    def answer(
        self, content_type: str | None, body: bytes, arrived: float | None = None
    ) -> tuple[int, bytes]:
        """The status and JSON body for a POST /invocations of `body`, which arrived whole at
        `arrived` (time.monotonic(); now if None); never raises."""
        try:
            return 200, self._predictions(content_type, body, arrived or time.monotonic())
        except ScoringError as error:
            return error.status, self.error_body(error.status, error.message, error.__cause__)
        except Exception as error:
            log.exception("unexpected error while answering /invocations")
            return 500, self.error_body(500, "internal error", error)

    def error_body(self, status: int, message: str, cause: BaseException | None = None) -> bytes:
        return error_body(status, message, self.config, cause)

    def _predictions(self, content_type: str | None, body: bytes, started: float) -> bytes:
        if not self.served.loaded:
            raise ModelLoading("the model is still loading; retry when /ping answers 200")
        # The deadline counts from the request's arrival (the front end's time), so that the
        # wait for a thread and the decoding are inside it, not only the prediction.
        cost = decoded_size(content_type, body)
        if cost > self.config.max_decoded_bytes:
            raise PayloadTooLarge(
                f"decoding this request would take about {cost / 2**20:,.0f} MiB, more than "
                f"the {self.config.max_decoded_bytes / 2**20:,.0f} MiB one request may use "
                "(MLIMG_MAX_DECODED_BYTES): send fewer rows per request"
            )
        try:
            with self.memory.reserve(cost, self.deadline.remaining(started)):
                return self._predict(content_type, body, started)
        except TimeoutError:  # no room for a large input before the deadline
            raise self.deadline.exceeded() from None

    def _predict(self, content_type: str | None, body: bytes, started: float) -> bytes:
        served = self.served
        batching = self._batching()
        with self.batcher.arrival() as arrival:
            self.deadline.check(started)
            model_input = decode_request(content_type, body, served.signature, rows=batching)
            self.deadline.check(started)
            data = model_input.data
            if batching and not model_input.params and self.batcher.accepts(data):
                try:
                    predictions = self.batcher.predict(
                        data, self.deadline.remaining(started), arrival
                    )
                except TimeoutError:
                    raise self.deadline.exceeded() from None
            else:
                arrival.arrived()
                data = as_frame(data)
                predictions = self.deadline.run(
                    lambda: predict(
                        served.model, data, model_input.params, self.config.include_traceback
                    ),
                    started,
                )
        return _encode(predictions, model_input)

    def _batching(self) -> bool:
        """Whether requests are batched: always, never, or (auto) for row-wise models."""
        batching = self.config.batching
        return batching == "on" or (batching == "auto" and self.served.row_wise)


def _encode(predictions: Any, model_input: ModelInput) -> bytes:
    try:
        return encode_predictions(predictions, unwrapped=model_input.unwrapped)
    except (TypeError, ValueError) as exc:
        raise PredictionFailed(f"the model's output cannot be encoded as JSON: {exc}") from exc


class _Deadline:
    """Waits for each request's prediction no longer than the timeout, counted from the
    request's start, so that a slow one is answered 504 in time.

    Python cannot stop a thread: work that outlives its deadline runs on in the background,
    as it does in MLflow's own server. The pool is made lazily, after the worker has forked.
    """

    def __init__(self, timeout: float, threads: int) -> None:
        self._timeout = timeout
        self._threads = threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, work: Any, started: float) -> Any:
        future = self._executor().submit(work)
        try:
            return future.result(timeout=self.remaining(started))
        except concurrent.futures.TimeoutError:
            raise self.exceeded() from None

    def check(self, started: float) -> None:
        """504 now if the request's time is already up."""
        if self.remaining(started) <= 0:
            raise self.exceeded()

    def remaining(self, started: float) -> float:
        return max(0.0, self._timeout - (time.monotonic() - started))

    def exceeded(self) -> RequestTimeout:
        log.error("a request outlived the %ss timeout; it goes on in the background", self._timeout)
        return RequestTimeout(
            f"the request took longer than the {self._timeout:g}s timeout (MLIMG_TIMEOUT)"
        )

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self._threads, thread_name_prefix="predict"
                    )
        return self._pool


def error_body(
    status: int, message: str, config: ServerConfig, cause: BaseException | None = None
) -> bytes:
    body = {"error_code": error_code(status), "message": message}
    if config.include_traceback and cause is not None:
        body["stack_trace"] = "".join(traceback.format_exception(cause))
    return json.dumps(body).encode()
