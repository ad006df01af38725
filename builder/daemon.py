"""The one way mlimg talks to the Docker daemon (the Docker engine, not a serving engine):
connect, build, tag, push, inspect, remove, through the Docker SDK."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.auth import load_config, resolve_repository_name
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.utils import parse_repository_tag

from mlimg.errors import BuildFailed, EngineUnavailable, InvalidOption, PushFailed

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


def check_platform(client: docker.DockerClient, platform: str) -> None:
    """Refuse, before building, an image for a platform this engine cannot run (its smoke
    test could not start it)."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(client.info().get("Architecture", ""))
    if arch is not None and platform != f"linux/{arch}":
        raise InvalidOption(
            f"this Docker engine runs linux/{arch} and cannot build or smoke-test a {platform} "
            f"image: write its build context with mlimg generate-dockerfile --platform "
            f"{platform} and build it on a {platform} machine"
        )


def ensure_base_image(
    client: docker.DockerClient, image: str, platform: str, report: Callable[[str], None]
) -> None:
    """Pull the base image unless the engine has it, so that one that cannot be had is named
    before the build starts, with the ways to provide it."""
    try:
        client.images.get(image)
        return
    except ImageNotFound:
        pass
    except DockerException as exc:
        raise EngineUnavailable(f"the Docker engine did not answer: {_reason(exc)}") from None
    report(f"pulling the base image {image}")
    try:
        client.images.pull(image, platform=platform)
    except DockerException as exc:
        raise BuildFailed(_base_image_missing(image, _reason(exc))) from None


def _base_image_missing(image: str, reason: str) -> str:
    return (
        f"the base image {image} is not in this Docker engine and could not be pulled "
        f"({reason});\nprovide it one of these ways: run docker pull {image} where a registry "
        "is reachable (or docker load an image saved with docker save), give dockerd a "
        "registry mirror (registry-mirrors in /etc/docker/daemon.json), or name an image the "
        "engine has with --base-image IMAGE"
    )


