"""The errors a request can end in, each with its HTTP status and MLflow-compatible code."""

from __future__ import annotations


class ScoringError(Exception):
    status = 500
    error_code = "INTERNAL_ERROR"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": self.message}


class BadRequest(ScoringError):
    status = 400
    error_code = "BAD_REQUEST"


class UnsupportedMediaType(ScoringError):
    status = 415
    error_code = "BAD_REQUEST"


class PredictionFailed(ScoringError):
    status = 500
    error_code = "INTERNAL_ERROR"
