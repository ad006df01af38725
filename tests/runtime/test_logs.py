"""Access lines: held and written in batches, never lost at a flush, a close or a fork."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time

import pytest
from gunicorn.config import Config

from mlimg_runtime.logs import BatchedLineHandler, access_logger_class


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("test", logging.INFO, __file__, 1, message, None, None)


def read_available(fd: int, wait: float = 0.0) -> bytes:
    """What the other end holds, waiting up to `wait` seconds for the first of it."""
    deadline = time.monotonic() + wait
    chunks = []
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            if chunks or time.monotonic() >= deadline:
                return b"".join(chunks)
            time.sleep(0.01)
            continue
        chunks.append(chunk)


@pytest.fixture
def pipe():
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def test_lines_are_held_until_flushed(pipe) -> None:
    read_end, write_end = pipe
    handler = BatchedLineHandler(write_end, interval=60)
    for n in range(3):
        handler.handle(record(f"line {n}"))
    assert read_available(read_end) == b""
    handler.flush()
    assert read_available(read_end) == b"line 0\nline 1\nline 2\n"
    handler.close()


def test_held_lines_are_written_when_the_interval_has_passed(pipe) -> None:
    read_end, write_end = pipe
    handler = BatchedLineHandler(write_end, interval=0.05)
    handler.handle(record("late but there"))
    assert read_available(read_end, wait=5) == b"late but there\n"
    handler.handle(record("and the next batch"))
    assert read_available(read_end, wait=5) == b"and the next batch\n"
    handler.close()


def test_close_writes_what_is_held(pipe) -> None:
    read_end, write_end = pipe
    handler = BatchedLineHandler(write_end, interval=60)
    handler.handle(record("last words"))
    handler.close()
    assert read_available(read_end) == b"last words\n"


def test_no_write_exceeds_the_limit_unless_one_line_does() -> None:
    # A SEQPACKET pair keeps each write(2) a packet of its own: the batches can be seen.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        handler = BatchedLineHandler(ours.fileno(), interval=60, limit=100)
        lines = [f"request {n:02d} " + "x" * 17 for n in range(10)]  # 29 bytes with "\n"
        for line in [*lines, "y" * 150]:
            handler.handle(record(line))
        handler.close()
        theirs.setblocking(False)
        writes = []
        with pytest.raises(BlockingIOError):
            while True:
                writes.append(theirs.recv(65536))
    assert [len(w) for w in writes] == [87, 87, 87, 29, 151]  # 3 lines fit in 100 bytes
    assert b"".join(writes).decode().splitlines() == [*lines, "y" * 150]


def test_lines_held_at_a_fork_are_written_once_and_the_child_writes_its_own(pipe) -> None:
    read_end, write_end = pipe
    handler = BatchedLineHandler(write_end, interval=60)
    handler.handle(record("before the fork"))  # held, with a timer pending in the parent
    pid = os.fork()
    if pid == 0:  # the child: its own lines must still go out after its own interval
        handler.interval = 0.05
        handler.handle(record("from the child"))
        time.sleep(2)
        os._exit(0)  # no flush at exit: only the child's timer can have written its line
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    handler.flush()
    assert read_available(read_end).decode().splitlines() == ["before the fork", "from the child"]
    handler.close()


def access_logger(log_format: str, flush_ms: float):
    cfg = Config()
    cfg.set("accesslog", "-")
    return access_logger_class(log_format, flush_ms)(cfg)


def access_handler(logger) -> logging.Handler:
    """The access log's own handler (pytest may have added capturing ones beside it)."""
    [handler] = [h for h in logger.access_log.handlers if getattr(h, "_gunicorn", False)]
    return handler


def test_access_logger_batches_json_lines_to_stdout(capfd) -> None:
    logger = access_logger("json", 200)
    handler = access_handler(logger)
    assert isinstance(handler, BatchedLineHandler)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations", "REMOTE_ADDR": "1.2.3.4"}
    logger.request(environ, 200, 20, dt.timedelta(milliseconds=2.5))
    handler.flush()
    line = json.loads(capfd.readouterr().out)
    assert line["message"] == "request"
    assert (line["method"], line["path"], line["status"], line["latency_ms"]) == (
        "POST",
        "/invocations",
        200,
        2.5,
    )


def test_access_logger_writes_each_line_at_once_when_told(capfd) -> None:
    logger = access_logger("plain", 0)
    handler = access_handler(logger)
    assert not isinstance(handler, BatchedLineHandler)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/ping", "REMOTE_ADDR": "1.2.3.4"}
    logger.request(environ, 200, 1, dt.timedelta(0))
    assert capfd.readouterr().out == '1.2.3.4 "GET /ping HTTP/1.1" 200 1 0ms\n'


def test_gunicorn_listening_line_names_the_address_the_workers_bind(capfd) -> None:
    """With reuse_port gunicorn's master holds no listener, and its line named none."""
    logger = access_logger("plain", 0)
    logger.cfg.set("bind", ["0.0.0.0:8080"])
    logger.info("Listening at: %s (%s)", "", 1)
    logger.info("Listening at: %s (%s)", "http://127.0.0.1:9", 1)  # a listener of its own
    err = capfd.readouterr().err
    assert "Listening at: http://0.0.0.0:8080 (1)" in err
    assert "Listening at: http://127.0.0.1:9 (1)" in err
