"""The model's environment on the host, for `mlimg serve` and `mlimg predict`.

`local` is the current interpreter. `virtualenv` and `uv` create a virtual environment from the
model's requirements with a Python of the model's minor version found on this machine, install
the runtime's requirements under a constraint of what the model installed (as the images do),
and cache it under a key made from all of that, so a second start reuses it. A file lock keeps
two processes from creating the same environment at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
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
from mlimg.errors import EnvironmentFailed, InvalidOption
from mlimg.model import LocalModel
from mlimg.plan import runtime_requirements

_COMPLETE = ".mlimg-complete"
_LOCK_WAIT_SECONDS = 1800
_RUNTIME_MODULES = ("flask", "gunicorn", "httptools", "mlflow")
# What a cached environment must import before it is reused: the runtime's whole server and
# the MLflow loader (a second or so), so that a damaged cache is found here, not at start-up.
_IMPORT_CHECK = "import mlflow.pyfunc, mlimg_runtime.server, mlimg_runtime.batch"


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


def prepare_environment(
    model: LocalModel, env_manager: str, report: Callable[[str], None]
) -> ModelEnvironment:
    if env_manager == "local":
        return _local_environment()
    if env_manager not in ("virtualenv", "uv", "conda"):
        raise InvalidOption(f"unknown env manager {env_manager!r}")
    key = environment_key(model, env_manager)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / key
    lock = FileLock(str(root / f"{key}.lock"))
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
            problem = _broken(path)
            if problem is None:
                report(f"reusing the environment {path}")
                return ModelEnvironment(_python_in(path), path, reused=True)
            report(f"the cached environment {path} is broken ({problem}); creating it again")
        shutil.rmtree(path, ignore_errors=True)  # a creation that died half-way, or broken
        report(
            f"creating a {env_manager} environment with Python {model.python_minor} and "
            f"{len(model.requirements)} requirements in {path}"
        )
        try:
            _create(model, env_manager, path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        (path / _COMPLETE).write_text(json.dumps({"mlimg": mlimg.__version__}) + "\n")
        return ModelEnvironment(_python_in(path), path, reused=False)
    finally:
        lock.release()


def _broken(path: Path) -> str | None:
    """Why the environment at `path` cannot run the runtime, or None when it can."""
    python = _python_in(path)
    if not python.exists():
        return f"{python} is missing"
    with runtime_path() as runtime:
        env = {**os.environ, "PYTHONPATH": str(runtime)}
        env.pop("PYTHONHOME", None)
        try:
            result = subprocess.run(
                [str(python), "-c", _IMPORT_CHECK],
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


def environment_key(model: LocalModel, env_manager: str) -> str:
    """A digest of everything that decides the environment's content."""
    spec = {
        "env_manager": env_manager,
        "python": model.python_minor,
        "requirements": [str(r) for r in model.requirements],
        "build_requirements": [str(r) for r in model.build_requirements],
        "runtime": [str(r) for r in runtime_requirements(model)],
    }
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


def _local_environment() -> ModelEnvironment:
    missing = [name for name in _RUNTIME_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidOption(
            f"--env-manager local serves the model with this Python ({sys.executable}), which "
            f"lacks {', '.join(missing)}: pip install 'mlimg[runtime]' mlflow"
        )
    return ModelEnvironment(Path(sys.executable), None, reused=True)


def _create(model: LocalModel, env_manager: str, path: Path) -> None:
    """Create the environment at `path`: the model's requirements, then the runtime's under a
    constraint of everything the model installed, as the images do."""
    work = Path(tempfile.mkdtemp(prefix="mlimg-env-"))
    try:
        runtime = _write_lines(work / "runtime-requirements.txt", runtime_requirements(model))
        constraints = work / "model-constraints.txt"
        if env_manager == "uv":
            uv = _uv_binary()
            env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
            python = ["--python", str(_python_in(path))]
            _run(
                [uv, "venv", "--python", model.python_minor, str(path)],
                env,
                on_fail=_no_python(model),
            )
            requirements = _write_lines(work / "requirements.txt", model.requirements)
            _run([uv, "pip", "install", *python, "-r", str(requirements)], env)
            frozen = _run([uv, "pip", "list", *python, "--format=freeze"], env, capture=True)
            constraints.write_text(frozen)
            _run(
                [uv, "pip", "install", *python, "-c", str(constraints), "-r", str(runtime)],
                env,
            )
            return
        if env_manager == "conda":
            _create_conda(model, path, work)  # its pip section holds the requirements
        else:
            _create_virtualenv(path, model)
        pip = [str(_python_in(path)), "-m", "pip", "--disable-pip-version-check"]
        if env_manager == "virtualenv":
            if model.build_requirements:
                build = _write_lines(work / "build-requirements.txt", model.build_requirements)
                _run([*pip, "install", "-r", str(build)])
            requirements = _write_lines(work / "requirements.txt", model.requirements)
            _run([*pip, "install", "-r", str(requirements)])
        constraints.write_text(_run([*pip, "list", "--format=freeze"], capture=True))
        _run([*pip, "install", "-c", str(constraints), "-r", str(runtime)])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _create_conda(model: LocalModel, path: Path, work: Path) -> None:
    """The model's conda.yaml (pip section included) with micromamba, mamba or conda."""
    import yaml

    tool = next(
        (shutil.which(n) for n in ("micromamba", "mamba", "conda") if shutil.which(n)), None
    )
    if tool is None:
        raise EnvironmentFailed(
            "--env-manager conda needs micromamba, mamba or conda on PATH; none was found"
        )
    from mlimg.render import conda_environment

    spec = work / "conda.yaml"
    spec.write_text(yaml.safe_dump(conda_environment(model), sort_keys=False))
    _run([tool, "create", "--yes", "--prefix", str(path), "--file", str(spec)])


def _create_virtualenv(path: Path, model: LocalModel) -> None:
    from virtualenv import cli_run

    try:
        cli_run([str(path), "--python", model.python_minor, "--quiet"])
    except RuntimeError as exc:
        if "failed to find interpreter" in str(exc):
            raise EnvironmentFailed(_no_python(model)) from None
        raise EnvironmentFailed(f"virtualenv could not create {path}: {exc}") from None


def _no_python(model: LocalModel) -> str:
    return (
        f"the model needs Python {model.python_minor} (it was saved with "
        f"{model.python_version}) and none was found on this machine; install it (for example "
        f"'uv python install {model.python_minor}') or use --env-manager local"
    )


def _run(
    command: list[str],
    env: dict[str, str] | None = None,
    capture: bool = False,
    on_fail: str | None = None,
) -> str:
    """Run an installer step; its output goes to stderr as progress, or is returned."""
    result = subprocess.run(
        command,
        env=env,
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.PIPE if on_fail else sys.stderr,
        text=True,
    )
    if result.returncode != 0:
        if on_fail:
            raise EnvironmentFailed(on_fail)
        shown = shlex.join([Path(command[0]).name, *command[1:]])
        raise EnvironmentFailed(
            f"'{shown}' failed with exit code {result.returncode} (its output is above)"
        )
    return result.stdout if capture else ""


def _uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise InvalidOption("--env-manager uv needs uv: pip install uv")


def _python_in(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _write_lines(path: Path, items) -> Path:
    path.write_text("".join(f"{item}\n" for item in items), encoding="utf-8")
    return path
