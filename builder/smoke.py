"""The smoke test: run the image, wait for /ping, POST the model's own example to /invocations,
and, for a model that streams, ask for its stream too."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker
from docker.errors import DockerException

from mlimg.errors import SmokeTestFailed
from mlimg_runtime import contract

CONTAINER_PORT = "8080/tcp"
_LOG_LINES = 100
_ANSWER_SECONDS = 60  # how long the example's answer (or its stream, whole) may take


@dataclass(frozen=True)
class SmokeReport:
    ready_seconds: float
    predictions: Any  # None when the model carries no example and only /ping was checked
    chunks: int | None = None  # of the example's stream, for a model that streams


def smoke_test(
    client: docker.DockerClient,
    image: str,
    example: Any,
    report: Callable[[str], None],
    timeout: float = 180.0,
    kind: contract.ModelKind = contract.PYFUNC_KIND,
    stream: bool = False,
) -> SmokeReport:
    """Start `image` with its port on 127.0.0.1 only, check it serves, always remove it.

    The example's answer must have the shape the model's `kind` defines (`{"predictions":
    ...}`, or a chat model's or an agent's own answer for a raw chat payload); with `stream`
    (the model and the engine stream) the example is asked for as a stream too, which must
    give at least one chunk and the end marker."""
    try:
        container = client.containers.run(
            image,
            detach=True,
            ports={CONTAINER_PORT: ("127.0.0.1", None)},
            labels={"mlimg.smoke-test": "true"},
        )
    except DockerException as exc:
        raise SmokeTestFailed(f"the engine could not start a container: {exc}") from None
    try:
        base_url = f"http://127.0.0.1:{_published_port(container)}"
        started = time.monotonic()
        _wait_ready(container, base_url, started + timeout)
        ready = time.monotonic() - started
        report(f"/ping answered 200 after {ready:.1f}s")
        if example is None:
            report(
                "the model carries no input example, so only /ping was checked: log it with "
                "input_example= to have /invocations checked too"
            )
            return SmokeReport(ready, None)
        predictions = _invoke(base_url, example, kind)
        what = (
            "predictions" if not contract.answered_unwrapped(example) else f"a {kind.name}'s answer"
        )
        report(f"/invocations answered 200 with {what}: {_preview(predictions)}")
        chunks = None
        if stream and isinstance(example, dict):
            asked = time.monotonic()
            chunks = _stream(base_url, example)
            report(
                f"/invocations streamed {chunks} chunk(s) and {contract.STREAM_END} in "
                f"{time.monotonic() - asked:.1f}s"
            )
        elif stream:
            report("the model streams, but its example is not a JSON object: no stream was asked")
        return SmokeReport(ready, predictions, chunks)
    except SmokeTestFailed as exc:
        log = _container_log(container)
        raise SmokeTestFailed(f"{load_failure(log) or exc}\n{_log_report(log)}") from None
    except DockerException as exc:
        raise SmokeTestFailed(f"the engine failed during the smoke test: {exc}") from None
    finally:
        with contextlib.suppress(DockerException):
            container.remove(force=True)


def _published_port(container: Any) -> str:
    for _ in range(50):
        container.reload()
        bindings = (container.ports or {}).get(CONTAINER_PORT)
        if bindings:
            return bindings[0]["HostPort"]
        if container.status == "exited":
            break
        time.sleep(0.1)
    raise SmokeTestFailed("the container exited before its port was published")


def _wait_ready(container: Any, base_url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            code = container.attrs.get("State", {}).get("ExitCode")
            raise SmokeTestFailed(f"the container exited with code {code} before /ping answered")
        try:
            with urllib.request.urlopen(f"{base_url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.25)
    raise SmokeTestFailed("/ping did not answer 200 before the deadline")


def _invoke(base_url: str, example: Any, kind: contract.ModelKind) -> Any:
    """The example's answer: its predictions, or a raw chat payload's answer as it is."""
    with _post(base_url, example) as response:
        body = response.read()
    try:
        answer = json.loads(body)
    except ValueError:
        raise SmokeTestFailed(f"/invocations answered 200 but not JSON: {body[:200]!r}") from None
    if contract.answered_unwrapped(example):
        key = kind.answer_key
        if key is not None and (not isinstance(answer, dict) or key not in answer):
            raise SmokeTestFailed(
                f"/invocations answered 200 without {key!r}, which every answer of a "
                f"{kind.name} holds: {body[:200]!r}"
            )
        return answer
    if not isinstance(answer, dict) or "predictions" not in answer:
        raise SmokeTestFailed(f"/invocations answered 200 without predictions: {body[:200]!r}")
    return answer["predictions"]


def _stream(base_url: str, example: dict[str, Any]) -> int:
    """The example asked for as a stream: how many chunks came before the end marker."""
    chunks = 0
    with _post(base_url, {**example, contract.STREAM_KEY: True}) as response:
        media = response.headers.get("Content-Type", "")
        if not media.startswith("text/event-stream"):
            raise SmokeTestFailed(
                f'/invocations answered "stream": true with {media or "no Content-Type"}, '
                "not text/event-stream"
            )
        for line in response:
            if not line.startswith(b"data: "):
                continue
            data = line[len(b"data: ") :].strip()
            if data == contract.STREAM_END.encode():
                if chunks == 0:
                    raise SmokeTestFailed("/invocations streamed no chunk before its end marker")
                return chunks
            try:
                event = json.loads(data)
            except ValueError:
                raise SmokeTestFailed(
                    f"/invocations streamed an event that is not JSON: {data[:200]!r}"
                ) from None
            if isinstance(event, dict) and set(event) == {"error"}:
                detail = data[:500].decode("utf-8", errors="replace")
                raise SmokeTestFailed(
                    f"/invocations's stream failed after {chunks} chunk(s): {detail}"
                )
            chunks += 1
    raise SmokeTestFailed(
        f"/invocations's stream ended after {chunks} chunk(s) without {contract.STREAM_END}"
    )


def _post(base_url: str, payload: Any) -> Any:
    """POST `payload` to /invocations: the open response, or SmokeTestFailed saying why not."""
    request = urllib.request.Request(
        f"{base_url}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        return urllib.request.urlopen(request, timeout=_ANSWER_SECONDS)
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode("utf-8", errors="replace")
        raise SmokeTestFailed(f"/invocations answered {exc.code}: {detail}") from None
    except OSError as exc:
        raise SmokeTestFailed(f"/invocations did not answer: {exc}") from None


def _container_log(container: Any) -> str | None:
    try:
        return container.logs(tail=_LOG_LINES).decode("utf-8", errors="replace").rstrip()
    except DockerException:
        return None


def _log_report(log: str | None) -> str:
    """The container's log without the smoke test's own /ping probes, and a hint when it
    shows a shared library the image lacks."""
    if log is None:
        return "(the container's log could not be read)"
    lines = [line for line in log.splitlines() if not _PROBE.search(line)] or ["(empty)"]
    text = "the container's log:\n" + "\n".join(f"  {line}" for line in lines)
    hint = missing_library_hint(log)
    return f"{text}\n{hint}" if hint else text


# An access line of a /ping probe, which the smoke test makes four times a second.
_PROBE = re.compile(r'"GET /ping HTTP/1\.[01]" \d{3} ')
# The runtime's line for a model that failed to load, and the hint it may add.
_LOAD_FAILURE = re.compile(r"mlimg_runtime: (could not load the model at .*)$", re.MULTILINE)
_LOAD_HINT = re.compile(r"mlimg_runtime: (hint: .*)$", re.MULTILINE)


def load_failure(log: str | None) -> str | None:
    """The model's load failure from the runtime's log, with its hint: the headline of a
    failed smoke test, ahead of the log."""
    failure = _LOAD_FAILURE.search(log or "")
    if failure is None:
        return None
    hint = _LOAD_HINT.search(log or "")
    return failure.group(1) + (f"\n{hint.group(1)}" if hint else "")


# Debian packages that ship shared libraries wheels commonly expect of the system.
_LIBRARY_PACKAGES = {
    "libgomp.so.1": "libgomp1",
    "libGL.so.1": "libgl1",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libsndfile.so.1": "libsndfile1",
    "libgfortran.so.5": "libgfortran5",
    "libquadmath.so.0": "libquadmath0",
    "libxml2.so.2": "libxml2",
    "libX11.so.6": "libx11-6",
}
_MISSING_LIBRARY = re.compile(r"([\w.+-]+\.so(?:\.[\d.]+)?): cannot open shared object file")


def missing_library_hint(log: str) -> str | None:
    """What to do when the model's libraries need a shared library the image lacks."""
    match = _MISSING_LIBRARY.search(log)
    if match is None:
        return None
    library = match.group(1)
    package = _LIBRARY_PACKAGES.get(library)
    how = (
        f"build with --system-package {package}"
        if package
        else "find the Debian package that ships it (apt-file search "
        f"{library}) and build with --system-package NAME"
    )
    return f"hint: the image lacks the system library {library}: {how}"


def _preview(predictions: Any, limit: int = 100) -> str:
    text = json.dumps(predictions)
    return text if len(text) <= limit else text[: limit - 3] + "..."