def build_image(
    client: docker.DockerClient,
    context: Path,
    build_args: dict[str, str],
    report: Callable[[str], None],
    verbose: bool = False,
    no_cache: bool = False,
    network: str | None = None,
) -> BuiltImage:
    """Build `context` with the classic builder, reporting each step as it starts; `network`
    "none" gives its steps no network at all.

    The image is left untagged: the caller tags it once it has passed its smoke test, so a
    failed build never replaces a working tag. Intermediate containers are always removed.
    """
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    started = time.monotonic()
    steps = cached = 0
    image_id = None
    current_step = step_text = ""

    try:
        stream = client.api.build(
            path=str(context),
            buildargs=build_args,
            rm=True,
            forcerm=True,
            pull=False,
            nocache=no_cache,
            network_mode=network,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                raise BuildFailed(_build_failure(chunk["error"], tail, step_text, network))
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            for line in _ANSI.sub("", str(chunk.get("stream", ""))).splitlines():
                if not line.strip():
                    continue
                match = _STEP.match(line)
                if match:
                    # FROM names an image and is never "from cache": count the others.
                    steps += not match.group(3).upper().startswith("FROM ")
                    step_text = match.group(3)
                    current_step = f"[{match.group(1)}/{match.group(2)}] {_shorten(step_text)}"
                    report(current_step)
                elif line.strip() == "---> Using cache":
                    cached += 1
                elif _is_noise(line):
                    continue
                else:
                    tail.append(line)
                    if verbose:
                        report(f"    {line}")
    except APIError as exc:
        raise BuildFailed(_build_failure(_reason(exc), tail, step_text, network)) from None
    except DockerException as exc:
        raise BuildFailed(f"the build was interrupted: {_reason(exc)}") from None
    if image_id is None:
        raise BuildFailed(_build_failure("the engine reported no image", tail))
    return BuiltImage(image_id, time.monotonic() - started, steps, cached)


def check_tag(tag: str, option: str = "--tag") -> None:
    """Refuse a malformed image reference before any work is done, not after the build."""
    repository, version = parse_repository_tag(tag)
    if not _REPOSITORY.match(repository) or (version and not _TAG.match(version)):
        raise InvalidOption(
            f"{option} {tag!r} is not a valid image reference (lower-case name[:tag], "
            "e.g. registry.example.com/team/model:1)"
        )


def check_pushable(reference: str) -> str:
    """The registry a reference names, or a refusal: a reference with no registry in it
    (`mymodel:1`) would go to Docker Hub, which a user who meant their own registry never wants."""
    check_tag(reference, "image")
    repository, _ = parse_repository_tag(reference)
    first = repository.split("/", 1)[0]
    if "/" not in repository or not ("." in first or ":" in first or first == "localhost"):
        raise InvalidOption(
            f"{reference!r} names no registry: tag the image REGISTRY/NAME:TAG (e.g. "
            f"registry.example.com/team/{repository.rsplit('/', 1)[-1]}:1, or "
            "docker.io/USER/NAME:TAG for Docker Hub) before pushing it"
        )
    return resolve_repository_name(repository)[0]


@dataclass(frozen=True)
class PushedImage:
    reference: str  # REPOSITORY:TAG, as pushed
    digest: str  # sha256:..., the registry's digest of the manifest

    @property
    def pinned(self) -> str:
        """The reference a deployment should use: REPOSITORY@DIGEST, immune to a moved tag."""
        return f"{parse_repository_tag(self.reference)[0]}@{self.digest}"


def push_image(
    client: docker.DockerClient, reference: str, report: Callable[[str], None]
) -> PushedImage:
    """Push a local image with the credentials the user's Docker config holds (`docker login`,
    credential helpers, DOCKER_CONFIG), reporting each layer; the local image is never changed."""
    registry = check_pushable(reference)
    repository, version = parse_repository_tag(reference)
    version = version or "latest"
    reference = f"{repository}:{version}"
    try:
        client.images.get(reference)
    except ImageNotFound:
        raise InvalidOption(f"no local image {reference}: build or tag it first") from None
    except DockerException as exc:
        raise PushFailed(f"cannot read the local image {reference}: {_reason(exc)}") from None
    progress = _PushProgress(report)
    digest = None
    try:
        for event in client.api.push(repository, version, stream=True, decode=True):
            if "error" in event:
                raise PushFailed(_push_failure(reference, registry, str(event["error"])))
            aux = event.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
            progress.update(event)
    except APIError as exc:
        raise PushFailed(_push_failure(reference, registry, _reason(exc))) from None
    except DockerException as exc:
        raise PushFailed(f"the push of {reference} was interrupted: {_reason(exc)}") from None
    if digest is None:
        raise PushFailed(f"the registry {registry} reported no digest for {reference}")
    report(progress.summary())
    return PushedImage(reference, digest)


class _PushProgress:
    """One line per layer as it finishes, and one as a large layer starts, since a layer of
    hundreds of megabytes can take minutes."""

    _LARGE = 20_000_000

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report
        self.sizes: dict[str, int] = {}
        self.started: set[str] = set()
        self.pushed: set[str] = set()
        self.existing: set[str] = set()

    def update(self, event: dict) -> None:
        layer, status = event.get("id"), str(event.get("status", ""))
        if not layer:
            return
        total = (event.get("progressDetail") or {}).get("total")
        if total:
            self.sizes[layer] = int(total)
        if status == "Pushing" and layer not in self.started:
            self.started.add(layer)
            if self.sizes.get(layer, 0) >= self._LARGE:
                self.report(f"  pushing layer {layer} ({_megabytes(self.sizes[layer])})")
        elif status == "Pushed":
            self.pushed.add(layer)
            self.report(f"  pushed layer {layer} ({_megabytes(self.sizes.get(layer, 0))})")
        elif status == "Layer already exists" or status.startswith("Mounted from"):
            self.existing.add(layer)

    def summary(self) -> str:
        sent = sum(self.sizes.get(layer, 0) for layer in self.pushed)
        return (
            f"pushed {len(self.pushed)} layers ({_megabytes(sent)}); "
            f"{len(self.existing)} already in the registry"
        )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _push_failure(reference: str, registry: str, error: str) -> str:
    error = error.strip().splitlines()[0] if error.strip() else "no reason given"
    lowered = error.lower()
    if "no basic auth credentials" in lowered or (
        ("unauthorized" in lowered or "authentication required" in lowered)
        and not _has_credentials(registry)
    ):
        return (
            f"the registry {registry} asks for credentials and your Docker config has none for "
            f"it: run `docker login {registry}` (or set DOCKER_CONFIG to a config that has "
            f"them), then push again ({error})"
        )
    if "unauthorized" in lowered or "authentication required" in lowered:
        return (
            f"the registry {registry} refused the credentials your Docker config holds for it: "
            f"run `docker login {registry}` again ({error})"
        )
    if "denied" in lowered:
        return f"the registry {registry} denied pushing {reference}: {error}"
    if any(sign in lowered for sign in _UNREACHABLE):
        return (
            f"the registry {registry} cannot be reached from the Docker engine ({error}); "
            "check its address and that the engine's network (or proxy) reaches it"
        )
    return f"the push of {reference} to {registry} failed: {error}"


_UNREACHABLE = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "dial tcp",
    "server gave http response to https client",
    "certificate",
)


