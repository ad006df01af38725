"""From a `BuildPlan` to a build context on disk: a Dockerfile and every file it copies.

The context is self-contained (`docker build DIR` needs no mlimg) and appears atomically:
it is written to a temporary sibling and renamed into place, so a failure leaves nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import certifi
import yaml
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

import mlimg
from mlimg.engines import serving_engine
from mlimg.envmanagers import env_manager
from mlimg.errors import OutputExists
from mlimg.lock import SBOM_TOOL_SECTION, UV_SECTION, Lock
from mlimg.model import LocalModel
from mlimg.plan import BuildPlan, has_credentials, redact_url
from mlimg.requirements import BUILD_FILES_DIR, ModelRequirement, in_model_file, relocated
from mlimg.wheelhouse import package_files
from mlimg_runtime import contract

WHEELS_DIR = "/tmp/mlimg/wheels"  # the build stage's copy of a wheelhouse
MARKER = "mlimg/context.json"  # marks a directory as one that mlimg wrote (and may replace)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What the templates read of the image contract (port, user, paths).
_CONTRACT = {
    name: getattr(contract, name)
    for name in ("PORT", "MODEL_PATH", "USER_ID", "USER_NAME", "HOME", "RUNTIME_PATH", "SBOM_PATH")
}


@dataclass(frozen=True)
class RenderedContext:
    plan: BuildPlan
    path: Path
    dockerfile: str
    notices: tuple[str, ...]  # what the user must know to build it by hand


def render_dockerfile(plan: BuildPlan) -> str:
    """The Dockerfile text for a plan; pure, so it can be linted and tested without disk."""
    template = _jinja().get_template(env_manager(plan.env_manager).template)
    engine = serving_engine(plan.engine)
    text = template.render(
        mlimg_version=mlimg.__version__,
        model_uri=plan.model.uri,
        build_image=plan.build_image,
        base_image=plan.base_image,
        ca_bundle="mlimg/ca-bundle.pem" if plan.ca_cert else None,
        index_url_default=_arg_default_url(plan.pip_index_url),
        extra_index_url_default=_arg_default_url(plan.pip_extra_index_url),
        has_build_requirements=bool(plan.model.build_requirements),
        wheels=WHEELS_DIR if plan.wheelhouse is not None else None,
        build_command=build_command(plan),
        keep_tests=plan.keep_tests,
        system_packages=plan.system_packages,
        labels=plan.labels,
        entrypoint=json.dumps(engine.entrypoint),
        healthcheck=json.dumps(engine.healthcheck),
        exposed_ports=" ".join(str(p) for p in (contract.PORT, *dict(engine.ports).values())),
        contract=_CONTRACT,
        contract_env=" ".join(
            f"{name}={value}"
            for name, value in contract.environment(
                port=contract.PORT, model_path=contract.MODEL_PATH
            ).items()
        ),
    )
    return text.rstrip("\n") + "\n"


def build_command(plan: BuildPlan) -> str:
    """How a user builds the context by hand (its directory follows)."""
    options = [] if plan.platform == "linux/amd64" else [f"--platform {plan.platform}"]
    if plan.wheelhouse is not None:
        options.append("--network none")  # as mlimg build does: nothing can reach out
    return " ".join(["docker build", *options, "-t IMAGE"])


def render_context(plan: BuildPlan, dest: Path, link_model_files: bool = False) -> RenderedContext:
    """Write the whole build context to `dest`, replacing an earlier mlimg context there.

    `link_model_files` hard-links the model's files instead of copying them where it can: for
    throwaway contexts (`mlimg build`), never for a directory the user keeps and may edit.
    """
    dest = dest.resolve()
    _check_destination(dest)
    dockerfile = render_dockerfile(plan)
    with _atomic_directory(dest) as tmp:
        (tmp / "Dockerfile").write_text(dockerfile, encoding="utf-8")
        _write_environment(plan, tmp / "env")
        _write_mlimg_files(plan, tmp / "mlimg")
        _copy_tree(plan.model.path, tmp / "model", link=link_model_files)
        if plan.wheelhouse is not None:
            _copy_wheels(plan.wheelhouse, tmp / "wheels", link=link_model_files)
    return RenderedContext(plan, dest, dockerfile, notices=tuple(_notices(plan)))


def _check_destination(dest: Path) -> None:
    if not dest.exists():
        return
    if not dest.is_dir():
        raise OutputExists(f"{dest} exists and is not a directory")
    if any(dest.iterdir()) and not (dest / MARKER).is_file():
        raise OutputExists(
            f"{dest} exists and was not written by mlimg; choose another directory with -d "
            "or remove it"
        )


@contextmanager
def _atomic_directory(dest: Path) -> Iterator[Path]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            os.replace(dest, old / "context")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_environment(plan: BuildPlan, env_dir: Path) -> None:
    env_dir.mkdir()
    model = plan.model
    locked = _lock_of(plan)
    for item in plan.requirements:
        _in_build_stage(item, model.path, env_dir)  # a file inside the model, for its lock entry
    (env_dir / "requirements.lock").write_text(
        "# The model's environment, from the image's lock (mlimg/requirements.lock)\n"
        + locked.model_part,
        encoding="utf-8",
    )
    if model.build_requirements:
        for item in model.build_requirements:
            _in_build_stage(item, model.path, env_dir)
        (env_dir / "build.lock").write_text(
            "# The environment's build requirements, from the image's lock\n" + locked.build_part,
            encoding="utf-8",
        )
    if plan.env_manager == "conda":
        # conda's own packages; the pip section's are installed from the lock.
        conda_yaml = yaml.safe_dump(conda_environment(model, ()), sort_keys=False)
        (env_dir / "conda.yaml").write_text(conda_yaml, encoding="utf-8")


def _lock_of(plan: BuildPlan) -> Lock:
    if plan.lock is None:
        raise ValueError("a build context needs the plan's lock (lock.locked)")
    return plan.lock


def _in_build_stage(item: ModelRequirement, model_dir: Path, env_dir: Path) -> ModelRequirement:
    """A requirement as the build stage sees it: a `file:` URL inside the model (the only
    kind `requirements` lets through) becomes a copy under the context's env/files."""
    inside = in_model_file(item, model_dir)
    if inside is None:
        return item
    copy = env_dir / "files" / inside
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / inside, copy)
    os.chmod(copy, 0o644)
    return relocated(item, BUILD_FILES_DIR, inside)


