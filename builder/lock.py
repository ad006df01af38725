"""Locks: the model's environment and the serving engine's requirements resolved on the host
to exact versions with their files' hashes, for the image's Python and platform.

uv resolves (`uv pip compile --python-version X.Y --python-platform ...`), as the image would
install: the model's own requirements first; then, with those pins as constraints, the engine's
beside them (an engine `resolved_with_model` is resolved together with the model's instead, as
its image does); then the packages the engine installs without their dependencies. The lock is
a requirements file in sections, each of which pip and uv install as it is (`--no-deps
--require-hashes`): the environment's (its build requirements, the model's, the engine's), and
the build's own tools (uv and cyclonedx-bom, each an environment of its own that the final image
never holds), so that an offline build finds every file it installs in a wheelhouse.

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
from mlimg.envmanagers import SBOM_TOOL, UV_VERSION, uv_binary
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
# A lock's sections, in this order. The environment is the first three: an image installs the
# model's and the engine's in two layers, so that a change of mlimg's runtime alone leaves the
# model's layer cached (the build requirements, pip and setuptools of python_env.yaml, go first
# into a virtualenv). The last two are tools the build stage runs, each in a place of its own.
BUILD_SECTION = "# --- the environment's build requirements ---\n"
MODEL_SECTION = "# --- the model's environment ---\n"
ENGINE_SECTION = "# --- the serving engine's packages ---\n"
UV_SECTION = "# --- a tool of the build, not in the image: uv ---\n"
SBOM_TOOL_SECTION = "# --- a tool of the build, not in the image: cyclonedx-bom ---\n"
_SECTION_START = "# --- "
_RESOLVER_TIMEOUT = 900


@dataclass(frozen=True)
class Lock:
    text: str  # the lock file: a header, then pinned requirements with hashes
    python: str  # "3.11"
    platform: str  # "linux/amd64"

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.text.encode()).hexdigest()

    def section(self, marker: str) -> str:
        """One section's entries (a requirements file of its own)."""
        if marker not in self.text:
            raise InvalidOption(
                f"the lock has no section {marker.strip()!r}: it was written by an earlier "
                "mlimg; write it again with mlimg lock"
            )
        lines = self.text.split(marker, 1)[1].splitlines(keepends=True)
        end = next((i for i, line in enumerate(lines) if line.startswith(_SECTION_START)), None)
        return "".join(lines[:end])

    @property
    def model_part(self) -> str:
        """The model's section: what the model's own requirements need."""
        return self.section(MODEL_SECTION)

    @property
    def engine_part(self) -> str:
        """The serving engine's section: what the engine adds beside the model's."""
        return self.section(ENGINE_SECTION)

    @property
    def build_part(self) -> str:
        """The build requirements a virtualenv gets before the model's (often none)."""
        return self.section(BUILD_SECTION) if BUILD_SECTION in self.text else ""

    @property
    def environment(self) -> str:
        """The environment's sections, one requirements file that installs as it is."""
        return self.build_part + self.model_part + self.engine_part

    @property
    def parts(self) -> list[str]:
        """Every section that installs apart: the environment, then each tool."""
        return [self.environment, self.section(UV_SECTION), self.section(SBOM_TOOL_SECTION)]

    @property
    def pins(self) -> dict[str, str]:
        """Each package of the environment with its pinned version, by its name as written."""
        return pins_of(self.environment)


def pins_of(text: str) -> dict[str, str]:
    """Each `NAME==VERSION` entry of a lock's text (or one section's): its version by its name."""
    found = {}
    for line in text.splitlines():
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
        build = ""
        if plan.model.build_requirements:
            # The environment's own versions replace these when it is installed after them:
            # the packages it holds are left out, so that it has one version of each.
            requirements = _files_in(plan, work / "files", plan.model.build_requirements)
            build = compile_(
                "the model's build requirements", _write(work / "build.txt", requirements)
            )
            held = set(_entries(body))
            build = "".join(b for name, b in _entries(build).items() if name not in held)
        uv = compile_("uv, which the build runs", _write(work / "uv.txt", [f"uv=={UV_VERSION}"]))
        sbom = compile_(
            "cyclonedx-bom, which writes the SBOM", _write(work / "sbom.txt", [SBOM_TOOL])
        )

    # A file inside the model, as the image's build stage finds it.
    def in_build_stage(text: str) -> str:
        return text.replace(f"file://{work}/files/", f"file://{BUILD_FILES_DIR}/")

    entries = _entries(in_build_stage(body))
    model_names = set(_entries(in_build_stage(pins)))
    model_part = "".join(block for name, block in entries.items() if name in model_names)
    engine_part = "".join(block for name, block in entries.items() if name not in model_names)
    sections = (BUILD_SECTION + in_build_stage(build)) if build else ""
    sections += MODEL_SECTION + model_part + ENGINE_SECTION + engine_part
    sections += UV_SECTION + uv + SBOM_TOOL_SECTION + sbom
    return Lock(_header(plan, platform, python) + sections, python, platform)


def _files_in(
    plan: BuildPlan, directory: Path, items: Iterable[ModelRequirement] | None = None
) -> list[ModelRequirement]:
    """The model's requirements (or `items`), the files inside the model they name copied to
    `directory` (so that the lock names them by a path that does not depend on the model's)."""
    requirements = []
    for item in plan.requirements if items is None else items:
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


def locked(
    plan: BuildPlan, lock_file: Path | None, platform: str | None, report: Callable[[str], None]
) -> BuildPlan:
    """The plan with the lock its image installs: `lock_file`'s, checked against the plan,
    or a new one for `platform`; its digest goes into the label mlimg.lock."""
    if lock_file is not None:
        lock = read(lock_file)
        check_fits(lock, plan, platform or lock.platform)
        report(f"installing from the lock {lock_file} ({lock.digest})")
    else:
        lock = resolve(plan, report, platform or DEFAULT_PLATFORM)
    return dataclasses.replace(
        plan,
        lock=lock,
        platform=lock.platform,
        labels={**plan.labels, "mlimg.lock": lock.digest},
    )


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
    for tool in (UV_SECTION, SBOM_TOOL_SECTION):
        lock.section(tool)  # present: an offline build installs its tools from the lock too
    environment = lock.model_part + lock.engine_part
    wanted = [(r.requirement, r.source, environment) for r in plan.requirements]
    wanted += [
        (r, "the engine", environment) for r in (*plan.runtime_requirements, *plan.runtime_no_deps)
    ]
    wanted += [
        (r.requirement, "python_env.yaml (build dependencies)", lock.build_part)
        for r in plan.model.build_requirements
    ]
    target = _marker_environment(python, platform)
    for requirement, source, part in wanted:
        pins = {canonicalize_name(name): version for name, version in pins_of(part).items()}
        entries = _entries(part)  # direct references (NAME @ URL) too
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
        "# each section installs as it is: pip install --no-deps --require-hashes -r SECTION\n"
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
