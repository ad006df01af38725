"""The one place where a model URI becomes a local model directory.

Local paths and `file://` URIs are used where they are. Every other URI (`runs:/`, `models:/`
in all its forms, `mlflow-artifacts:/`, `s3://`, `gs://`, ...) is resolved and downloaded by
MLflow's own client, which honours MLFLOW_TRACKING_URI and the usual cloud credentials.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlimg.errors import InvalidModel, ModelNotFound

# A scheme of two or more letters: "C:\\model" on Windows is a path, not a URI.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
# An unreachable tracking server must fail in seconds, not after MLflow's default of 7 retries
# with exponential back-off; a user's own settings win.
_MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI, the local directory that holds its files, and where they came from."""

    uri: str
    path: Path
    # For a remote model, the artifact location that holds its files, as MLflow resolves the
    # URI (the image label mlimg.model.source): a URI that reads the same files whatever an
    # alias or a stage points at later. None for a local directory.
    source: str | None = None
    run_id: str | None = None
    registered_name: str | None = None
    registered_version: str | None = None
    model_id: str | None = None


def is_local(uri: str) -> bool:
    match = _SCHEME.match(uri)
    return not match or match.group(1).lower() == "file"


@contextmanager
def open_model(uri: str) -> Iterator[ResolvedModel]:
    """Resolve `uri`; a remote model is downloaded to a directory removed on exit."""
    if is_local(uri):
        yield resolve_model_uri(uri)
        return
    with tempfile.TemporaryDirectory(prefix="mlimg-model-") as tmp:
        yield resolve_model_uri(uri, Path(tmp))


def resolve_model_uri(uri: str, download_dir: Path | None = None) -> ResolvedModel:
    """Resolve a model URI to a local directory, or say what it names that does not exist."""
    if not uri or not uri.strip():
        raise ModelNotFound("no model given: pass -m PATH or -m URI")
    if not is_local(uri):
        if download_dir is None:
            raise ValueError("a remote model URI needs a download directory")
        return _download(uri, download_dir)
    if _SCHEME.match(uri):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ModelNotFound(f"{uri}: file:// URIs must name a local path (no host)")
        path = Path(unquote(parsed.path))
    else:
        path = Path(uri).expanduser()
    if not path.exists():
        raise ModelNotFound(f"no model at {path}: no such file or directory")
    if not path.is_dir():
        raise ModelNotFound(
            f"{path} is a file; pass the model's directory (the one holding MLmodel)"
        )
    return ResolvedModel(uri=uri, path=path.resolve())


def _download(uri: str, download_dir: Path) -> ResolvedModel:
    for name, value in _MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow-skinny is a dependency
        raise ModelNotFound(f"{uri}: resolving remote URIs needs mlflow-skinny") from None
    try:
        origin = _origin(uri)
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(download_dir))
    except MlflowException as exc:
        raise ModelNotFound(f"{uri}: {_mlflow_reason(exc)}") from None
    except Exception as exc:  # object stores raise their own (botocore, google.cloud, ...)
        reason = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        raise ModelNotFound(f"{uri}: the model's files could not be downloaded ({reason})") from exc
    path = Path(local)
    if not path.is_dir() or not (path / "MLmodel").is_file():
        raise InvalidModel(f"{uri} names artifacts without an MLmodel file: not an MLflow model")
    if origin.get("run_id") and uri.lower().startswith("runs:"):
        try:
            origin["source"] = _run_model_location(uri, path / "MLmodel")
        except MlflowException as exc:
            raise ModelNotFound(f"{uri}: {_mlflow_reason(exc)}") from None
    return ResolvedModel(uri=uri, path=path.resolve(), **origin)


def _run_model_location(uri: str, mlmodel: Path) -> str:
    """Where a runs:/ URI's files are in the artifact store: the logged model's location (an
    MLflow 3 model names its logged model in MLmodel), else the run's artifact directory."""
    import yaml
    from mlflow import MlflowClient
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    try:
        model_id = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("model_id")
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        model_id = None
    if model_id:
        return MlflowClient().get_logged_model(str(model_id)).artifact_location
    return RunsArtifactRepository.get_underlying_uri(uri)


def _origin(uri: str) -> dict[str, Any]:
    """Where a runs:/ or models:/ URI points: run id, registered name and version, model id."""
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "runs":
        run_id = urlparse(uri).path.lstrip("/").split("/", 1)[0] or None
        return {"run_id": run_id}  # its source is known once its MLmodel is read
    if scheme != "models":
        return {"source": uri}
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = MlflowClient()
    found = get_model_name_and_version(client, uri)
    if len(found) == 1:  # models:/m-<id>: an MLflow 3 logged model
        logged = client.get_logged_model(found[0])
        return {
            "model_id": logged.model_id,
            "run_id": logged.source_run_id,
            "source": logged.artifact_location,
        }
    name, version = found
    model_version = client.get_model_version(name, version)
    return {
        "registered_name": name,
        "registered_version": str(model_version.version),
        "run_id": model_version.run_id,
        "model_id": getattr(model_version, "model_id", None),
        # The version's own source may be another URI (models:/m-ID in MLflow 3).
        "source": client.get_model_version_download_uri(name, version),
    }


def _mlflow_reason(exc: Any) -> str:
    message = str(getattr(exc, "message", exc)).strip()
    lowered = message.lower()
    if "max retries exceeded" in lowered or ("connection" in lowered and "refused" in lowered):
        tracking = os.environ.get("MLFLOW_TRACKING_URI", "the default tracking URI")
        return f"the tracking server ({tracking}) did not answer"
    return message.splitlines()[0][:300] if message else type(exc).__name__