def conda_environment(
    model: LocalModel, requirements: Sequence[ModelRequirement] | None = None
) -> dict[str, Any]:
    """The model's conda.yaml with its pip section replaced by the checked requirements
    (the model's own unless others are given)."""
    if requirements is None:
        requirements = model.requirements
    source = model.conda_env or {}
    deps = [
        dep
        for dep in source.get("dependencies") or []
        if not (isinstance(dep, dict) and "pip" in dep)
    ]
    if not any(isinstance(dep, str) and dep.startswith("python") for dep in deps):
        deps.insert(0, f"python={model.python_version}")
    if not any(isinstance(dep, str) and dep.startswith("pip") for dep in deps):
        deps.append("pip")
    if requirements:
        deps.append({"pip": [str(req) for req in requirements]})
    return {
        "name": "mlimg-env",
        "channels": source.get("channels") or ["conda-forge"],
        "dependencies": deps,
    }


def _write_mlimg_files(plan: BuildPlan, mlimg_dir: Path) -> None:
    mlimg_dir.mkdir()
    locked = _lock_of(plan)
    (mlimg_dir / "runtime.lock").write_text(
        "# The serving engine's packages, from the image's lock (requirements.lock)\n"
        + locked.engine_part,
        encoding="utf-8",
    )
    (mlimg_dir / "requirements.lock").write_text(locked.text, encoding="utf-8")
    (mlimg_dir / "tools").mkdir()
    for name, marker in (("uv.lock", UV_SECTION), ("sbom-tool.lock", SBOM_TOOL_SECTION)):
        (mlimg_dir / "tools" / name).write_text(
            "# A tool of the build, from the image's lock\n" + locked.section(marker),
            encoding="utf-8",
        )
    with as_file(files("mlimg_runtime")) as runtime_src:
        _copy_tree(Path(runtime_src), mlimg_dir / "mlimg_runtime", link=False)
    if plan.ca_cert is not None:
        # The given CA first, then the public roots, so that a file holding only a corporate
        # root still lets pip reach hosts that are not behind the proxy.
        bundle = plan.ca_cert.read_text(encoding="ascii").rstrip("\n") + "\n"
        bundle += Path(certifi.where()).read_text(encoding="ascii")
        (mlimg_dir / "ca-bundle.pem").write_text(bundle, encoding="ascii")
    marker = {
        "mlimg_version": mlimg.__version__,
        "model_uri": plan.model.uri,
        "env_manager": plan.env_manager,
        "engine": plan.engine,
        "base_image": plan.base_image,
    }
    (mlimg_dir / "context.json").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _copy_wheels(wheelhouse: Path, dest: Path, link: bool) -> None:
    """The wheelhouse's package files (its lock is the image's, written apart)."""
    dest.mkdir()
    for path in package_files(wheelhouse):
        _place_file(str(path), str(dest / path.name), link)


