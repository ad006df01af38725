"""Slow and silent clients against a server on loopback, bounded in time and count, while an
ordinary client keeps asking: what that client saw."""

from __future__ import annotations

import contextlib
import http.client
import resource
import socket
import time
from dataclasses import dataclass
from pathlib import Path

_HEAD = b"POST /invocations HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 900\r\n"


@dataclass(frozen=True)
class Seen:
    statuses: list[int]  # of every ordinary request and /ping, in order
    latencies: list[float]  # seconds, of the ordinary predictions, sorted
    errors: list[str]  # connections that failed

    def quantile(self, q: float) -> float:
        return self.latencies[min(len(self.latencies) - 1, int(q * len(self.latencies)))]


def raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        import pytest

        pytest.skip(f"the open-file limit ({hard}) is too low for {wanted} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))


def slow_and_silent(port: int, body: Path, seconds: float, slow: int, silent: int) -> Seen:
    """Hold `silent` connections that send nothing and `slow` ones that trickle a request's
    headers a byte per round, for `seconds`, while posting `body` and GETting /ping in turn
    on fresh connections (about 50 rounds a second at most)."""
    raise_file_limit(slow + silent + 256)
    payload = body.read_bytes()
    quiet = [socket.create_connection(("127.0.0.1", port)) for _ in range(silent)]
    trickling = [socket.create_connection(("127.0.0.1", port)) for _ in range(slow)]
    statuses: list[int] = []
    latencies: list[float] = []
    errors: list[str] = []
    try:
        deadline = time.monotonic() + seconds
        step = 0
        while time.monotonic() < deadline:
            byte = _HEAD[step % len(_HEAD) : step % len(_HEAD) + 1]
            for sock in trickling:
                with contextlib.suppress(OSError):
                    sock.send(byte)
            step += 1
            started = time.monotonic()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request(
                    "POST", "/invocations", payload, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
                latencies.append(time.monotonic() - started)
                connection.request("GET", "/ping")
                ping = connection.getresponse()
                ping.read()
                statuses.append(ping.status)
                connection.close()
            except (OSError, http.client.HTTPException) as exc:
                errors.append(repr(exc))
            time.sleep(0.02)
    finally:
        for sock in quiet + trickling:
            sock.close()
    return Seen(statuses, sorted(latencies), errors)
