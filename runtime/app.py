"""The Flask application: four endpoints over one loaded model.

HTTP -> decode (codecs) -> model.predict -> encode (codecs) -> HTTP. Every failure is answered
as {"error_code", "message"} with its status; no framework error page reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from mlimg_runtime import __version__
from mlimg_runtime.codecs import decode_request, encode_predictions
from mlimg_runtime.errors import BadRequest, PredictionFailed, ScoringError

log = logging.getLogger("mlimg_runtime")
_JSON = "application/json"


def create_app(model: Any, mlflow_version: str | None = None) -> Flask:
    """A Flask app serving `model` (anything with mlflow.pyfunc's `predict(data, params=...)`)."""
    app = Flask("mlimg_runtime")

    @app.route("/ping", methods=["GET"])
    @app.route("/health", methods=["GET"])
    def ping() -> Response:
        return Response("\n", status=200, mimetype=_JSON)

    @app.route("/version", methods=["GET"])
    def version() -> Response:
        return _json_response(200, {"mlflow_version": mlflow_version, "mlimg_version": __version__})

    @app.route("/invocations", methods=["POST"])
    def invocations() -> Response:
        model_input = decode_request(request.content_type, request.get_data(cache=False))
        predictions = _predict(model, model_input.data, model_input.params)
        return Response(encode_predictions(predictions), status=200, mimetype=_JSON)

    @app.errorhandler(ScoringError)
    def scoring_error(error: ScoringError) -> Response:
        return _json_response(error.status, error.to_json())

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        code = "BAD_REQUEST" if (error.code or 500) < 500 else "INTERNAL_ERROR"
        return _json_response(error.code or 500, {"error_code": code, "message": error.description})

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        log.exception("unexpected error while answering %s", request.path)
        return _json_response(500, {"error_code": "INTERNAL_ERROR", "message": "internal error"})

    return app


def _predict(model: Any, data: Any, params: dict[str, Any]) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        if params:
            return model.predict(data, params=params)
        return model.predict(data)
    except MlflowException as exc:
        # Raised by mlflow's schema enforcement: the input does not fit the signature.
        raise BadRequest(_short(exc.message)) from None
    except Exception as exc:
        log.exception("the model raised while predicting")
        raise PredictionFailed(
            f"the model raised {type(exc).__name__}: {_short(str(exc))}"
        ) from None


def _json_response(status: int, body: dict[str, Any]) -> Response:
    import json

    return Response(json.dumps(body), status=status, mimetype=_JSON)


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