def _place_file(source: str, target: str, link: bool) -> None:
    """A hard link to `source` if asked and it is readable by all, else a copy with a mode the
    image's unprivileged user can read."""
    mode = os.stat(source).st_mode
    if link and mode & stat.S_IROTH:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system: copy instead
    shutil.copyfile(source, target)
    os.chmod(target, 0o755 if mode & stat.S_IXUSR else 0o644)


def _copy_tree(src: Path, dest: Path, link: bool) -> None:
    """Copy a tree with modes the image's unprivileged user can read; skip bytecode caches.

    Symbolic links are copied as links, never followed (`model.check_model_tree` has made
    sure that each stays inside the model); one with an absolute target is made relative, so
    that it still points at the same file inside the image.
    """

    shutil.copytree(
        src,
        dest,
        symlinks=True,
        copy_function=lambda source, target: _place_file(source, target, link),
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    real_src = os.path.realpath(src)
    for directory, subdirs, names in os.walk(dest):
        os.chmod(directory, 0o755)
        for name in subdirs + names:
            entry = os.path.join(directory, name)
            if os.path.islink(entry) and os.path.isabs(os.readlink(entry)):
                inside = os.path.relpath(os.path.realpath(os.readlink(entry)), real_src)
                os.unlink(entry)
                os.symlink(os.path.relpath(os.path.join(dest, inside), directory), entry)


def _notices(plan: BuildPlan) -> Iterator[str]:
    for arg, url in (
        ("PIP_INDEX_URL", plan.pip_index_url),
        ("PIP_EXTRA_INDEX_URL", plan.pip_extra_index_url),
    ):
        if has_credentials(url):
            yield (
                f"the {arg} URL carries credentials, so it was not written to the Dockerfile; "
                f"pass it at build time: --build-arg {arg}='{redact_url(url)}' "
                "(with the real credentials)"
            )


def _arg_default_url(url: str | None) -> str | None:
    return None if not url or has_credentials(url) else url


def _docker_value(value: Any) -> str:
    """A double-quoted Dockerfile value: no control characters, no variable expansion."""
    text = _CONTROL.sub(" ", str(value))
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{text}"'


def _arg_default(value: str | None) -> str:
    return "" if not value else f"={_docker_value(value)}"


def _comment(value: Any) -> str:
    return _CONTROL.sub(" ", str(value))


def _jinja() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(files("mlimg.templates"))),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(
        docker_value=_docker_value,
        arg_default=_arg_default,
        comment=_comment,
        shell_quote=shlex.quote,
    )
    return env
