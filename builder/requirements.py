"""The one place where requirement lines are read and checked.

Every line that reaches pip inside the image passes through `parse_requirements` first: only
PEP 508 requirements (names, extras, specifiers, markers, `name @ URL`) and `-r` includes of
files inside the model directory are accepted, so nothing a model carries can smuggle a pip
option or a shell fragment into the build.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from packaging.requirements import InvalidRequirement as _PackagingInvalid
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mlimg.errors import InvalidRequirement, RequirementConflict

_INCLUDE_OPTIONS = ("-r", "--requirement")
# Where a direct reference (`name @ URL`) may point: the network, or a file inside the model.
_URL_SCHEMES = ("https", "http", "git+https", "git+http")
_MAX_INCLUDE_DEPTH = 5


@dataclass(frozen=True)
class ModelRequirement:
    """One requirement of the model's environment and where it was written."""

    requirement: Requirement
    source: str  # "requirements.txt line 3", for messages

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    def __str__(self) -> str:
        return str(self.requirement)


def parse_requirement(line: str, source: str, base_dir: Path | None = None) -> ModelRequirement:
    """Parse one PEP 508 requirement, or say which line is not one. A direct reference must
    be an http(s) URL, or a file URL inside `base_dir` (the model directory) when one is given."""
    try:
        requirement = ModelRequirement(Requirement(line), source)
    except _PackagingInvalid as exc:
        raise InvalidRequirement(
            f"{source}: {_shorten(line)!r} is not a valid PEP 508 requirement ({exc})"
        ) from None
    url = requirement.requirement.url
    if url is not None:
        _check_direct_reference(url, source, base_dir)
    return requirement


# Where an image's build stage finds the files inside the model that requirements name.
BUILD_FILES_DIR = "/tmp/mlimg/env/files"


def in_model_file(item: ModelRequirement, model_dir: Path) -> Path | None:
    """Where in the model the file a `file:` requirement names lies (a relative path), or None
    for any other requirement (`parse_requirement` lets only files inside the model through)."""
    url = item.requirement.url
    path = file_url_path(url) if url else None
    if path is None:
        return None
    return Path(os.path.relpath(os.path.realpath(path), os.path.realpath(model_dir)))


def relocated(item: ModelRequirement, directory: str, inside: Path) -> ModelRequirement:
    """A `file:` requirement pointing at `inside` under `directory` instead."""
    url = item.requirement.url or ""
    new_url = f"file://{directory}/{quote(inside.as_posix())}"
    requirement = Requirement(str(item.requirement).replace(url, new_url, 1))
    return ModelRequirement(requirement, item.source)


def file_url_path(url: str) -> Path | None:
    """The local path a `file:` URL names, or None for any other URL."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    return Path(unquote(parts.path))


def _check_direct_reference(url: str, source: str, base_dir: Path | None) -> None:
    scheme = urlsplit(url).scheme.lower()
    path = file_url_path(url)
    if path is not None and base_dir is not None:
        real = os.path.realpath(path)
        if Path(real).is_relative_to(os.path.realpath(base_dir)) and os.path.isfile(real):
            return
        raise InvalidRequirement(
            f"{source}: {_shorten(url)!r} is a file outside the model directory (or no file); "
            "a direct reference may name a file inside the model or an http(s) URL"
        )
    if scheme not in _URL_SCHEMES:
        raise InvalidRequirement(
            f"{source}: {_shorten(url)!r} is not an http(s) URL; a direct reference may name "
            "a file inside the model or an http(s) URL"
        )


def parse_requirements(
    lines: Iterable[str], source: str, base_dir: Path, _depth: int = 0
) -> list[ModelRequirement]:
    """Parse requirement lines as pip would read a requirements file, minus pip's options.

    `-r FILE` includes are followed when FILE lies inside `base_dir` (the model directory);
    any other option, and anything that is not PEP 508, is refused with the line named.
    """
    result: list[ModelRequirement] = []
    for number, raw in enumerate(lines, start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        where = f"{source} line {number}"
        if line.startswith("-"):
            result.extend(_parse_include(line, where, base_dir, _depth))
        else:
            result.append(parse_requirement(line, where, base_dir))
    return result


def read_requirements_file(path: Path, base_dir: Path, _depth: int = 0) -> list[ModelRequirement]:
    source = path.relative_to(base_dir).as_posix()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequirement(f"cannot read {source}: {exc}") from None
    return parse_requirements(text.splitlines(), source, base_dir, _depth)


def check_runtime_compatible(
    model_requirements: Iterable[ModelRequirement], runtime_requirements: Iterable[Requirement]
) -> None:
    """Refuse a runtime requirement that would move a version the model pins with `==`.

    Conflicts that only show through transitive dependencies are caught by pip at build time,
    where the image installs the runtime under a constraint of everything the model installed.
    """
    pins = {req.name: req for req in model_requirements if _pinned_version(req.requirement)}
    for runtime_req in runtime_requirements:
        model_req = pins.get(canonicalize_name(runtime_req.name))
        if model_req is None:
            continue
        version = _pinned_version(model_req.requirement)
        if not runtime_req.specifier.contains(version, prereleases=True):
            raise RequirementConflict(
                f"the model requires {model_req} ({model_req.source}) but mlimg's runtime "
                f"requires {runtime_req}; pin a version of {runtime_req.name} that satisfies both"
            )


def _pinned_version(requirement: Requirement) -> str | None:
    specs = list(requirement.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


def _parse_include(line: str, where: str, base_dir: Path, depth: int) -> list[ModelRequirement]:
    option, _, target = line.partition(" ")
    if "=" in option:
        option, _, target = line.partition("=")
    target = target.strip()
    if option not in _INCLUDE_OPTIONS or not target:
        raise InvalidRequirement(
            f"{where}: {_shorten(line)!r} is a pip option, not a requirement; only '-r FILE' "
            "includes are allowed in a model's requirements (give indexes with "
            "--pip-index-url / --pip-extra-index-url)"
        )
    if depth >= _MAX_INCLUDE_DEPTH:
        raise InvalidRequirement(f"{where}: requirement files include each other too deeply")
    root = base_dir.resolve()
    path = (root / target).resolve()
    if not path.is_relative_to(root):
        raise InvalidRequirement(f"{where}: {target!r} lies outside the model directory")
    if not path.is_file():
        raise InvalidRequirement(f"{where}: included file {target!r} does not exist")
    return read_requirements_file(path, root, depth + 1)


def _strip_comment(line: str) -> str:
    # pip treats " #" (whitespace then hash) as the start of a comment; a leading "#" too.
    line = line.strip()
    if line.startswith("#"):
        return ""
    for marker in (" #", "\t#"):
        index = line.find(marker)
        if index != -1:
            line = line[:index]
    return line.strip()


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
