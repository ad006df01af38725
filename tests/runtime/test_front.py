"""The front end on a real loopback socket: slow, silent and malformed clients, limits, order.

Each test serves a small WSGI app through `front.Front` on an event loop in a thread, and
talks to it with raw sockets, so that what a client sees on the wire is what is checked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from mlimg_runtime.front import Front, Limits

LIMITS = Limits(max_body=1024, request_timeout=2.0, read_timeout=1.5, idle_timeout=1.0)


def echo_app(environ, start_response):
    """Answers with the path and the body's length, after sleeping ?seconds."""
    body = environ["wsgi.input"].read()
    time.sleep(float(environ["QUERY_STRING"] or 0))
    answer = json.dumps({"path": environ["PATH_INFO"], "length": len(body)}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [answer]


@contextlib.contextmanager
def serving(
    app=echo_app, limits: Limits = LIMITS, threads: int = 4, access_log=None
) -> Iterator[int]:
    loop = asyncio.new_event_loop()
    pool = concurrent.futures.ThreadPoolExecutor(threads)
    front = Front(app, limits, pool, loop, access_log=access_log)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    server = loop.run_until_complete(loop.create_server(front.protocol, sock=listener))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(front.stop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        pool.shutdown(wait=False)


def exchange(port: int, data: bytes, half_close: bool = False, timeout: float = 5) -> bytes:
    """Send raw bytes, read until the server closes or `timeout`; what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), raw[:200]
    return int(head.split()[1]), json.loads(body)


def post(port: int, body: bytes = b"{}", path: str = "/invocations") -> tuple[int, dict, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer, time.monotonic() - started


def test_an_ordinary_request_and_keep_alive() -> None:
    with serving() as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for size in (0, 10, 1024):
            connection.request("POST", "/invocations", b"x" * size)
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read()) == {"path": "/invocations", "length": size}
        connection.close()


def test_slow_and_silent_clients_do_not_hold_the_threads() -> None:
    """More trickling and silent connections than threads; ordinary requests still answered.

    The trickling requests get a read timeout longer than the whole test: on a loaded machine
    ten rounds of requests may outlast LIMITS' 1.5 s, and the server's 408 (rightly) closing a
    trickling connection would end the test with a broken pipe, not a finding."""
    patient = replace(LIMITS, read_timeout=60.0)
    with serving(limits=patient, threads=2) as port:
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n"
        try:
            for sock in slow[:20]:  # a whole header, then a body that never completes
                sock.sendall(head + b"[")
            latencies = []
            for byte in range(10):
                for sock in slow[20:]:  # headers trickled a byte at a time
                    sock.sendall(head[byte : byte + 1])
                status, _, seconds = post(port)
                assert status == 200
                latencies.append(seconds)
            assert max(latencies) < 1.0, latencies
        finally:
            for sock in silent + slow:
                sock.close()


def test_a_request_too_slow_to_arrive_is_answered_408() -> None:
    with serving() as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nContent-Length: 10\r\n\r\n12")
            started = time.monotonic()
            raw = sock.recv(65536)
            assert time.monotonic() - started < LIMITS.read_timeout + 1
        status, answer = status_and_json(raw)
        assert status == 408
        assert answer["error_code"] == "BAD_REQUEST"
        assert "did not arrive whole" in answer["message"]


def test_a_silent_connection_is_closed_after_the_idle_timeout() -> None:
    with serving() as port:
        started = time.monotonic()
        assert exchange(port, b"") == b""
        assert LIMITS.idle_timeout - 0.2 < time.monotonic() - started < LIMITS.idle_timeout + 1


@pytest.mark.parametrize(
    ("request_bytes", "status", "words"),
    [
        (  # a transfer coding the server does not decode is refused, not read as plain bytes
            b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            501,
            "Transfer-Encoding",
        ),
        (  # the same, split over two header lines
            b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: gzip\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            501,
            "Transfer-Encoding",
        ),
        (
            b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
            400,
            "chunk size",
        ),
        (b"POST /invocations HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", 413, "limit"),
        (
            b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"x" * 1024
            + b"\r\n"
            + b"1\r\nx\r\n0\r\n\r\n",
            413,
            "limit",
        ),
        (b"POST /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "URL"),
        (b"GET /ping HTTP/1.1\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", 431, "headers"),
        (b"GET /ping HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n", 431, "headers"),
        (b"NONSENSE\r\n\r\n", 400, "malformed"),
        (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "Content"),
    ],
)
def test_malformed_requests_get_a_json_error(request_bytes: bytes, status: int, words: str):
    with serving() as port:
        answer_status, answer = status_and_json(exchange(port, request_bytes))
    assert answer_status == status
    assert words.lower() in answer["message"].lower()
    assert set(answer) == {"error_code", "message"}


def test_an_upgrade_is_declined_by_a_plain_answer_and_the_connection_closes() -> None:
    upgrade = b"GET /ping HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0"
    with serving() as port:
        raw = exchange(port, upgrade)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in raw
    assert raw.count(b"HTTP/1.1") == 1


def test_a_body_shorter_than_its_content_length_is_400_not_predicted() -> None:
    with serving() as port:
        raw = exchange(
            port,
            b'POST /invocations HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"inputs": [1]}',
            half_close=True,
        )
    status, answer = status_and_json(raw)
    assert status == 400
    assert "ended before its body was complete" in answer["message"]


def test_a_body_over_the_limit_is_refused_before_it_is_sent() -> None:
    """With Expect: 100-continue a client learns of 413 without sending the body."""
    with serving() as port, socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        )
        status, _ = status_and_json(sock.recv(65536))
    assert status == 413


def test_expect_100_continue_is_honoured() -> None:
    with serving() as port, socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abcd")
        status, answer = status_and_json(sock.recv(65536))
    assert (status, answer["length"]) == (200, 4)


def test_pipelined_requests_are_answered_in_order() -> None:
    one = b"POST /invocations?0.3 HTTP/1.1\r\nContent-Length: 1\r\n\r\na"
    two = b"POST /invocations HTTP/1.1\r\nContent-Length: 2\r\n\r\nbb"
    bad = b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    with serving() as port:
        raw = exchange(port, one + two + bad)
    answers = [part for part in raw.split(b"HTTP/1.1 ") if part]
    assert [int(part.split()[0]) for part in answers] == [200, 200, 400]
    assert b'"length": 1' in answers[0] and b'"length": 2' in answers[1]


def test_an_application_past_its_deadline_is_answered_504_by_the_front_end() -> None:
    limits = replace(LIMITS, request_timeout=0.5)
    with serving(limits=limits) as port:
        status, answer, seconds = post(port, path="/invocations?5")
    assert status == 504
    assert answer["error_code"] == "DEADLINE_EXCEEDED"
    assert seconds < limits.request_timeout + 1.5


def test_past_the_connection_limit_the_oldest_idle_connection_makes_room() -> None:
    limits = replace(LIMITS, max_connections=50, idle_timeout=30)
    with serving(limits=limits) as port:
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(120)]
        try:
            status, _, seconds = post(port)
            # Answered at once, not after an idle connection's 30 s: the bound leaves room for
            # a loaded machine (1.006 s was seen once in a full CI run on 2 cores).
            assert status == 200 and seconds < 5
            time.sleep(0.2)
            closed = 0
            for sock in silent:
                sock.settimeout(0.01)
                with contextlib.suppress(TimeoutError):
                    closed += sock.recv(1) == b""
            assert closed >= 120 - limits.max_connections
        finally:
            for sock in silent:
                sock.close()


def test_control_paths_are_answered_while_every_thread_is_busy() -> None:
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/invocations":
            time.sleep(1.5)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    with serving(app=app, threads=1) as port:
        busy = threading.Thread(target=post, args=(port,))
        busy.start()
        time.sleep(0.2)
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/ping")
        assert connection.getresponse().status == 200
        assert time.monotonic() - started < 0.5
        busy.join()


def test_every_answer_gets_an_access_line_refusals_too() -> None:
    lines: list[tuple[str, str, int]] = []

    def access_log(environ, status, size, seconds) -> None:
        lines.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], status))

    with serving(access_log=access_log) as port:
        post(port)
        exchange(port, b"POST /invocations?x=1 HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
        exchange(port, b"NONSENSE\r\n\r\n")
        time.sleep(0.1)
    assert lines == [("POST", "/invocations", 200), ("POST", "/invocations", 413), ("-", "-", 400)]


def test_large_bodies_wait_for_room_small_requests_never_do() -> None:
    """A worker holds one large body at a time beyond small ones: a second large upload waits
    until the first is answered, while small requests go through meanwhile."""
    limits = replace(LIMITS, max_body=1024 * 1024, read_timeout=10)
    head = b"POST /invocations HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
    with serving(limits=limits) as port:
        first = socket.create_connection(("127.0.0.1", port), timeout=5)
        first.sendall(head % 300_000 + b"x" * 250_000)  # holds 250 KB, not yet whole
        time.sleep(0.2)
        second = socket.create_connection(("127.0.0.1", port), timeout=5)
        second.sendall(head % 900_000 + b"y" * 900_000)  # sent whole, but no room to read it
        status, _, seconds = post(port, b"small")
        assert status == 200 and seconds < 1
        second.settimeout(0.5)
        with pytest.raises(TimeoutError):
            second.recv(65536)  # still waiting for room
        first.sendall(b"x" * 50_000)
        assert status_and_json(first.recv(65536))[1]["length"] == 300_000
        second.settimeout(5)
        assert status_and_json(second.recv(65536))[1]["length"] == 900_000
        first.close()
        second.close()
