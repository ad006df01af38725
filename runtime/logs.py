"""Logging: plain text, or JSON lines (MLIMG_LOG_FORMAT=json) for log collectors.

Access lines carry method, path, status and latency; gunicorn's own messages and the
runtime's go through the same formatter, so a JSON deployment gets only JSON lines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
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


class AccessLogger(Logger):
    """gunicorn's logger, writing JSON lines when MLIMG_LOG_FORMAT=json."""

    json_lines = False

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if self.json_lines:
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(JsonFormatter())

    def access(self, resp: Any, req: Any, environ: dict, request_time: dt.timedelta) -> None:
        # One line per request, formatted here: gunicorn's general access formatter builds
        # a dictionary of twenty-odd atoms for every request, a tenth of a small request's CPU.
        if not getattr(self, "access_log_enabled", True):  # gunicorn < 25 lacks it
            return
        status = getattr(resp, "status_code", None) or str(getattr(resp, "status", "")).split()[0]
        milliseconds = request_time.total_seconds() * 1000
        if self.json_lines:
            fields = {
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "status": int(status) if str(status).isdigit() else status,
                "latency_ms": round(milliseconds, 3),
                "remote": environ.get("REMOTE_ADDR"),
            }
            self.access_log.info("request", extra={"fields": fields})
            return
        version = getattr(req, "version", None) or (1, 1)
        self.access_log.info(
            '%s "%s %s HTTP/%s.%s" %s %s %dms',
            environ.get("REMOTE_ADDR", "-"),
            environ.get("REQUEST_METHOD", "-"),
            getattr(req, "uri", None) or environ.get("PATH_INFO", "-"),
            version[0],
            version[1],
            status,
            getattr(resp, "sent", None) or "-",
            milliseconds,
        )


class JsonAccessLogger(AccessLogger):
    json_lines = True
