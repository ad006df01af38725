"""Locks: the model's environment and the serving engine's requirements resolved on the host
to exact versions with their files' hashes, for the image's Python and platform.

uv resolves (`uv pip compile --python-version X.Y --python-platform ...`), as the image would
install: the model's own requirements first; then, with those pins as constraints, the engine's
beside them (an engine `resolved_with_model` is resolved together with the model's instead, as
its image does); then the packages the engine installs without their dependencies. The lock is
a requirements file that pip and uv both install as it is (`--no-deps --require-hashes`).

Linux wheels are chosen by their manylinux tag: `manylinux_2_28` (glibc 2.28, older than any
supported base image's) gives the versions an online build picks, where `manylinux2014` alone
makes uv fall back to old releases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

import mlimg
from mlimg.envmanagers import uv_binary
from mlimg.errors import InvalidOption, LockFailed
from mlimg.files import write_whole
from mlimg.plan import BuildPlan
from mlimg.requirements import BUILD_FILES_DIR, ModelRequirement, in_model_file, relocated

# Docker's platform names, and the wheel tags a lock picks for each.
PLATFORMS = {
    "linux/amd64": "x86_64-manylinux_2_28",
    "linux/arm64": "aarch64-manylinux_2_28",
}
DEFAULT_PLATFORM = "linux/amd64"
# A lock's two sections: an image installs them in two layers, so that a change of mlimg's
# runtime alone leaves the model's layer cached.
MODEL_SECTION = "# --- the model's environment ---\n"
ENGINE_SECTION = "# --- the serving engine's packages ---\n"
_RESOLVER_TIMEOUT = 900


@dataclass(frozen=True)
class Lock:
    text: str  # the lock file: a header, then pinned requirements with hashes
    python: str  # "3.11"
    platform: str  # "linux/amd64"

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def model_part(self) -> str:
        """The model's section: what the model's own requirements need."""
        return self._section(MODEL_SECTION, ENGINE_SECTION)

    @property
    def engine_part(self) -> str:
        """The serving engine's section: what the engine adds beside the model's."""
        return self._section(ENGINE_SECTION, None)

    def _section(self, start: str, end: str | None) -> str:
        if start not in self.text:
            raise InvalidOption("the lock has no sections: write it again with mlimg lock")
        rest = self.text.split(start, 1)[1]
        return rest.split(end, 1)[0] if end else rest

    @property
    def pins(self) -> dict[str, str]:
        """Each package's pinned version, by its name as written."""
        found = {}
        for line in self.text.splitlines():
            name, sep, version = line.partition("==")
            if sep and not line.startswith((" ", "#")):
                found[name.strip()] = version.split()[0].rstrip("\\").strip()
        return found


def resolve(
    plan: BuildPlan,
    report: Callable[[str], None],
    platform: str = DEFAULT_PLATFORM,
    python: str | None = None,
) -> Lock:
    """Resolve the plan's requirements for `python` (default: the model's) on `platform`."""
    if platform not in PLATFORMS:
        raise InvalidOption(f"--platform {platform}: choose one of {', '.join(PLATFORMS)}")
    python = python or plan.model.python_minor
    report(f"locking the model's environment for Python {python} on {platform}")
    with tempfile.TemporaryDirectory(prefix="mlimg-lock-") as tmp:
        work = Path(tmp)
        model = _write(work / "model.txt", _files_in(plan, work / "files"))
        runtime = _write(work / "runtime.txt", plan.runtime_requirements)
        compile_ = _Compiler(plan, platform, python, work)
        pins = compile_("the model's requirements", model, hashes=False)
        if _engine_joint(plan):
            body = compile_("the model's and the engine's requirements together", model, runtime)
        else:
            constraints = work / "model-pins.txt"
            constraints.write_text(pins, encoding="utf-8")
            body = compile_(
                "the engine's requirements beside the model's pins",
                model,
                runtime,
                constraints=constraints,
            )
        if plan.runtime_no_deps:
            no_deps = _write(work / "no-deps.txt", plan.runtime_no_deps)
            body += compile_("the engine's packages without dependencies", no_deps, no_deps=True)
    # A file inside the model, as the image's build stage finds it.
    body = body.replace(f"file://{work}/files/", f"file://{BUILD_FILES_DIR}/")
    pins = pins.replace(f"file://{work}/files/", f"file://{BUILD_FILES_DIR}/")
    entries = _entries(body)
    model_names = set(_entries(pins))
    model_part = "".join(block for name, block in entries.items() if name in model_names)
    engine_part = "".join(block for name, block in entries.items() if name not in model_names)
    sections = MODEL_SECTION + model_part + ENGINE_SECTION + engine_part
    return Lock(_header(plan, platform, python) + sections, python, platform)


def _files_in(plan: BuildPlan, directory: Path) -> list[ModelRequirement]:
    """The model's requirements, the files inside the model they name copied to `directory`
    (so that the lock names them by a path that does not depend on the model's)."""
    requirements = []
    for item in plan.requirements:
        inside = in_model_file(item, plan.model.path)
        if inside is not None:
            (directory / inside).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(plan.model.path / inside, directory / inside)
            item = relocated(item, str(directory), inside)
        requirements.append(item)
    return requirements


def _entries(text: str) -> dict[str, str]:
    """A pip-compile output's entries by package name: each requirement line with the hash and
    annotation lines under it."""
    entries: dict[str, str] = {}
    name = None
    for line in text.splitlines(keepends=True):
        if line.strip() and not line.startswith((" ", "#")):
            name = canonicalize_name(re.split(r"[=@ \[;]", line, maxsplit=1)[0])
            entries[name] = ""
        if name is not None:
            entries[name] += line
    return entries


