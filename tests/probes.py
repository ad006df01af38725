"""Starting the runtime on loopback, asking a running server whether it is ready, and for
predictions, for every test that starts one."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def runtime(
    model: Path, wait: bool = True, log: Path | None = None, **settings: str
) -> Iterator[int]:
    """`python -m mlimg_runtime` serving `model` on 127.0.0.1 with two workers (and
    `settings`), its output written to `log` (or dropped); its port, once /ping answers 200
    (unless not `wait`). Stopped at the end, even on failure."""
    port = free_port()
    env = {
        **os.environ,
        "MLIMG_MODEL_PATH": str(model),
        "MLIMG_HOST": "127.0.0.1",
        "PORT": str(port),
        "MLIMG_WORKERS": "2",
        **settings,
    }
    command = [sys.executable, "-m", "mlimg_runtime"]
    with answering(command, port, env=env, log=log, wait=wait):
        yield port


@contextlib.contextmanager
def answering(
    command: list[str],
    port: int,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    wait: bool = True,
    timeout: float = 60,
    ready: str = "/ping",
) -> Iterator[subprocess.Popen]:
    """A server started by `command`, once GET `ready` answers 200 on `port` of 127.0.0.1
    (unless not `wait`; `timeout` seconds at most), its output appended to `log` (or
    dropped). Stopped at the end (SIGTERM, then SIGKILL), even on failure."""
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(open(log, "ab")) if log is not None else subprocess.DEVNULL
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=output, stderr=output)
        try:
            deadline = time.monotonic() + timeout
            while wait and not answers_ping(f"http://127.0.0.1:{port}", ready):
                tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
                assert process.poll() is None, f"{command[:4]} exited: {tail}"
                assert time.monotonic() < deadline, f"{command[:4]} never answered {ready}: {tail}"
                time.sleep(0.1)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def answers_ping(base_url: str, path: str = "/ping") -> bool:
    """True when GET /ping (or `path`) answers 200; False while it answers otherwise or not
    at all."""
    try:
        with urllib.request.urlopen(f"{base_url}{path}", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def post(base_url: str, body: bytes, content_type: str, timeout: float = 30) -> tuple[int, object]:
    """POST /invocations; the status and the decoded JSON answer, errors included."""
    request = urllib.request.Request(
        f"{base_url}/invocations", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
