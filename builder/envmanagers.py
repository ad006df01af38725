"""Env managers: the ways a model's environment is made, each defined once.

An env manager is a Dockerfile template (`templates/NAME.Dockerfile.j2`, which extends the
shared shape and fills its blocks), the base image it defaults to, the image its build stage
runs in, and how `mlimg serve` / `predict` make the same environment on the host. Whatever
the manager, the environment gets the model's requirements first, then the serving engine's
under a constraint of everything the model's installed (as the images do, through the
template macro `install_runtime`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from mlimg.errors import EnvironmentFailed, InvalidOption
from mlimg.model import LocalModel

UV_VERSION = "0.13.9"
# Writes each image's SBOM in its build stage, from a venv of its own (so it is not listed).
SBOM_TOOL = "cyclonedx-bom==7.5.0"


@dataclass(frozen=True)
class RuntimeInstall:
    """What the serving engine adds to an environment."""

    requirements: tuple[Requirement, ...]  # installed under a constraint of the model's
    no_deps: tuple[Requirement, ...] = ()  # then these, without their dependencies
    resolved_with_model: bool = False  # see engines.ServingEngine


# (model, environment directory, what the engine adds, a scratch directory) -> None
Creator = Callable[[LocalModel, Path, RuntimeInstall, Path], None]


@dataclass(frozen=True)
class EnvManager:
    name: str
    create: Creator | None  # how the host makes it; None: the current Python, as it is
    build_image: str | None = None  # the build stage's image; None: the base image
    default_base: str | None = None  # None: python:X.Y-slim for the model's Python

    @property
    def template(self) -> str:
        return f"{self.name}.Dockerfile.j2"

    def base_image(self, model: LocalModel) -> str:
        return self.default_base or f"python:{model.python_minor}-slim"


def python_in(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _create_uv(model: LocalModel, path: Path, runtime: RuntimeInstall, work: Path) -> None:
    uv = uv_binary()
    # Byte-compiled as pip (the virtualenv manager's installer) and the images' builds leave
    # theirs: without it, every start under PYTHONDONTWRITEBYTECODE or on a read-only cache
    # compiles mlflow anew (the reuse check took 4.1 s rather than 1.7 s; each Spark worker's
    # model load 6.9 s rather than 4.1 s).
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_COMPILE_BYTECODE": "1"}
    _run([uv, "venv", "--python", model.python_minor, str(path)], env, on_fail=_no_python(model))
    pip = [uv, "pip"]
    python = ["--python", str(python_in(path))]
    requirements = _write_lines(work / "requirements.txt", model.requirements)
    _run([*pip, "install", *python, "-r", str(requirements)], env)
    _install_runtime(model, pip, python, runtime, work, env)


def _create_virtualenv(model: LocalModel, path: Path, runtime: RuntimeInstall, work: Path) -> None:
    from virtualenv import cli_run

    try:
        cli_run([str(path), "--python", model.python_minor, "--quiet"])
    except RuntimeError as exc:
        if "failed to find interpreter" in str(exc):
            raise EnvironmentFailed(_no_python(model)) from None
        raise EnvironmentFailed(f"virtualenv could not create {path}: {exc}") from None
    pip = _pip(path)
    if model.build_requirements:
        build = _write_lines(work / "build-requirements.txt", model.build_requirements)
        _run([*pip, "install", "-r", str(build)])
    requirements = _write_lines(work / "requirements.txt", model.requirements)
    _run([*pip, "install", "-r", str(requirements)])
    _install_runtime(model, pip, [], runtime, work)


def _create_conda(model: LocalModel, path: Path, runtime: RuntimeInstall, work: Path) -> None:
    """The model's conda.yaml (its pip section holds the requirements) with micromamba, mamba
    or conda."""
    import yaml

    from mlimg.render import conda_environment

    tool = next(
        (shutil.which(n) for n in ("micromamba", "mamba", "conda") if shutil.which(n)), None
    )
    if tool is None:
        raise EnvironmentFailed(
            "--env-manager conda needs micromamba, mamba or conda on PATH; none was found"
        )
    spec = work / "conda.yaml"
    spec.write_text(yaml.safe_dump(conda_environment(model), sort_keys=False))
    _run([tool, "create", "--yes", "--prefix", str(path), "--file", str(spec)])
    _install_runtime(model, _pip(path), [], runtime, work)


def _install_runtime(
    model: LocalModel,
    pip: list[str],
    target: list[str],
    runtime: RuntimeInstall,
    work: Path,
    env: dict[str, str] | None = None,
) -> None:
    """The engine's requirements under a constraint of everything the model's installed (or
    resolved with the model's requirements), then its no-dependency packages: the host's
    version of the templates' `install_runtime`."""
    requirements = _write_lines(work / "runtime-requirements.txt", runtime.requirements)
    if runtime.resolved_with_model:
        own = _write_lines(work / "model-requirements.txt", model.requirements)
        _run([*pip, "install", *target, "-r", str(own), "-r", str(requirements)], env)
    else:
        constraints = work / "model-constraints.txt"
        listed = _run([*pip, "list", *target, "--format=freeze"], env, capture=True)
        constraints.write_text(listed)
        _run([*pip, "install", *target, "-c", str(constraints), "-r", str(requirements)], env)
    if runtime.no_deps:
        no_deps = _write_lines(work / "runtime-no-deps.txt", runtime.no_deps)
        _run([*pip, "install", *target, "--no-deps", "-r", str(no_deps)], env)


def _pip(path: Path) -> list[str]:
    return [str(python_in(path)), "-m", "pip", "--disable-pip-version-check"]


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


def uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise InvalidOption("--env-manager uv needs uv: pip install uv")


def _write_lines(path: Path, items: Iterable[object]) -> Path:
    path.write_text("".join(f"{item}\n" for item in items), encoding="utf-8")
    return path


ENV_MANAGERS = {
    manager.name: manager
    for manager in (
        EnvManager("virtualenv", _create_virtualenv),
        EnvManager("uv", _create_uv),
        EnvManager("local", None),
        # conda builds its environment in micromamba's image and runs it on a plain Debian base.
        EnvManager(
            "conda",
            _create_conda,
            build_image="mambaorg/micromamba:2.0.5",
            default_base="debian:bookworm-slim",
        ),
    )
}
DEFAULT_ENV_MANAGER = "uv"


def env_manager(name: str) -> EnvManager:
    try:
        return ENV_MANAGERS[name]
    except KeyError:
        raise InvalidOption(
            f"unknown env manager {name!r}; choose one of {', '.join(ENV_MANAGERS)}"
        ) from None
