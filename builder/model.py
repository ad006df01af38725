"""Reading an MLflow model directory into a `LocalModel`: what mlimg needs to know to serve it."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from mlimg.errors import InvalidModel
from mlimg.requirements import (
    ModelRequirement,
    parse_requirements,
    read_requirements_file,
)
from mlimg.uris import ResolvedModel
from mlimg_runtime import contract

PYFUNC_FLAVOR = "python_function"
# A conda match spec as conda.yaml writes them ("numpy", "numpy>=1.2,<2", "python=3.11.*",
# "conda-forge::pytorch=2.1=py311_0"), and no more: nothing a shell or YAML would read twice.
_CONDA_SPEC = re.compile(
    r"(?:[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*::)?[A-Za-z0-9_][A-Za-z0-9_.\-]*"
    r"(?: ?[=<>!~]{1,2} ?[A-Za-z0-9_.*+!,|<>=~\-]+| [A-Za-z0-9_.*+!,|<>=~\-]+){0,2}"
)
_CONDA_CHANNEL = re.compile(r"[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*|https?://[^\s@?#]+")
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

    @property
    def kind(self) -> contract.ModelKind:
        """A chat model, an agent (MLmodel's metadata.task), or any other pyfunc model."""
        return contract.model_kind(self.metadata.get("metadata"))

    @property
    def streams(self) -> bool:
        """Whether the model has predict_stream (its pyfunc flavor is streamable)."""
        return contract.streams(self.metadata.get("flavors"))

    @property
    def display_name(self) -> str:
        """What a user calls the model: its registered name, else the last part of the URI's
        path (`model` for runs:/ID/model), never the name of a temporary download."""
        if self.registered_name:
            return self.registered_name
        if self.source is not None:
            tail = PurePosixPath(urlsplit(self.uri).path).name
            if tail:
                return tail
        return self.name


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
    if path.is_dir():
        check_model_tree(path)
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
    if conda_env is not None:
        check_conda_env(path, conda_env)
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


def check_model_tree(root: Path) -> None:
    """Refuse a model directory holding anything that would carry a file from outside it into
    an image or a server: a symbolic link whose target resolves outside the directory (or
    nowhere), or a special file (FIFO, socket, device). Links that stay inside are allowed;
    the renderer copies them as links. MLflow refuses the same models ("resolved path is
    outside the artifact directory")."""
    real_root = Path(os.path.realpath(root))
    for directory, subdirs, names in os.walk(root):  # does not descend into linked directories
        for name in subdirs + names:
            entry = Path(directory, name)
            relative = entry.relative_to(root).as_posix()
            try:
                mode = entry.lstat().st_mode
            except OSError as exc:
                raise InvalidModel(f"{root}: cannot read {relative}: {exc.strerror}") from None
            if stat.S_ISLNK(mode):
                target = Path(os.path.realpath(entry))
                if not target.is_relative_to(real_root) or target == real_root:
                    raise InvalidModel(
                        f"{root}: {relative} is a symbolic link to {os.readlink(entry)}, which "
                        "lies outside the model directory; copy the file into the model instead"
                    )
                if not target.exists():
                    raise InvalidModel(
                        f"{root}: {relative} is a symbolic link to {os.readlink(entry)}, "
                        "which does not exist"
                    )
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise InvalidModel(
                    f"{root}: {relative} is not a regular file or directory (a FIFO, socket or "
                    "device); a model directory may hold only files, directories and links "
                    "within it"
                )


def inside_model(root: Path, relative: str, what: str) -> Path:
    """`root / relative` for a path that MLmodel names, refused when it is absolute or
    resolves outside the model directory."""
    if os.path.isabs(relative):
        raise InvalidModel(f"{root}/MLmodel: {what} {relative!r} is an absolute path")
    path = root / relative
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root)):
        raise InvalidModel(f"{root}/MLmodel: {what} {relative!r} lies outside the model directory")
    return path


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


def check_conda_env(path: Path, conda_env: Any) -> None:
    """conda.yaml gets the same strict reading as pip lines: each dependency a plain match
    spec (or the pip list, read as requirements), each channel a name or an http(s) URL."""
    where = f"{path}/conda.yaml"
    if not isinstance(conda_env, dict):
        raise InvalidModel(f"{where} is malformed: expected a YAML mapping")
    channels = conda_env.get("channels") or []
    if not isinstance(channels, list):
        raise InvalidModel(f"{where} is malformed: 'channels' must be a list")
    for channel in channels:
        if not isinstance(channel, str) or not _CONDA_CHANNEL.fullmatch(channel):
            raise InvalidModel(
                f"{where}: channel {str(channel)[:80]!r} is not a channel name or an http(s) "
                "URL without credentials"
            )
    dependencies = conda_env.get("dependencies") or []
    if not isinstance(dependencies, list):
        raise InvalidModel(f"{where} is malformed: 'dependencies' must be a list")
    for dependency in dependencies:
        if isinstance(dependency, dict) and set(dependency) == {"pip"}:
            continue  # read as requirements, line by line
        if not isinstance(dependency, str) or not _CONDA_SPEC.fullmatch(dependency):
            raise InvalidModel(
                f"{where}: dependency {str(dependency)[:80]!r} is not a conda match spec "
                "(such as 'numpy', 'numpy>=1.24,<2' or 'python=3.11')"
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
    if not isinstance(info, dict):
        raise InvalidModel(
            f"{path}/MLmodel is malformed: 'saved_input_example_info' is not a mapping"
        )
    serving_name = str(info.get("serving_input_path") or "serving_input_example.json")
    serving = inside_model(path, serving_name, "serving_input_path")
    if serving.is_file():
        return _read_json(serving)
    example_name = str(info.get("artifact_path") or "input_example.json")
    example_file = inside_model(path, example_name, "saved_input_example_info.artifact_path")
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
