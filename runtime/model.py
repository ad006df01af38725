"""The model, apart from any transport: loading it, what answering needs from it (its
signature and flavor traits), and prediction with its failures sorted into the client's (400)
and the model's (500).

The HTTP server (`app`), batch inference (`batch`) and any other serving engine use this
module; it imports neither flask nor gunicorn.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from mlimg_runtime.contract import PYFUNC_KIND, ModelKind, model_kind, streams
from mlimg_runtime.errors import BadRequest, PredictionFailed, ScoringError

log = logging.getLogger("mlimg_runtime")


def load_model(path: str) -> tuple[Any, str | None]:
    """Load the model through mlflow.pyfunc; returns it with the mlflow version that loaded it."""
    import mlflow
    import mlflow.pyfunc

    _trace_only_where_told()
    return mlflow.pyfunc.load_model(path), getattr(mlflow, "__version__", None)


# Where MLflow sends the traces a model records: a tracking server, or an OTLP collector.
TRACE_DESTINATIONS = (
    "MLFLOW_TRACKING_URI",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def _trace_only_where_told() -> None:
    """Turn MLflow's tracing off unless the environment names where traces go.

    Agents and chat models trace every prediction (ResponsesAgent's are traced whether their
    author asked or not); with no tracking URI set, MLflow writes them to a SQLite database in
    the working directory, which an image does not have (mlflow-skinny has no SQLAlchemy) and
    a read-only root cannot hold.
    """
    if any(os.environ.get(name) for name in TRACE_DESTINATIONS):
        return
    try:
        import mlflow.tracing
    except ImportError:  # an mlflow from before tracing
        return
    disable = getattr(mlflow.tracing, "disable", None)
    if disable is not None:
        disable()
        log.info(
            "MLflow tracing is off: set MLFLOW_TRACKING_URI (and MLFLOW_EXPERIMENT_NAME or "
            "MLFLOW_EXPERIMENT_ID) to send the model's traces to a tracking server"
        )


# Modules whose package is named otherwise, among those models most often import.
_PACKAGE_OF_MODULE = {
    "sklearn": "scikit-learn",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "google": "protobuf",
    "bs4": "beautifulsoup4",
    "skimage": "scikit-image",
}


def load_failure_hint(exc: BaseException) -> str | None:
    """What to do about a model that failed to load, when the failure says: a module its
    environment lacks (a package left out of an explicit pip_requirements, most often)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    module = exc.name.split(".")[0]
    package = _PACKAGE_OF_MODULE.get(module, module)
    return (
        f"hint: the module {module} is missing from the model's environment: its requirements "
        f"(requirements.txt, python_env.yaml, conda.yaml) lack the package that provides it, "
        f'probably {package}; log the model again with extra_pip_requirements=["{package}"]'
        f" (or with {package} in its pip_requirements)"
    )


@dataclass(frozen=True)
class Signature:
    """What decoding needs from the model's signature, read once when the model loads."""

    input_schema: Any = None  # mlflow.types.Schema or None
    param_names: frozenset[str] = frozenset()
    input_names: frozenset[str] = frozenset()  # of named inputs (a chat model's fields)
    column_types: dict[str, str] = field(default_factory=dict)  # named DataType columns
    tensor_dtype: Any = None  # numpy dtype of a single unnamed tensor input

    @property
    def text_tensor(self) -> bool:
        """An unnamed tensor of anything but numbers: a CSV header cannot be told apart."""
        return self.tensor_dtype is not None and self.tensor_dtype.kind not in "biuf"

    @classmethod
    def of(cls, model: Any) -> Signature:
        metadata = getattr(model, "metadata", None)
        if metadata is None:
            return cls()
        schema = metadata.get_input_schema()
        params = metadata.get_params_schema() if hasattr(metadata, "get_params_schema") else None
        column_types: dict[str, str] = {}
        if schema is not None and schema.has_input_names() and not schema.is_tensor_spec():
            for spec in schema.inputs:
                kind = getattr(spec.type, "name", None)  # DataType members have a name
                if isinstance(kind, str):
                    column_types[spec.name] = kind
        names = frozenset(p.name for p in params.params) if params is not None else frozenset()
        inputs = frozenset()
        if schema is not None and schema.has_input_names():
            inputs = frozenset(str(name) for name in schema.input_names())
        tensor_dtype = None
        if schema is not None and schema.is_tensor_spec() and len(schema.inputs) == 1:
            tensor_dtype = getattr(schema.inputs[0], "type", None)  # a numpy dtype
        return cls(schema, names, inputs, column_types, tensor_dtype)


