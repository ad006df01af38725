"""The Flask application: four endpoints over one model.

HTTP -> codecs.decode_request -> batching.Batcher (row-wise models) or model.predict ->
codecs.encode_predictions -> HTTP, under a deadline. Every failure is answered as
{"error_code", "message"} with its status; no framework error page and no stack trace (unless
MLIMG_INCLUDE_TRACEBACK is set) reaches a client.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
import traceback
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from mlimg_runtime import __version__
from mlimg_runtime.batching import Batcher, row_wise
from mlimg_runtime.codecs import (
    NO_SIGNATURE,
    ModelInput,
    Signature,
    decode_request,
    encode_predictions,
)
from mlimg_runtime.config import ServerConfig
from mlimg_runtime.errors import (
    BadRequest,
    ModelLoading,
    PredictionFailed,
    RequestTimeout,
    ScoringError,
    error_code,
)

log = logging.getLogger("mlimg_runtime")
_JSON = "application/json"


class ServedModel:
    """The model being served, and what answering needs from it; empty while it loads."""

    def __init__(self) -> None:
        self.model: Any = None
        self.signature: Signature = NO_SIGNATURE
        self.mlflow_version: str | None = None
        self.row_wise = False  # each row's prediction depends on that row alone

    def set(self, model: Any, mlflow_version: str | None) -> None:
        self.signature = Signature.of(model)
        self.mlflow_version = mlflow_version
        metadata = getattr(model, "metadata", None)
        self.row_wise = row_wise(getattr(metadata, "flavors", None))
        self.model = model  # last: a request seeing the model sees its signature too

    @property
    def loaded(self) -> bool:
        return self.model is not None


def create_app(served: ServedModel, config: ServerConfig | None = None) -> Flask:
    """A Flask app answering the MLflow scoring protocol for `served`."""
    config = config or ServerConfig()
    app = Flask("mlimg_runtime")
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    deadline = _Deadline(config.timeout, config.threads)
    batcher = Batcher(
        lambda frame: predict(served.model, frame, {}),
        max_rows=config.max_batch_rows,
        max_wait=config.batch_wait_ms / 1000,
    )

    def batches(model_input: ModelInput) -> bool:
        wanted = config.batching == "on" or (config.batching == "auto" and served.row_wise)
        if not wanted or model_input.params or model_input.unwrapped:
            return False
        return batcher.accepts(model_input.data)

    @app.route("/ping", methods=["GET"])
    @app.route("/health", methods=["GET"])
    def ping() -> Response:
        if not served.loaded:
            raise ModelLoading("the model is still loading")
        return Response("\n", status=200, mimetype=_JSON)

    @app.route("/version", methods=["GET"])
    def version() -> Response:
        body = {"mlflow_version": served.mlflow_version, "mlimg_version": __version__}
        return _json_response(200, body)

    @app.route("/invocations", methods=["POST"])
    def invocations() -> Response:
        if not served.loaded:
            raise ModelLoading("the model is still loading; retry when /ping answers 200")
        started = time.monotonic()
        with batcher.arrival() as arrival:
            model_input = decode_request(
                request.headers.get("Content-Type"), request.get_data(cache=False), served.signature
            )
            if batches(model_input):
                try:
                    predictions = batcher.predict(
                        model_input.data, deadline.remaining(started), arrival
                    )
                except TimeoutError:
                    raise deadline.exceeded() from None
            else:
                arrival.arrived()
                predictions = deadline.run(
                    lambda: predict(served.model, model_input.data, model_input.params), started
                )
        return Response(_encode(predictions, model_input), status=200, mimetype=_JSON)

    @app.errorhandler(ScoringError)
    def scoring_error(error: ScoringError) -> Response:
        return _error_response(error.status, error.message, config, error.__cause__)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        return _error_response(status, _HTTP_MESSAGES.get(status, error.description), config)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        log.exception("unexpected error while answering %s", request.path)
        return _error_response(500, "internal error", config, error)

    return app


def _encode(predictions: Any, model_input: ModelInput) -> bytes:
    try:
        return encode_predictions(predictions, unwrapped=model_input.unwrapped)
    except (TypeError, ValueError) as exc:
        raise PredictionFailed(f"the model's output cannot be encoded as JSON: {exc}") from exc


def predict(model: Any, data: Any, params: dict[str, Any]) -> Any:
    """model.predict, with its failures sorted: bad input is the client's, the rest the model's."""
    from mlflow.exceptions import MlflowException

    try:
        return model.predict(data, params=params or None)
    except MlflowException as exc:
        # mlflow raises these for input or params that do not fit the model's signature.
        status = exc.get_http_status_code() if hasattr(exc, "get_http_status_code") else 400
        if status >= 500:
            raise PredictionFailed(_short(exc.message)) from exc
        raise BadRequest(_short(exc.message)) from None
    except Exception as exc:
        log.exception("the model raised while predicting")
        raise PredictionFailed(
            f"the model raised {type(exc).__name__}: {_short(str(exc))}"
        ) from exc


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


def _error_response(
    status: int, message: str, config: ServerConfig, cause: BaseException | None = None
) -> Response:
    body = {"error_code": error_code(status), "message": message}
    if config.include_traceback and cause is not None:
        body["stack_trace"] = "".join(traceback.format_exception(cause))
    return _json_response(status, body)


def _json_response(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status=status, mimetype=_JSON)


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
