"""The errors a request can end in, each with its HTTP status and MLflow-compatible code."""

from __future__ import annotations

# MLflow's error codes for the statuses the runtime answers (mlflow.exceptions).
ERROR_CODES = {
    400: "BAD_REQUEST",
    404: "ENDPOINT_NOT_FOUND",
    405: "BAD_REQUEST",
    413: "BAD_REQUEST",
    415: "BAD_REQUEST",
    500: "INTERNAL_ERROR",
    501: "NOT_IMPLEMENTED",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_code(status: int) -> str:
    return ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")


class ScoringError(Exception):
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def error_code(self) -> str:
        return error_code(self.status)


class BadRequest(ScoringError):
    status = 400


class NotFound(ScoringError):
    status = 404


class UnsupportedMediaType(ScoringError):
    status = 415


class PayloadTooLarge(ScoringError):
    status = 413


class PredictionFailed(ScoringError):
    status = 500


class ModelLoading(ScoringError):
    status = 503


class RequestTimeout(ScoringError):
    status = 504


class NotImplementedHere(ScoringError):
    """What this server does not do (a stream from the MLServer engine)."""

    status = 501
