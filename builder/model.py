"""Reading an MLflow model directory into a `LocalModel`: what mlimg needs to know to serve it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlimg.errors import InvalidModel
from mlimg.requirements import (
    ModelRequirement,
    parse_requirements,
    read_requirements_file,
)
from mlimg.uris import ResolvedModel

PYFUNC_FLAVOR = "python_function"
_PYTHON_VERSION = re.compile(r"^3\.\d+(\.\d+)?$")


@dataclass(frozen=True)
class LocalModel:
    """An MLflow model on local disk, checked and parsed."""

    path: Path
    uri: str
    flavors: tuple[str, ...]
    python_version: str  # "3.11.7" or "3.11"
    requirements: tuple[ModelRequirement, ...]
    build_requirements: tuple[ModelRequirement, ...] = ()
    conda_env: dict[str, Any] | None = None
    mlflow_version: str | None = None
    model_uuid: str | None = None
    run_id: str | None = None
    registered_name: str | None = None
    registered_version: str | None = None
    model_id: str | None = None
    source: str | None = None
    created: str | None = None
    serving_example: Any = None  # a JSON payload for /invocations, or None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def python_minor(self) -> str:
        return ".".join(self.python_version.split(".")[:2])

    @property
    def name(self) -> str:
        return self.path.name


def load_local_model(resolved: ResolvedModel) -> LocalModel:
    """Read and check the model directory: MLmodel, pyfunc flavor, environment, example."""
    try:
        return _load(resolved)
    except InvalidModel as exc:
        if resolved.source is None:
            raise
        # A downloaded model is named by the URI it came from, not by its temporary copy.
        raise type(exc)(str(exc).replace(str(resolved.path), resolved.uri)) from None


def _load(resolved: ResolvedModel) -> LocalModel:
    path = resolved.path
    mlmodel = _read_mlmodel(path)
    flavors = mlmodel["flavors"]
    if PYFUNC_FLAVOR not in flavors:
        raise InvalidModel(
            f"{path}: the model's flavors are {', '.join(sorted(flavors)) or 'none'}, with no "
            f"'{PYFUNC_FLAVOR}' flavor; mlimg serves models through mlflow.pyfunc"
        )
    pyfunc = flavors[PYFUNC_FLAVOR] or {}
    python_env = _read_yaml_file(path / "python_env.yaml", required=False)
    conda_env = _read_yaml_file(path / "conda.yaml", required=False)
    requirements, build_requirements = _read_environment(path, python_env, conda_env)
    return LocalModel(
        path=path,
        uri=resolved.uri,
        flavors=tuple(flavors),
        python_version=_python_version(path, python_env, pyfunc, conda_env),
        requirements=tuple(requirements),
        build_requirements=tuple(build_requirements),
        conda_env=conda_env,
        mlflow_version=_str_or_none(mlmodel.get("mlflow_version")),
        model_uuid=_str_or_none(mlmodel.get("model_uuid")),
        run_id=resolved.run_id or _str_or_none(mlmodel.get("run_id")),
        registered_name=resolved.registered_name,
        registered_version=resolved.registered_version,
        model_id=resolved.model_id or _str_or_none(mlmodel.get("model_id")),
        source=resolved.source,
        created=_str_or_none(mlmodel.get("utc_time_created")),
        serving_example=_serving_example(path, mlmodel),
        metadata=mlmodel,
    )


def _read_mlmodel(path: Path) -> dict[str, Any]:
    if not (path / "MLmodel").is_file():
        raise InvalidModel(f"{path} has no MLmodel file; is it an MLflow model directory?")
    mlmodel = _read_yaml_file(path / "MLmodel", required=True)
    if not isinstance(mlmodel, dict):
        raise InvalidModel(f"{path}/MLmodel is malformed: expected a YAML mapping")
    flavors = mlmodel.get("flavors")
    if not isinstance(flavors, dict):
        raise InvalidModel(f"{path}/MLmodel is malformed: it has no 'flavors' mapping")
    return mlmodel


def _read_yaml_file(path: Path, required: bool) -> Any:
    if not path.is_file():
        if required:
            raise InvalidModel(f"{path} does not exist")
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidModel(f"{path} is malformed: {detail}") from None


def _read_environment(
    path: Path, python_env: Any, conda_env: Any
) -> tuple[list[ModelRequirement], list[ModelRequirement]]:
    """The model's pip requirements, from python_env.yaml, requirements.txt or conda.yaml."""
    if python_env is not None:
        if not isinstance(python_env, dict):
            raise InvalidModel(f"{path}/python_env.yaml is malformed: expected a YAML mapping")
        deps = _string_list(python_env.get("dependencies"), "python_env.yaml", "dependencies")
        build = _string_list(
            python_env.get("build_dependencies"), "python_env.yaml", "build_dependencies"
        )
        return (
            parse_requirements(deps, "python_env.yaml dependencies", path),
            parse_requirements(build, "python_env.yaml build_dependencies", path),
        )
    if (path / "requirements.txt").is_file():
        return read_requirements_file(path / "requirements.txt", path), []
    if isinstance(conda_env, dict):
        return parse_requirements(_conda_pip_lines(conda_env), "conda.yaml pip", path), []
    raise InvalidModel(
        f"{path} has no python_env.yaml, requirements.txt or conda.yaml: "
        "mlimg cannot tell which packages the model needs"
    )


def _conda_pip_lines(conda_env: dict[str, Any]) -> list[str]:
    for dep in conda_env.get("dependencies") or []:
        if isinstance(dep, dict) and "pip" in dep:
            return _string_list(dep["pip"], "conda.yaml", "pip")
    return []


def _string_list(value: Any, file: str, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidModel(f"{file} is malformed: '{key}' must be a list of strings")
    return value


def _python_version(path: Path, python_env: Any, pyfunc: dict[str, Any], conda_env: Any) -> str:
    candidates: list[tuple[str, Any]] = []
    if isinstance(python_env, dict):
        candidates.append(("python_env.yaml", python_env.get("python")))
    candidates.append(("MLmodel python_function.python_version", pyfunc.get("python_version")))
    if isinstance(conda_env, dict):
        for dep in conda_env.get("dependencies") or []:
            if isinstance(dep, str) and re.match(r"^python\s*[=<>]", dep):
                candidates.append(("conda.yaml", re.split(r"[=<>]+", dep, maxsplit=1)[1]))
    for source, value in candidates:
        if value is None:
            continue
        version = str(value).strip()
        if not _PYTHON_VERSION.match(version):
            raise InvalidModel(f"{path}: {source} gives {version!r}, which is not a Python version")
        return version
    raise InvalidModel(f"{path}: the model does not say which Python version it was saved with")


def _serving_example(path: Path, mlmodel: dict[str, Any]) -> Any:
    """The model's own request example: serving_input_example.json, else input_example.json."""
    info = mlmodel.get("saved_input_example_info") or {}
    serving = path / (info.get("serving_input_path") or "serving_input_example.json")
    if serving.is_file():
        return _read_json(serving)
    example_file = path / (info.get("artifact_path") or "input_example.json")
    if not example_file.is_file():
        return None
    example = _read_json(example_file)
    if info.get("type") == "dataframe":
        orient = info.get("pandas_orient", "split")
        return {"dataframe_records" if orient == "records" else "dataframe_split": example}
    return {"inputs": example}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModel(f"{path} is not valid JSON: {exc}") from None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