def _has_credentials(registry: str) -> bool:
    """Whether the Docker config (the one the client read: DOCKER_CONFIG or ~/.docker) holds
    credentials for the registry, in its own entries or through a credential helper."""
    try:
        return bool(load_config().resolve_authconfig(registry))
    except DockerException:
        return False


def image_labels(client: docker.DockerClient, reference: str) -> dict[str, str] | None:
    """The labels of a local image, or None when there is no such image."""
    try:
        return dict(client.images.get(reference).labels or {})
    except ImageNotFound:
        return None


def image_file(client: docker.DockerClient, reference: str, path: str) -> bytes | None:
    """A file's content in a local image (through a container created, never started, and
    removed), or None when the image has no such file."""
    container = client.containers.create(reference)
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.next()
            found = archive.extractfile(member) if member is not None else None
            return found.read() if found is not None else None
    except NotFound:
        return None
    finally:
        container.remove(force=True)


def repo_digest(client: docker.DockerClient, reference: str) -> str | None:
    """REPOSITORY@DIGEST for a local image that was pushed to or pulled from the reference's
    repository, or None when the engine knows no such digest."""
    repository, _ = parse_repository_tag(reference)
    try:
        digests = client.images.get(reference).attrs.get("RepoDigests") or []
    except DockerException:
        return None
    return next((d for d in digests if d.split("@", 1)[0] == repository), None)


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


def _build_failure(
    error: str, tail: collections.deque[str], step: str = "", network: str | None = None
) -> str:
    """The message for a failed build: what failed, the likeliest cause when the log shows
    one, and the log's last lines. `step` is the text of the Dockerfile step that failed."""
    error = error.strip()
    base = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)", step, re.IGNORECASE)
    if base:
        return _base_image_missing(base.group(1), error)
    code = re.search(r"returned a non-zero code: (\d+)", error)
    if code and step:
        error = f"the step {_shorten(step)} exited with code {code.group(1)}"
    lines = [f"the image build failed: {error}"]
    log = "\n".join(tail)
    found = _MISSING_FILE.search(log)
    missing = found and (found.group(1) or found.group(2))
    if missing and network == "none":
        lines.append(
            f"the wheelhouse has no file for {missing}: fill it again with mlimg wheels for "
            "this model"
        )
    elif missing:
        lines.append(f"the package index has no file for {missing}")
    elif any(sign in log for sign in _RESOLVER_FAILURES):
        lines.append(
            f"{_installed_by(step)} cannot be installed together (the resolver's explanation "
            "is below): change the pins that it names"
        )
    if "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log:
        lines.append(
            "TLS verification failed inside the build: pass the CA bundle your network needs "
            "with --ca-cert FILE"
        )
    if tail:
        lines.append("last lines of the build log:")
        lines.extend(f"  {line}" for line in tail)
    return "\n".join(lines)


# Whose requirements a step installs, by the file of the build context that it reads.
_INSTALLS = (
    ("env/conda.yaml", "the model's conda environment (conda.yaml)"),
    ("env/build.lock", "the model's build dependencies (python_env.yaml)"),
    ("env/requirements.lock", "the model's requirements"),
    ("runtime.lock", "the serving engine's packages"),
    ("tools/", "the build's own tools"),
)


def _installed_by(step: str) -> str:
    return next((whose for path, whose in _INSTALLS if path in step), "the requirements")


# What pip and uv print when no file of a pinned version is found, naming NAME==VERSION.
_MISSING_FILE = re.compile(
    r"No matching distribution found for (\S+)"
    r"|was not found in the provided package locations and you require (\S+?)[,.]? "
)
# The colours the engine gives a step's stderr.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What pip ("conflict is caused by") and uv ("No solution found") print when they cannot resolve.
_RESOLVER_FAILURES = (
    "conflicting dependencies",
    "ResolutionImpossible",
    "No solution found",
    "requirements are unsatisfiable",
    "Could not solve for environment specs",  # micromamba
)


def _is_noise(line: str) -> bool:
    text = line.strip()
    return text.startswith(("---> ", "Removing intermediate container")) or text == "--->"


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _shorten(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
