"""The runtime as a process (`python -m mlimg_runtime`) on loopback: start-up swap, attacks,
deadlines. Each test starts its own server and stops it, even on failure."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import pytest

from tests.attacks import slow_and_silent
from tests.probes import runtime


def poll_ping(port: int, keep_alive: bool, seconds: float = 60) -> tuple[list[int], list[str]]:
    """GET /ping from the moment the port opens until 100 answers of 200 in a row: the
    statuses seen (runs collapsed) and every connection error after the first answer."""
    runs: list[int] = []
    errors: list[str] = []
    connection = None
    in_a_row = 0
    deadline = time.monotonic() + seconds
    while in_a_row < 100 and time.monotonic() < deadline:
        try:
            if connection is None or not keep_alive:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/ping")
            response = connection.getresponse()
            response.read()
            if not keep_alive:
                connection.close()
        except ConnectionRefusedError:
            connection = None
            if runs:
                errors.append("connection refused after the port had answered")
            time.sleep(0.005)
            continue
        except (OSError, http.client.HTTPException) as exc:
            connection = None
            errors.append(repr(exc))
            continue
        if not runs or runs[-1] != response.status:
            runs.append(response.status)
        in_a_row = in_a_row + 1 if response.status == 200 else 0
    return runs, errors


@pytest.mark.parametrize("keep_alive", [False, True], ids=["new-connections", "keep-alive"])
def test_the_start_up_swap_drops_nothing(example_model: Path, keep_alive: bool) -> None:
    """A client polling from the moment the port opens sees 503s, then 200s, and no error."""
    with runtime(example_model, wait=False) as port:
        runs, errors = poll_ping(port, keep_alive)
    assert runs == [503, 200]
    assert errors == []


def test_slow_and_silent_clients_do_not_deny_service(example_model: Path) -> None:
    """200 slowloris and 2,000 silent connections held while a client sends ordinary requests:
    every one answered 200 in time, /ping stays 200. (tests/e2e holds them 30 s on an image.)"""
    with runtime(example_model) as port:
        seen = slow_and_silent(port, example_model / "serving_input_example.json", 8, 200, 2000)
    assert seen.errors == []
    assert set(seen.statuses) == {200}
    assert len(seen.latencies) > 20
    assert seen.quantile(0.5) < 0.1, seen.latencies


def test_the_deadline_covers_decoding(sklearn_model: Path) -> None:
    """A CSV that takes long to decode is answered by its deadline (plus the front end's second),
    not when decoding ends."""
    columns = 200_000
    csv = (",".join(f"c{i}" for i in range(columns)) + "\n") + (
        ",".join("1.5" for _ in range(columns)) + "\n"
    ) * 20
    with runtime(sklearn_model, MLIMG_TIMEOUT="2") as port:
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/invocations", csv.encode(), {"Content-Type": "text/csv"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        seconds = time.monotonic() - started
    assert seconds < 2 + 1.5, (seconds, answer)
    assert response.status in (400, 504), answer
