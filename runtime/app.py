"""The Flask application: four endpoints over one model.

HTTP -> codecs.decode_request -> model.predict -> codecs.encode_predictions -> HTTP, under a
deadline. Every failure is answered as {"error_code", "message"} with its status; no framework
error page and no stack trace (unless MLIMG_INCLUDE_TRACEBACK is set) reaches a client.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import traceback
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from mlimg_runtime import __version__
from mlimg_runtime.codecs import NO_SIGNATURE, Signature, decode_request, encode_predictions
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

    def set(self, model: Any, mlflow_version: str | None) -> None:
        self.signature = Signature.of(model)
        self.mlflow_version = mlflow_version
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
        content_type = request.headers.get("Content-Type")
        body = request.get_data(cache=False)
        answer = deadline.run(lambda: _answer(served, content_type, body))
        return Response(answer, status=200, mimetype=_JSON)

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


def _answer(served: ServedModel, content_type: str | None, body: bytes) -> bytes:
    model_input = decode_request(content_type, body, served.signature)
    predictions = predict(served.model, model_input.data, model_input.params)
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
    """Runs each request's work in a thread pool so that it can be answered 504 in time.

    Python cannot stop a thread: work that outlives its deadline runs on in the background,
    as it does in MLflow's own server. The pool is made lazily, after the worker has forked.
    """

    def __init__(self, timeout: float, threads: int) -> None:
        self._timeout = timeout
        self._threads = threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, work: Any) -> Any:
        future = self._executor().submit(work)
        try:
            return future.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError:
            log.error(
                "a request outlived the %ss timeout; it goes on in the background", self._timeout
            )
            raise RequestTimeout(
                f"the request took longer than the {self._timeout:g}s timeout (MLIMG_TIMEOUT)"
            ) from None

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
