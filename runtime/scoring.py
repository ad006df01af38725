"""Answering /invocations and the OpenAI-compatible routes, apart from any HTTP server: a
body and its content type in, a status and a JSON body (or a stream of events) out.

    body -> codecs.decode_request -> batching.Batcher (row-wise models) or model.predict
         -> codecs.encode_predictions
    body with "stream": true -> model.predict_stream -> streaming.Stream (its first chunk here)

under a deadline counted from the request's arrival, and a budget for what decoding may take.
Every failure is answered as {"error_code", "message"} with its status; no stack trace unless
MLIMG_INCLUDE_TRACEBACK is set. mlimg's own server (`app`) and the MLServer engine
(`mlserver`) both answer through it; it imports neither flask nor gunicorn.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import json
import logging
import threading
import time
import traceback
from typing import Any

from mlimg_runtime import openai_compat
from mlimg_runtime.batching import Batcher
from mlimg_runtime.codecs import (
    JSON,
    ModelInput,
    as_frame,
    decode_payload,
    decode_request,
    decoded_size,
    encode_predictions,
    parse_content_type,
)
from mlimg_runtime.config import ServerConfig
from mlimg_runtime.errors import (
    BadRequest,
    ModelLoading,
    NotFound,
    NotImplementedHere,
    PayloadTooLarge,
    PredictionFailed,
    RequestTimeout,
    ScoringError,
    UnsupportedMediaType,
    error_code,
)
from mlimg_runtime.memory import MemoryGate
from mlimg_runtime.model import ServedModel, predict, sorted_failure
from mlimg_runtime.streaming import Stream, close_chunks, first_chunk

log = logging.getLogger("mlimg_runtime")
BODY_TOO_LARGE = "the request body is larger than the limit (MLIMG_MAX_REQUEST_BYTES)"
INVOCATIONS = "/invocations"


class Scorer:
    """Decodes, predicts (batched for row-wise models) and encodes one request to
    /invocations or an OpenAI-compatible route; streams it when asked and the model can."""

    def __init__(self, served: ServedModel, config: ServerConfig, streams: bool = True) -> None:
        self.served = served
        self.config = config
        self.streams = streams  # whether the server streams (the MLServer engine does not)
        self.deadline = _Deadline(config.timeout, config.threads)
        self.memory = MemoryGate(config.max_decoded_bytes)
        self.batcher = Batcher(
            lambda frame: predict(served.model, frame, {}, config.include_traceback),
            max_rows=config.max_batch_rows,
            max_wait=config.batch_wait_ms / 1000,
        )

    def answer(
        self,
        content_type: str | None,
        body: bytes,
        arrived: float | None = None,
        route: str = INVOCATIONS,
        trace: bool = False,
    ) -> tuple[int, bytes] | Stream:
        """The status and JSON body for a POST of `body` to `route`, which arrived whole at
        `arrived` (time.monotonic(); now if None), or the stream of events it asked for;
        never raises. With `trace`, the id of the trace the model recorded is returned too
        (`x-mlflow-return-trace-id`)."""
        try:
            return self._answer(content_type, body, arrived or time.monotonic(), route, trace)
        except ScoringError as error:
            return error.status, self.error_body(error.status, error.message, error.__cause__)
        except Exception as error:
            log.exception("unexpected error while answering %s", route)
            return 500, self.error_body(500, "internal error", error)

    def error_body(self, status: int, message: str, cause: BaseException | None = None) -> bytes:
        return error_body(status, message, self.config, cause)

    def _answer(
        self, content_type: str | None, body: bytes, started: float, route: str, trace: bool
    ) -> tuple[int, bytes] | Stream:
        if not self.served.loaded:
            raise ModelLoading("the model is still loading; retry when /ping answers 200")
        if route != INVOCATIONS:
            unanswered = openai_compat.unanswered(self.served.kind, route)
            if unanswered:
                raise NotFound(unanswered)
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
                return self._predict(content_type, body, started, route, trace)
        except TimeoutError:  # no room for a large input before the deadline
            raise self.deadline.exceeded() from None

    def _predict(
        self, content_type: str | None, body: bytes, started: float, route: str, trace: bool
    ) -> tuple[int, bytes] | Stream:
        served = self.served
        batching = route == INVOCATIONS and self._batching()
        events = openai_compat.events(served.kind, route, self.config.model_name)
        with self.batcher.arrival() as arrival:
            self.deadline.check(started)
            model_input = self._decode(content_type, body, route, batching)
            self.deadline.check(started)
            if model_input.stream:
                arrival.arrived()
                return self._stream(model_input, started, events, trace)
            data = model_input.data
            trace_id = None
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
                # A context of its own: the trace the model records is this request's alone.
                context = contextvars.Context()
                predictions = self.deadline.run(
                    lambda: context.run(
                        predict,
                        served.model,
                        data,
                        model_input.params,
                        self.config.include_traceback,
                    ),
                    started,
                )
                if trace:
                    trace_id = context.run(last_trace_id)
        return 200, _encode(events.whole(predictions), model_input, trace_id)

    def _decode(
        self, content_type: str | None, body: bytes, route: str, batching: bool
    ) -> ModelInput:
        if route == INVOCATIONS:
            model_input = decode_request(content_type, body, self.served.signature, rows=batching)
        else:  # OpenAI's routes take JSON objects only
            if parse_content_type(content_type or JSON) != JSON:
                raise UnsupportedMediaType(f"{route} takes application/json")
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
            payload = openai_compat.model_payload(self.served.kind, payload, self.served.signature)
            model_input = decode_payload(payload, self.served.signature)
        if model_input.stream and not self.streams:
            raise NotImplementedHere(
                "this server does not stream (the MLServer engine); build the image with "
                "--engine mlimg (the default) to stream"
            )
        if model_input.stream and not self.served.streams:
            raise BadRequest(
                f'"stream": true, but this model (a {self.served.kind.name}) cannot stream: it '
                "has no predict_stream; send the request without it"
            )
        return model_input

    def _stream(self, model_input: ModelInput, started: float, events: Any, trace: bool) -> Stream:
        """The stream of `model_input`'s chunks, once the first is there (before the deadline;
        a failure meanwhile is answered as any other request's)."""
        context = contextvars.Context()  # the stream's own, whichever thread advances it
        future = self.deadline.submit(
            lambda: context.run(
                first_chunk, self.served.model, model_input.data, model_input.params
            )
        )
        try:
            chunks, first = future.result(timeout=self.deadline.remaining(started))
        except concurrent.futures.TimeoutError:
            # The chunk is still being computed: the generator closes once it is out.
            future.add_done_callback(
                lambda done: done.exception() or close_chunks(context, done.result()[0])
            )
            raise self.deadline.exceeded() from None
        except Exception as exc:
            raise sorted_failure(exc, self.config.include_traceback)  # noqa: B904 (cause set)
        return Stream(
            chunks,
            context,
            first,
            events,
            trace_id=last_trace_id if trace else None,
            tracebacks=self.config.include_traceback,
        )

    def _batching(self) -> bool:
        """Whether requests are batched: always, never, or (auto) for row-wise models."""
        batching = self.config.batching
        return batching == "on" or (batching == "auto" and self.served.row_wise)


def last_trace_id() -> str | None:
    """The id of the trace the model recorded in this context (None: it recorded none)."""
    try:
        import mlflow
    except ImportError:
        return None
    getter = getattr(mlflow, "get_last_active_trace_id", None)
    return getter(thread_local=True) if getter is not None else None


def _encode(predictions: Any, model_input: ModelInput, trace_id: str | None = None) -> bytes:
    if trace_id and model_input.unwrapped and isinstance(predictions, dict):
        # Where AgentServer puts it: the answer's metadata.
        metadata = predictions.get("metadata")
        predictions = {**predictions, "metadata": {**(metadata or {}), "trace_id": trace_id}}
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
        future = self.submit(work)
        try:
            return future.result(timeout=self.remaining(started))
        except concurrent.futures.TimeoutError:
            raise self.exceeded() from None

    def submit(self, work: Any) -> concurrent.futures.Future:
        return self._executor().submit(work)

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