def locked(plan: BuildPlan, lock_file: Path | None, report: Callable[[str], None]) -> BuildPlan:
    """The plan with the lock its image installs: `lock_file`'s, checked against the plan,
    or a new one; its digest goes into the label mlimg.lock."""
    if lock_file is not None:
        lock = read(lock_file)
        check_fits(lock, plan, DEFAULT_PLATFORM)
        report(f"installing from the lock {lock_file} ({lock.digest})")
    else:
        lock = resolve(plan, report)
    return dataclasses.replace(plan, lock=lock, labels={**plan.labels, "mlimg.lock": lock.digest})


def read(path: Path) -> Lock:
    """A lock written by `mlimg lock` (its header names its Python and platform)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidOption(f"--lock {path}: cannot read it ({exc})") from None
    header: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("# "):
            break  # the header ends where the requirements begin
        key, sep, value = line[2:].partition(": ")
        if sep:
            header[key] = value
    python, platform = header.get("python"), header.get("platform", "").split(" ")[0]
    if not text.startswith("# mlimg ") or not python or platform not in PLATFORMS:
        raise InvalidOption(
            f"--lock {path}: not a lock written by mlimg lock (its header names no Python or "
            "platform)"
        )
    return Lock(text, python, platform)


def check_fits(lock: Lock, plan: BuildPlan, platform: str, python: str | None = None) -> None:
    """Refuse a lock made for another Python or platform, or without a version that every
    requirement of the plan (the model's and the engine's) accepts: the difference named."""
    python = python or plan.model.python_minor
    if lock.python != python:
        raise InvalidOption(f"the lock is for Python {lock.python}; this image needs {python}")
    if lock.platform != platform:
        raise InvalidOption(f"the lock is for {lock.platform}; this image is for {platform}")
    pins = {canonicalize_name(name): version for name, version in lock.pins.items()}
    entries = _entries(lock.text)  # direct references (NAME @ URL) too
    target = _marker_environment(python, platform)
    wanted = [(r.requirement, r.source) for r in plan.requirements]
    wanted += [(r, "the engine") for r in (*plan.runtime_requirements, *plan.runtime_no_deps)]
    for requirement, source in wanted:
        if requirement.marker is not None and not requirement.marker.evaluate(target):
            continue
        name = canonicalize_name(requirement.name)
        if name not in entries:
            raise InvalidOption(f"the lock has no {requirement.name}, which {source} requires")
        version = pins.get(name)
        if version is None:  # a direct reference: the lock names the file it was made from
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            raise InvalidOption(
                f"the lock pins {requirement.name} {version}, and {source} requires {requirement}"
            )


def _marker_environment(python: str, platform: str) -> dict[str, str]:
    machine = "x86_64" if platform == "linux/amd64" else "aarch64"
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


def write(lock: Lock, path: Path) -> None:
    """Write the lock whole or not at all."""
    write_whole(path, lock.text)


def _engine_joint(plan: BuildPlan) -> bool:
    from mlimg.engines import serving_engine

    return serving_engine(plan.engine).resolved_with_model


def _header(plan: BuildPlan, platform: str, python: str) -> str:
    return (
        # Nothing of the model's identity: models with the same requirements share a lock, and
        # so their images share the layers that install it.
        f"# mlimg {mlimg.__version__} lock: a model's environment with the {plan.engine} engine\n"
        f"# python: {python}\n"
        f"# platform: {platform} ({PLATFORMS[platform]})\n"
        "# install it as it is: pip install --no-deps --require-hashes -r THIS_FILE\n"
    )


class _Compiler:
    """`uv pip compile` for the plan's Python, platform and indexes."""

    def __init__(self, plan: BuildPlan, platform: str, python: str, work: Path) -> None:
        self.command = [
            uv_binary(),
            "pip",
            "compile",
            "--python-version",
            python,
            "--python-platform",
            PLATFORMS[platform],
            "--no-header",
            "--quiet",
        ]
        if plan.pip_index_url:
            self.command += ["--index-url", plan.pip_index_url]
        if plan.pip_extra_index_url:
            self.command += ["--extra-index-url", plan.pip_extra_index_url]
        self.env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
        if plan.ca_cert is not None:
            self.env["SSL_CERT_FILE"] = str(plan.ca_cert)
        self.work = work

    def __call__(
        self,
        what: str,
        *inputs: Path,
        constraints: Path | None = None,
        hashes: bool = True,
        no_deps: bool = False,
    ) -> str:
        command = [*self.command, *map(str, inputs)]
        if constraints is not None:
            command += ["--constraint", str(constraints)]
        if hashes:
            command.append("--generate-hashes")
        if no_deps:
            command.append("--no-deps")
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=self.env,
                cwd=self.work,
                timeout=_RESOLVER_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise LockFailed(f"resolving {what} took over {_RESOLVER_TIMEOUT} s") from None
        if result.returncode != 0:
            raise LockFailed(f"cannot resolve {what}:\n{_reason(result.stderr)}")
        return result.stdout


def _reason(stderr: str) -> str:
    """uv's explanation, without its blank lines and hints about its own options."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    reason = "\n".join(lines[:40]) or "uv gave no reason"
    return re.sub(r"//[^/@\s]+@", "//***@", reason)  # an index URL's credentials


def _write(path: Path, requirements: Iterable[object]) -> Path:
    path.write_text("".join(f"{requirement}\n" for requirement in requirements), "utf-8")
    return path
