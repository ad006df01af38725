"""Logging: plain text, or JSON lines (MLIMG_LOG_FORMAT=json) for log collectors.

Access lines carry method, path, status and latency; gunicorn's own messages and the
runtime's go through the same formatter, so a JSON deployment gets only JSON lines. Each worker
writes its access lines in batches, at most MLIMG_LOG_FLUSH_MS late; other lines at once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import select
import sys
import threading
import weakref
from typing import Any

from gunicorn.glogging import Logger

PLAIN_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # No format here names a thread, a source line or a function: skip gathering them for
    # every record, as the logging HOWTO's "Optimization" section shows.
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    logging.captureWarnings(True)  # a library's warnings become log lines in the same format


class BatchedLineHandler(logging.Handler):
    """Writes its lines to a file descriptor in batches, at most `interval` seconds late.

    Access lines written at once cost a write(2) per request, and a wake-up of the reader at
    the other end of the pipe (Docker's log copier), enough to show in p50 at one connection
    (ARCHITECTURE.md, "Measurements"). This is nginx's `access_log ... buffer= flush=`.

    A batch never exceeds PIPE_BUF bytes unless one line does, so that the writes of the
    workers sharing a pipe never interleave inside a line. Held lines are written when the
    handler is flushed or closed (logging does both at a normal exit); a process killed
    outright loses at most `interval` of them.
    """

    def __init__(self, fd: int, interval: float, limit: int = select.PIPE_BUF):
        super().__init__()
        self.fd = fd
        self.interval = interval
        self.limit = limit
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._timer: threading.Timer | None = None
        _BATCHED_HANDLERS.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)
            return
        if self._held_bytes + len(line) > self.limit:
            self._write_held()
        self._held.append(line)
        self._held_bytes += len(line)
        if self._timer is None:
            self._timer = threading.Timer(self.interval, self._on_timer)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        with self.lock:
            self._write_held()

    def close(self) -> None:
        self.flush()
        super().close()

    def _on_timer(self) -> None:
        with self.lock:
            self._timer = None
            self._write_held()

    def _write_held(self) -> None:  # the caller holds self.lock
        if not self._held:
            return
        data = memoryview(b"".join(self._held))
        self._held.clear()
        self._held_bytes = 0
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:  # the reader is gone: nothing to tell, and nowhere to tell it
            pass


_BATCHED_HANDLERS: weakref.WeakSet[BatchedLineHandler] = weakref.WeakSet()


def _before_fork() -> None:  # lines held at a fork would be written by both processes
    for handler in list(_BATCHED_HANDLERS):
        handler.flush()


def _in_child() -> None:  # the timer threads stayed in the parent
    for handler in list(_BATCHED_HANDLERS):
        handler._timer = None


os.register_at_fork(before=_before_fork, after_in_child=_in_child)


class AccessLogger(Logger):
    """gunicorn's logger: JSON lines when MLIMG_LOG_FORMAT=json, access lines written in batches.

    `flush_interval` (seconds, from MLIMG_LOG_FLUSH_MS) is how late an access line may be
    written; 0 writes each one at once, as gunicorn does.
    """

    json_lines = False
    flush_interval = 0.0

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if self.flush_interval > 0 and cfg.accesslog == "-":
            for handler in list(self.access_log.handlers):
                if getattr(handler, "_gunicorn", False):
                    batched = BatchedLineHandler(sys.stdout.fileno(), self.flush_interval)
                    batched.setFormatter(handler.formatter)
                    batched._gunicorn = True  # gunicorn's own re-setup removes it  # type: ignore[attr-defined]
                    self.access_log.removeHandler(handler)
                    self.access_log.addHandler(batched)
        if self.json_lines:
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(JsonFormatter())

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        # With reuse_port each worker binds the address itself and gunicorn's master holds no
        # listener, so its "Listening at: %s (%s)" would name none: name the address bound.
        if msg.startswith("Listening at:") and args and not args[0]:
            args = (",".join(f"http://{address}" for address in self.cfg.bind), *args[1:])
        super().info(msg, *args, **kwargs)

    def request(
        self, environ: dict[str, Any], status: int, size: int, request_time: dt.timedelta
    ) -> None:
        """One access line for an answered request (the front end calls this)."""
        if not getattr(self, "access_log_enabled", True):  # gunicorn < 25 lacks it
            return
        milliseconds = request_time.total_seconds() * 1000
        if self.json_lines:
            fields = {
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "status": status,
                "latency_ms": round(milliseconds, 3),
                "remote": environ.get("REMOTE_ADDR"),
            }
            self.access_log.info("request", extra={"fields": fields})
            return
        self.access_log.info(
            '%s "%s %s %s" %s %s %dms',
            environ.get("REMOTE_ADDR", "-"),
            environ.get("REQUEST_METHOD", "-"),
            environ.get("RAW_URI") or environ.get("PATH_INFO", "-"),
            environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
            status,
            size,
            milliseconds,
        )


def access_logger_class(log_format: str, flush_ms: float) -> type[AccessLogger]:
    """The logger class gunicorn is given (it takes a class and makes the instance itself)."""
    settings = {"json_lines": log_format == "json", "flush_interval": flush_ms / 1000}
    return type("ConfiguredAccessLogger", (AccessLogger,), settings)
