"""The WSGI application: four endpoints over one model.

POST /invocations is plain WSGI (the hot path); /ping, /health, /version and every other path
are a small Flask app. HTTP -> codecs.decode_request -> batching.Batcher (row-wise models) or
model.predict -> codecs.encode_predictions -> HTTP, under a deadline. Every failure is answered as
{"error_code", "message"} with its status; no framework error page and no stack trace (unless
MLIMG_INCLUDE_TRACEBACK is set) reaches a client.
"""

from __future__ import annotations

import concurrent.futures
import http
import json
import logging
import threading
import time
import traceback
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from mlimg_runtime import __version__
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
    BadRequest,
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
_JSON = "application/json"


def create_app(served: ServedModel, config: ServerConfig | None = None) -> ScoringApp:
    """The WSGI application answering the MLflow scoring protocol for `served`."""
    config = config or ServerConfig()
    return ScoringApp(_Scorer(served, config), _control_app(served, config))


class ScoringApp:
    """`/invocations` answered as plain WSGI; every other path by a small Flask app.

    Scoring is the one path that is hot: a Flask request context and its request and response
    objects cost as much as decoding a 1-row request does (ARCHITECTURE.md, "Measurements").
    The rest (/ping, /health, /version, unknown paths) is rare and keeps Flask.
    """

    def __init__(self, scorer: _Scorer, control: Flask) -> None:
        self.scorer = scorer
        self.control = control

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") != "/invocations":
            return self.control(environ, start_response)
        if environ.get("REQUEST_METHOD") == "POST":
            status, body = self.scorer.answer(environ)
        else:
            status, body = 405, self.scorer.error_body(405, _HTTP_MESSAGES[405])
        headers = [("Content-Type", _JSON), ("Content-Length", str(len(body)))]
        if status == 405:
            headers.append(("Allow", "POST"))
        start_response(_STATUS_LINES.get(status) or f"{status} Error", headers)
        return [body]


class _Scorer:
    """Reads, decodes, predicts (batched for row-wise models) and encodes one request."""

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

    def answer(self, environ: dict[str, Any]) -> tuple[int, bytes]:
        """The status and JSON body for a POST /invocations; never raises."""
        try:
            return 200, self._predictions(environ)
        except ScoringError as error:
            return error.status, self.error_body(error.status, error.message, error.__cause__)
        except Exception as error:
            log.exception("unexpected error while answering /invocations")
            return 500, self.error_body(500, "internal error", error)

    def error_body(self, status: int, message: str, cause: BaseException | None = None) -> bytes:
        return _error_body(status, message, self.config, cause)

    def _predictions(self, environ: dict[str, Any]) -> bytes:
        served = self.served
        if not served.loaded:
            raise ModelLoading("the model is still loading; retry when /ping answers 200")
        # The deadline counts from the request's arrival (the front end's time), so that the
        # wait for a thread and the decoding are inside it, not only the prediction.
        started = environ.get("mlimg.arrived") or time.monotonic()
        body = _read_body(environ, self.config.max_request_bytes)
        cost = decoded_size(environ.get("CONTENT_TYPE"), body)
        if cost > self.config.max_decoded_bytes:
            raise PayloadTooLarge(
                f"decoding this request would take about {cost / 2**20:,.0f} MiB, more than "
                f"the {self.config.max_decoded_bytes / 2**20:,.0f} MiB one request may use "
                "(MLIMG_MAX_DECODED_BYTES): send fewer rows per request"
            )
        try:
            with self.memory.reserve(cost, self.deadline.remaining(started)):
                return self._predict(environ, body, started)
        except TimeoutError:  # no room for a large input before the deadline
            raise self.deadline.exceeded() from None

    def _predict(self, environ: dict[str, Any], body: bytes, started: float) -> bytes:
        served = self.served
        batching = self._batching()
        with self.batcher.arrival() as arrival:
            self.deadline.check(started)
            model_input = decode_request(
                environ.get("CONTENT_TYPE"), body, served.signature, rows=batching
            )
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


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body, at most `limit` bytes (413 beyond), with or without Content-Length."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if not length:  # chunked: read one byte past the limit to tell whether it is over
        body = stream.read(limit + 1)
    else:
        try:
            size = int(length)
        except ValueError:
            raise BadRequest(f"Content-Length is not a number: {length[:40]!r}") from None
        if size > limit:
            raise PayloadTooLarge(_HTTP_MESSAGES[413])
        body = stream.read(size) if size > 0 else b""
    if len(body) > limit:
        raise PayloadTooLarge(_HTTP_MESSAGES[413])
    return body


def _control_app(served: ServedModel, config: ServerConfig) -> Flask:
    """/ping, /health, /version, and JSON errors for every path the runtime does not serve."""
    app = Flask("mlimg_runtime")

    @app.route("/ping", methods=["GET"])
    @app.route("/health", methods=["GET"])
    def ping() -> Response:
        if not served.loaded:
            raise ModelLoading("the model is still loading")
        return Response("\n", status=200, mimetype=_JSON)

    @app.route("/version", methods=["GET"])
    def version() -> Response:
        body = {"mlflow_version": served.mlflow_version, "mlimg_version": __version__}
        return Response(json.dumps(body), status=200, mimetype=_JSON)

    def error_response(status: int, message: str, cause: BaseException | None = None):
        return Response(_error_body(status, message, config, cause), status=status, mimetype=_JSON)

    @app.errorhandler(ScoringError)
    def scoring_error(error: ScoringError) -> Response:
        return error_response(error.status, error.message, error.__cause__)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        return error_response(status, _HTTP_MESSAGES.get(status, error.description))

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        log.exception("unexpected error while answering %s", request.path)
        return error_response(500, "internal error", error)

    return app


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


_HTTP_MESSAGES = {
    404: "no such endpoint: use /invocations, /ping, /health or /version",
    405: "method not allowed: /invocations takes POST; /ping, /health and /version take GET",
    413: "the request body is larger than the limit (MLIMG_MAX_REQUEST_BYTES)",
}


def _error_body(
    status: int, message: str, config: ServerConfig, cause: BaseException | None = None
) -> bytes:
    body = {"error_code": error_code(status), "message": message}
    if config.include_traceback and cause is not None:
        body["stack_trace"] = "".join(traceback.format_exception(cause))
    return json.dumps(body).encode()


_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in http.HTTPStatus}
