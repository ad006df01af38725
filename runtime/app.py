"""The WSGI application of mlimg's own server: the contract's endpoints over one model.

POST /invocations and the OpenAI-compatible routes are plain WSGI (the hot path): the body is
read under its limit and answered by `scoring.Scorer`, whole or as a stream of events (a body
with no Content-Length, which the front end sends chunk by chunk). /ping, /health, /version,
/v1/models and every other path are a small Flask app.
Every failure is answered as {"error_code", "message"} with its status; no framework error
page and no stack trace (unless MLIMG_INCLUDE_TRACEBACK is set) reaches a client.
"""

from __future__ import annotations

import http
import json
import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from mlimg_runtime import __version__, openai_compat
from mlimg_runtime.config import ServerConfig
from mlimg_runtime.contract import MODELS, OPENAI_ROUTES
from mlimg_runtime.errors import (
    BadRequest,
    ModelLoading,
    PayloadTooLarge,
    ScoringError,
)
from mlimg_runtime.model import ServedModel
from mlimg_runtime.scoring import BODY_TOO_LARGE, INVOCATIONS, Scorer, error_body
from mlimg_runtime.streaming import CONTENT_TYPE as EVENT_STREAM
from mlimg_runtime.streaming import Stream

log = logging.getLogger("mlimg_runtime")
_JSON = "application/json"
SCORED_ROUTES = (INVOCATIONS, *OPENAI_ROUTES)  # POSTed, answered by the scorer
# A stream's head: never cached, nor held back by a proxy (nginx reads X-Accel-Buffering).
_STREAM_HEADERS = [
    ("Content-Type", EVENT_STREAM),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
]


def create_app(served: ServedModel, config: ServerConfig | None = None) -> ScoringApp:
    """The WSGI application answering the MLflow scoring protocol for `served`."""
    config = config or ServerConfig()
    return ScoringApp(Scorer(served, config), _control_app(served, config))


class ScoringApp:
    """`/invocations` and OpenAI's routes answered as plain WSGI; every other path by a small
    Flask app.

    Scoring is the one path that is hot: a Flask request context and its request and response
    objects cost as much as decoding a 1-row request does (ARCHITECTURE.md, "Measurements").
    The rest (/ping, /health, /version, unknown paths) is rare and keeps Flask.
    """

    def __init__(self, scorer: Scorer, control: Flask) -> None:
        self.scorer = scorer
        self.control = control

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO")
        if path not in SCORED_ROUTES:
            return self.control(environ, start_response)
        if environ.get("REQUEST_METHOD") == "POST":
            answer = self._answer(environ, path)
        else:
            message = _HTTP_MESSAGES[405] if path == INVOCATIONS else _NOT_POST.format(path)
            answer = 405, self.scorer.error_body(405, message)
        if isinstance(answer, Stream):
            start_response("200 OK", list(_STREAM_HEADERS))
            return answer
        status, body = answer
        headers = [("Content-Type", _JSON), ("Content-Length", str(len(body)))]
        if status == 405:
            headers.append(("Allow", "POST"))
        start_response(_STATUS_LINES.get(status) or f"{status} Error", headers)
        return [body]

    def _answer(self, environ: dict[str, Any], path: str) -> tuple[int, bytes] | Stream:
        try:
            body = _read_body(environ, self.scorer.config.max_request_bytes)
        except ScoringError as error:
            return error.status, self.scorer.error_body(error.status, error.message)
        trace = environ.get("HTTP_X_MLFLOW_RETURN_TRACE_ID", "").strip().lower() == "true"
        return self.scorer.answer(
            environ.get("CONTENT_TYPE"), body, environ.get("mlimg.arrived"), path, trace
        )


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
            raise PayloadTooLarge(BODY_TOO_LARGE)
        body = stream.read(size) if size > 0 else b""
    if len(body) > limit:
        raise PayloadTooLarge(BODY_TOO_LARGE)
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

    @app.route(MODELS, methods=["GET"])
    def models() -> Response:
        if not served.loaded:
            raise ModelLoading("the model is still loading")
        body = openai_compat.model_list(config.model_name, served.loaded_at)
        return Response(json.dumps(body), status=200, mimetype=_JSON)

    def error_response(status: int, message: str, cause: BaseException | None = None):
        return Response(error_body(status, message, config, cause), status=status, mimetype=_JSON)

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


_HTTP_MESSAGES = {
    404: "no such endpoint: use /invocations, /ping, /health, /version or the routes of "
    f"OpenAI's API the model's kind has ({', '.join((MODELS, *OPENAI_ROUTES))})",
    405: "method not allowed: /invocations takes POST; /ping, /health, /version and /v1/models "
    "take GET",
    413: BODY_TOO_LARGE,
}

_NOT_POST = "method not allowed: {} takes POST"


_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in http.HTTPStatus}
