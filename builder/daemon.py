"""The one way mlimg talks to the Docker daemon (the Docker engine, not a serving engine):
connect, build, tag, remove, through the Docker SDK."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, ImageNotFound
from docker.utils import parse_repository_tag

from mlimg.errors import BuildFailed, EngineUnavailable, InvalidOption

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
# Docker's reference grammar: an optional registry (a host with a dot or a port, or localhost),
# then lower-case path components.
_REPOSITORY = re.compile(
    r"^(?:(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+)(?::\d+)?/|[a-zA-Z0-9-]+:\d+/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_TAIL_LINES = 40


@dataclass(frozen=True)
class BuiltImage:
    id: str
    seconds: float
    steps: int  # instructions other than FROM
    cached_steps: int


def connect() -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket), checked alive."""
    where = os.environ.get("DOCKER_HOST") or "the local Docker socket"
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except DockerException as exc:
        raise EngineUnavailable(
            f"no Docker engine answers at {where} ({_reason(exc)}); start dockerd, or point "
            "DOCKER_HOST at a running engine"
        ) from None
    return client


def build_image(
    client: docker.DockerClient,
    context: Path,
    build_args: dict[str, str],
    report: Callable[[str], None],
    verbose: bool = False,
    no_cache: bool = False,
) -> BuiltImage:
    """Build `context` with the classic builder, reporting each step as it starts.

    The image is left untagged: the caller tags it once it has passed its smoke test, so a
    failed build never replaces a working tag. Intermediate containers are always removed.
    """
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    started = time.monotonic()
    steps = cached = 0
    image_id = None
    current_step = ""

    try:
        stream = client.api.build(
            path=str(context),
            buildargs=build_args,
            rm=True,
            forcerm=True,
            pull=False,
            nocache=no_cache,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                raise BuildFailed(_build_failure(chunk["error"], tail, current_step))
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            for line in str(chunk.get("stream", "")).splitlines():
                match = _STEP.match(line)
                if match:
                    # FROM names an image and is never "from cache": count the others.
                    steps += not match.group(3).upper().startswith("FROM ")
                    current_step = f"[{match.group(1)}/{match.group(2)}] {_shorten(match.group(3))}"
                    report(current_step)
                elif line.strip() == "---> Using cache":
                    cached += 1
                elif _is_noise(line):
                    continue
                else:
                    tail.append(line)
                    if verbose and line.strip():
                        report(f"    {line}")
    except APIError as exc:
        raise BuildFailed(_build_failure(_reason(exc), tail)) from None
    except DockerException as exc:
        raise BuildFailed(f"the build was interrupted: {_reason(exc)}") from None
    if image_id is None:
        raise BuildFailed(_build_failure("the engine reported no image", tail))
    return BuiltImage(image_id, time.monotonic() - started, steps, cached)


def check_tag(tag: str) -> None:
    """Refuse a malformed image reference before any work is done, not after the build."""
    repository, version = parse_repository_tag(tag)
    if not _REPOSITORY.match(repository) or (version and not _TAG.match(version)):
        raise InvalidOption(
            f"--tag {tag!r} is not a valid image reference (lower-case name[:tag], "
            "e.g. registry.example.com/team/model:1)"
        )


def tag_image(client: docker.DockerClient, image_id: str, tag: str) -> None:
    repository, version = parse_repository_tag(tag)
    try:
        client.images.get(image_id).tag(repository, version or "latest")
    except DockerException as exc:
        message = f"the image was built but could not be tagged {tag}: {_reason(exc)}"
        raise BuildFailed(message) from None


def remove_image(client: docker.DockerClient, image_id: str) -> None:
    """Remove an image that failed, keeping its parent layers as build cache."""
    with contextlib.suppress(ImageNotFound, APIError):
        client.images.remove(image_id, force=True, noprune=True)


def image_size(client: docker.DockerClient, image: str) -> int | None:
    try:
        return int(client.images.get(image).attrs["Size"])
    except DockerException:
        return None


def _build_failure(error: str, tail: collections.deque[str], step: str = "") -> str:
    error = error.strip()
    code = re.search(r"returned a non-zero code: (\d+)", error)
    if code and step:
        error = f"step {step} exited with code {code.group(1)}"
    lines = [f"the image build failed: {error}"]
    log = "\n".join(tail)
    if "pull access denied" in error or "manifest unknown" in error or "not found" in error:
        lines.append(
            "the base image is neither present in the engine nor pullable from a registry; "
            "pull or build it first, or choose another with --base-image"
        )
    if any(sign in log for sign in _RESOLVER_FAILURES):
        lines.append(
            "the model's environment and mlimg's runtime requirements conflict (the "
            "resolver's explanation is below); pin versions that satisfy both"
        )
    if "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log:
        lines.append(
            "TLS verification failed inside the build: pass the CA bundle your network needs "
            "with --ca-cert FILE"
        )
    lines.append("last lines of the build log:")
    lines.extend(f"  {line}" for line in tail)
    return "\n".join(lines)


# What pip ("conflict is caused by") and uv ("No solution found") print when they cannot resolve.
_RESOLVER_FAILURES = (
    "conflicting dependencies",
    "ResolutionImpossible",
    "No solution found",
    "requirements are unsatisfiable",
)


def _is_noise(line: str) -> bool:
    text = line.strip()
    return text.startswith(("---> ", "Removing intermediate container")) or text == "--->"


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _shorten(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