NO_SIGNATURE = Signature()


# Flavors whose predict is a function of each row alone: batching cannot change an answer.
ROW_WISE_FLAVORS = frozenset({"sklearn", "xgboost", "lightgbm", "catboost"})


def row_wise(flavors: Any) -> bool:
    """Whether a model with these MLmodel flavors predicts each row independently."""
    return bool(ROW_WISE_FLAVORS & set(flavors or ()))


class ServedModel:
    """The model being served, and what answering needs from it; empty while it loads."""

    def __init__(self) -> None:
        self.model: Any = None
        self.signature: Signature = NO_SIGNATURE
        self.mlflow_version: str | None = None
        self.row_wise = False  # each row's prediction depends on that row alone
        self.kind: ModelKind = PYFUNC_KIND  # a chat model, an agent, or any other pyfunc
        self.streams = False  # it has predict_stream
        self.loaded_at = 0  # when it loaded, in seconds since the epoch

    def set(self, model: Any, mlflow_version: str | None) -> None:
        self.signature = Signature.of(model)
        self.mlflow_version = mlflow_version
        metadata = getattr(model, "metadata", None)
        flavors = getattr(metadata, "flavors", None)
        self.row_wise = row_wise(flavors)
        self.kind = model_kind(getattr(metadata, "metadata", None))
        self.streams = streams(flavors) and hasattr(model, "predict_stream")
        self.loaded_at = int(time.time())
        self.model = model  # last: a request seeing the model sees its signature too

    @property
    def loaded(self) -> bool:
        return self.model is not None


# Exceptions a model raises on input that passed the schema, taken as the client's input being
# wrong (400): scikit-learn, numpy and pandas raise ValueError for NaN, a wrong shape or an
# empty input, TypeError for a value of the wrong type. Anything else is the model's (500).
CLIENT_ERRORS = (ValueError, TypeError)


def predict(model: Any, data: Any, params: dict[str, Any], tracebacks: bool = False) -> Any:
    """model.predict, with its failures sorted: bad input is the client's, the rest the model's.

    Each failure is one log line; with `tracebacks` (MLIMG_INCLUDE_TRACEBACK), its traceback.
    """
    try:
        return model.predict(data, params=params or None)
    except Exception as exc:
        raise sorted_failure(exc, tracebacks)  # noqa: B904 (its cause is set: see there)


def sorted_failure(exc: Exception, tracebacks: bool = False) -> ScoringError:
    """The error a prediction's (or a stream chunk's) exception is answered with: the
    client's (400) for input the model refused, the model's (500) for the rest; logged once.
    Its cause is `exc` (a 500's stack trace, with MLIMG_INCLUDE_TRACEBACK), except for
    mlflow's refusals of the input, whose trace says nothing a client needs."""
    from mlflow.exceptions import MlflowException

    error: ScoringError
    cause: Exception | None = exc
    if isinstance(exc, MlflowException):
        # mlflow raises these for input or params that do not fit the model's signature.
        status = exc.get_http_status_code() if hasattr(exc, "get_http_status_code") else 400
        if status >= 500:
            log.error("the model failed: %s", _short(exc.message), exc_info=tracebacks)
            error = PredictionFailed(_short(exc.message))
        else:
            error, cause = BadRequest(_short(exc.message)), None
    elif isinstance(exc, CLIENT_ERRORS):
        message = f"the model refused the input: {type(exc).__name__}: {_short(str(exc))}"
        log.info("%s", message, exc_info=tracebacks)
        error = BadRequest(message)
    else:
        message = f"the model raised {type(exc).__name__}: {_short(str(exc))}"
        log.error("%s", message, exc_info=tracebacks)
        error = PredictionFailed(message)
    error.__cause__ = cause
    error.__suppress_context__ = True
    return error


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
