"""The model's environment on the host, for `mlimg serve` and `mlimg predict`: made once by its
env manager (`envmanagers`), cached, and checked before each reuse.

`local` is the current interpreter. The others make an environment from the model's spec with
a Python of the model's minor version found on this machine, plus the serving engine's
requirements under a constraint of what the model installed (as the images do), and cache it
under a digest of all of that, so a second start reuses it. A file lock keeps two processes
from creating the same environment at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

from filelock import FileLock, Timeout

import mlimg
from mlimg.engines import DEFAULT_ENGINE, ServingEngine, serving_engine
from mlimg.envmanagers import RuntimeInstall, env_manager, python_in
from mlimg.errors import EnvironmentFailed, InvalidOption
from mlimg.model import LocalModel
from mlimg.plan import environment_requirements

_COMPLETE = ".mlimg-complete"
_LOCK_WAIT_SECONDS = 1800


@dataclass(frozen=True)
class ModelEnvironment:
    python: Path  # the interpreter that runs the runtime
    path: Path | None  # the environment's directory; None for local
    reused: bool


def cache_root() -> Path:
    """$MLIMG_CACHE_DIR/envs, else the user's cache directory's mlimg/envs."""
    base = os.environ.get("MLIMG_CACHE_DIR")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlimg")
    return Path(base) / "envs"


def environment_python(
    model: LocalModel,
    env_manager_name: str,
    engine_name: str = DEFAULT_ENGINE,
    full_mlflow: bool = False,
) -> Path:
    """The interpreter `prepare_environment` will return, known before it is made or checked."""
    manager = env_manager(env_manager_name)
    if manager.create is None:
        return Path(sys.executable)
    model = _as_in_the_image(model, full_mlflow)
    return python_in(_cached_path(model, manager.name, serving_engine(engine_name)))


def _as_in_the_image(model: LocalModel, full_mlflow: bool) -> LocalModel:
    """The model with the requirements its image installs (mlflow-skinny for a pinned mlflow,
    unless `full_mlflow`), so that it answers here as it will in its image."""
    requirements = tuple(environment_requirements(model, full_mlflow))
    return dataclasses.replace(model, requirements=requirements)


def _cached_path(model: LocalModel, manager_name: str, engine: ServingEngine) -> Path:
    return cache_root() / environment_key(model, manager_name, engine)


def prepare_environment(
    model: LocalModel,
    env_manager_name: str,
    report: Callable[[str], None],
    engine_name: str = DEFAULT_ENGINE,
    full_mlflow: bool = False,
) -> ModelEnvironment:
    """The cached environment that runs `model` with the engine: made from the requirements
    the model's image would install (`full_mlflow` as in `mlimg build`), or this Python."""
    manager = env_manager(env_manager_name)
    engine = serving_engine(engine_name)
    engine.check_python(model)
    if manager.create is None:
        return _local_environment(engine)
    skinny = _as_in_the_image(model, full_mlflow)
    swapped, model = skinny.requirements != model.requirements, skinny
    path = _cached_path(model, manager.name, engine)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(f"{path.name}.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        report(f"waiting for another mlimg that is creating the environment {path}")
        try:
            lock.acquire(timeout=_LOCK_WAIT_SECONDS)
        except Timeout:
            raise EnvironmentFailed(f"the environment {path} stayed locked too long") from None
    try:
        if (path / _COMPLETE).is_file():
            problem = _broken(path, engine)
            if problem is None:
                report(f"reusing the environment {path}")
                return ModelEnvironment(python_in(path), path, reused=True)
            report(f"the cached environment {path} is broken ({problem}); creating it again")
        shutil.rmtree(path, ignore_errors=True)  # a creation that died half-way, or broken
        report(
            f"creating a {manager.name} environment with Python {model.python_minor} and "
            f"{len(model.requirements)} requirements in {path}"
        )
        if swapped:
            report(
                "installing mlflow-skinny in place of the full mlflow the model pins, as its image "
                "does (--full-mlflow keeps mlflow)"
            )
        runtime = RuntimeInstall(
            tuple(engine.requirements(model)),
            tuple(engine.no_deps_requirements()),
            engine.resolved_with_model,
        )
        work = Path(tempfile.mkdtemp(prefix="mlimg-env-"))
        try:
            manager.create(model, path, runtime, work)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (path / _COMPLETE).write_text(json.dumps({"mlimg": mlimg.__version__}) + "\n")
        return ModelEnvironment(python_in(path), path, reused=False)
    finally:
        lock.release()


def _broken(path: Path, engine: ServingEngine) -> str | None:
    """Why the environment at `path` cannot run the engine, or None when it can."""
    python = python_in(path)
    if not python.exists():
        return f"{python} is missing"
    with runtime_path() as runtime:
        env = {**os.environ, "PYTHONPATH": str(runtime)}
        env.pop("PYTHONHOME", None)
        try:
            result = subprocess.run(
                [str(python), "-c", engine.import_check],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


def environment_key(model: LocalModel, env_manager: str, engine: ServingEngine) -> str:
    """A digest of everything that decides the environment's content."""
    spec = {
        "env_manager": env_manager,
        "python": model.python_minor,
        "requirements": [str(r) for r in model.requirements],
        "build_requirements": [str(r) for r in model.build_requirements],
        "runtime": [str(r) for r in engine.requirements(model)],
    }
    no_deps = engine.no_deps_requirements()
    if no_deps:  # only when there are some, so that the default engine's keys stay as they were
        spec["runtime_no_deps"] = [str(r) for r in no_deps]
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return f"{env_manager}-py{model.python_minor}-{digest[:16]}"


@contextmanager
def runtime_path() -> Iterator[Path]:
    """A directory holding a copy of mlimg_runtime, for PYTHONPATH in the model's environment.

    Only the runtime is copied: putting mlimg's own site-packages on the path would let the
    host's packages shadow the environment's.
    """
    with tempfile.TemporaryDirectory(prefix="mlimg-runtime-") as tmp:
        with as_file(files("mlimg_runtime")) as source:
            shutil.copytree(
                source,
                Path(tmp) / "mlimg_runtime",
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        yield Path(tmp)


def _local_environment(engine: ServingEngine) -> ModelEnvironment:
    missing = [name for name in engine.host_modules if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidOption(
            f"--env-manager local serves the model with this Python ({sys.executable}), which "
            f"lacks {', '.join(missing)} for the {engine.name} engine: {engine.local_install}"
        )
    return ModelEnvironment(Path(sys.executable), None, reused=True)
