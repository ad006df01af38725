"""The front end: one event loop per worker reads whole requests, then hands them to threads.

A connection costs the loop a parser and a buffer, not a thread. Slow clients (headers or a
body trickled byte by byte) and silent ones wait in the loop, bounded in time and size, and a
request reaches a prediction thread only once it has fully arrived: with gunicorn's gthread
workers, 16 slowloris connections held every thread and the server answered nobody.

Parsing is llhttp's (httptools), the C parser of Node.js that uvicorn uses. Every answer the
front end gives itself (a malformed request, a body over the limit, a transfer coding it does
not decode, a client too slow) is in the scoring protocol's JSON error shape, and a request
that the application has not answered by its deadline plus a second is answered 504 here.

The application behind it is plain WSGI: every POST (/invocations, OpenAI's routes) runs in
the thread pool; /ping, /health, /version and other GETs are answered in the loop itself, so
that health checks stay answered while every thread predicts.

An answer without Content-Length whose body is not a list is streamed (chunked, the WSGI
convention): its head at once, then each chunk of its body as the application gives it, every
`next()` of the body in the thread pool, so that a stream holds a thread only while its next
chunk is computed. A client that does not read gets back-pressure: the body is not advanced
while the connection's unsent output is over `_STREAM_BUFFER`, so a stream's memory stays
bounded; a client that leaves (or has not read for `stream_timeout`) ends the stream, and the
body is closed (a generator's `finally` runs) once no `next()` of it is running.
"""

from __future__ import annotations

import asyncio
import http
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from mlimg_runtime.contract import default

log = logging.getLogger("mlimg_runtime")

_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()
    for status in http.HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_SECONDS = 2.0  # how long the rest of a refused request is read and dropped
_LATE_GRACE = 1.0  # past the deadline, the front end answers 504 if the application has not
_DRAIN_SECONDS = 1.0  # how long a stopping worker keeps an idle connection open
# Unsent output a stream may have before its body waits for the client to read some of it.
_STREAM_BUFFER = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may cost the front end before it reaches the application."""

    max_body: int  # bytes (MLIMG_MAX_REQUEST_BYTES): 413 beyond
    request_timeout: float  # seconds from arrival to answer (MLIMG_TIMEOUT): 504 beyond
    read_timeout: float = 60.0  # seconds from a request's first byte to its last: 408 beyond
    idle_timeout: float = 5.0  # seconds a connection may stay open with no request under way
    max_header_bytes: int = 64 * 1024  # request line and headers together: 431 beyond
    max_url_bytes: int = 8 * 1024  # 414 beyond
    max_connections: int = 4096  # per worker; beyond, the oldest connection not answered yet goes
    # seconds a stream waits for its body's next chunk, or for the client to read (the setting)
    stream_timeout: float = float(default("stream_timeout"))  # type: ignore[arg-type]


class Rejected(Exception):
    """A request the front end answers itself, with `status` and `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


AccessLog = Callable[[dict[str, Any], int, int, float], None]


class Front:
    """One worker's connections, the application they reach and the threads it runs in."""

    def __init__(
        self,
        app: Callable[..., Any],
        limits: Limits,
        pool: Any,
        loop: asyncio.AbstractEventLoop,
        access_log: AccessLog | None = None,
        server_name: tuple[str, int] = ("127.0.0.1", 8080),
    ) -> None:
        self.app = app
        self.limits = limits
        self.pool = pool
        self.loop = loop
        self.access_log = access_log
        self.server_name = server_name
        self.connections: dict[Connection, None] = {}  # oldest first
        self.stopping = False
        # One large body (over _SMALL_BODY) at a time per worker, from its first bytes to its
        # answer; other large uploads pause until then. Small requests never wait.
        self.large: Connection | None = None
        self.waiting: dict[Connection, None] = {}  # paused for the large body's turn
        self.streams: set[asyncio.Task] = set()  # streamed answers under way

    def protocol(self) -> Connection:
        return Connection(self)

    def opened(self, connection: Connection) -> None:
        self.connections[connection] = None
        if len(self.connections) > self.limits.max_connections:
            # Silent and slow clients must not lock legitimate ones out: the oldest
            # connection with nothing for the application makes room.
            for other in self.connections:
                if other is not connection and not other.busy:
                    self.closed(other)
                    other.close()
                    break

    def closed(self, connection: Connection) -> None:
        self.connections.pop(connection, None)
        self.waiting.pop(connection, None)
        self.release_large(connection)

    def take_large(self, connection: Connection) -> bool:
        """Whether `connection` may read on a large body now; if not, it waits its turn."""
        if self.large is None or self.large is connection:
            self.large = connection
            return True
        self.waiting[connection] = None
        return False

    def release_large(self, connection: Connection) -> None:
        if self.large is not connection:
            return
        self.large = None
        if self.waiting:  # the oldest waiting upload reads on (and takes the turn)
            waiting = next(iter(self.waiting))
            del self.waiting[waiting]
            self.large = waiting
            waiting.room()

    def stop(self) -> None:
        """Graceful stop: every connection closes after its next answer, and an idle one
        after at most `_DRAIN_SECONDS`. Closing an idle keep-alive connection at once would
        reset a request the client is sending on it at that moment (a poller of /ping saw
        one or two resets at each start-up swap that way)."""
        self.stopping = True
        for connection in list(self.connections):
            connection.drain()

    @property
    def open(self) -> int:
        return len(self.connections)


class _Incoming:
    """A request being read: its line, headers and body so far."""

    __slots__ = ("body", "body_size", "headers", "started", "url")

    def __init__(self, started: float) -> None:
        self.started = started
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0


class Connection(asyncio.Protocol):
    """One client connection: parse, refuse early, dispatch whole requests one at a time."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.limits = front.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote = "-"
        self.incoming: _Incoming | None = None
        self.header_bytes = 0  # of the request line and headers being read
        self.in_body = False
        self.eof = False  # the client has stopped sending
        self.refusal: tuple[int, str] | None = None  # to give once the answer under way is out
        self.ready: list[tuple[dict[str, Any], bool]] = []  # whole requests not yet answered
        self.busy = False  # a request is with the application
        self.lingering = False  # refused: what still comes is read and dropped
        self.timer: asyncio.TimerHandle | None = None
        self.streaming = False  # a streamed answer is under way
        self.write_paused = False  # the transport's unsent output is over its limit
        self.writable: asyncio.Event | None = None  # for a stream: set when it is not

    # asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.remote = str(peer[0])
        self.front.opened(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.front.closed(self)
        self.transport = None
        if self.writable is not None:
            self.writable.set()  # a stream waiting for the client to read learns it has gone

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.writable is not None:
            self.writable.clear()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.writable is not None:
            self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.lingering or self.transport is None:
            return
        if not self.in_body:  # llhttp holds a header being read: count it before it is whole
            self.header_bytes += len(data)
        if self.streaming and self.transport is not None:
            # Reading stays on during a stream only to see the client leave: a request sent
            # meanwhile is read and held, and the rest waits in the kernel.
            self.transport.pause_reading()
        try:
            self.parser.feed_data(data)
            if not self.in_body and self.header_bytes > self.limits.max_header_bytes:
                raise Rejected(431, _HEADERS_TOO_LARGE)
        except Rejected as rejected:
            self.refuse(rejected.status, rejected.message)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Rejected):
                self.refuse(cause.status, cause.message)
            else:
                log.error("the front end failed on a request: %r", cause)
                self.refuse(500, "internal error")
        except httptools.HttpParserUpgrade:
            # An upgrade is declined by answering the request as plain HTTP (RFC 9110
            # 7.8); what follows it on the connection is another protocol: it closes after.
            self.lingering = True
            self.eof = True
            if not self.busy and not self.ready:
                self.close()
        except httptools.HttpParserError as exc:
            self.refuse(400, f"malformed HTTP request: {_first_line(exc)}")

    def eof_received(self) -> bool:
        self.eof = True
        if self.streaming:  # a client that stops sending mid-stream has gone: the stream ends
            return False
        if self.incoming is not None:  # the client stopped sending in the middle of a request
            self.refuse(400, "the request ended before its body was complete (Content-Length)")
            return True  # the connection stays open for that answer
        return self.busy or bool(self.ready)  # answer what arrived whole, then close

    # httptools' side

    def on_message_begin(self) -> None:
        self.incoming = _Incoming(time.monotonic())
        self._set_timer(self.limits.read_timeout, self._too_slow)

    def on_url(self, url: bytes) -> None:
        incoming = self.incoming
        assert incoming is not None
        incoming.url += url
        if len(incoming.url) > self.limits.max_url_bytes:
            raise Rejected(414, f"the URL is longer than {self.limits.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.incoming is not None
        self.incoming.headers.append((name.lower(), value))
        if len(self.incoming.headers) > _MAX_HEADERS:
            raise Rejected(431, f"the request has more than {_MAX_HEADERS} headers")

    def on_headers_complete(self) -> None:
        incoming = self.incoming
        assert incoming is not None
        # Counted from what was parsed: the bytes received may hold some of the body too.
        size = len(incoming.url) + sum(
            len(name) + len(value) + 4 for name, value in incoming.headers
        )
        if size > self.limits.max_header_bytes:
            raise Rejected(431, _HEADERS_TOO_LARGE)
        self.header_bytes = 0
        self.in_body = True
        headers = dict(incoming.headers)
        # Every Transfer-Encoding line counts: "gzip" and "chunked" on two lines are one list.
        codings = [value for name, value in incoming.headers if name == b"transfer-encoding"]
        coding = b", ".join(codings) if codings else None
        if coding is not None and coding.strip().lower() != b"chunked":
            raise Rejected(
                501,
                f"Transfer-Encoding {coding.decode('latin-1')[:60]!r} is not supported; "
                "send the body as it is, with Content-Length or chunked alone",
            )
        length = headers.get(b"content-length")
        if length is not None and int(length) > self.limits.max_body:
            raise Rejected(413, _TOO_LARGE)
        if self.parser.should_upgrade():
            self.eof = True  # declined by answering it as plain HTTP; the connection closes
        expects = headers.get(b"expect", b"").lower() == b"100-continue"
        if expects and self.transport is not None:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        incoming = self.incoming
        assert incoming is not None
        incoming.body_size += len(body)
        if incoming.body_size > self.limits.max_body:
            raise Rejected(413, _TOO_LARGE)
        incoming.body.append(body)
        if (
            incoming.body_size > _SMALL_BODY
            and not self.front.take_large(self)
            and self.transport is not None
        ):
            # A worker holds one large body at a time, however many clients upload at once:
            # this one waits (what it sent stays in the kernel) until the other is answered.
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        incoming = self.incoming
        assert incoming is not None
        self.incoming = None
        self.in_body = False
        self._cancel_timer()
        environ = self._environ(incoming)
        self.ready.append((environ, self.parser.should_keep_alive()))
        if not self.busy:
            self._next()

    # answering

    def _next(self) -> None:
        if not self.ready:
            return
        environ, keep_alive = self.ready.pop(0)
        keep_alive = keep_alive and not self.front.stopping
        self.busy = True
        if self.transport is not None:
            self.transport.pause_reading()  # one request at a time; the rest waits in the kernel
        if environ["REQUEST_METHOD"] == "POST":
            future = self.front.loop.run_in_executor(
                self.front.pool, call_wsgi, self.front.app, environ
            )
            late = self.front.loop.call_later(
                self.limits.request_timeout + _LATE_GRACE, self._late, future, environ, keep_alive
            )
            future.add_done_callback(lambda done: self._answered(done, late, environ, keep_alive))
        else:
            self._respond(environ, *call_wsgi(self.front.app, environ), keep_alive)

    def _answered(
        self, future: Any, late: asyncio.TimerHandle, environ: dict, keep_alive: bool
    ) -> None:
        late.cancel()
        if future.cancelled():
            return
        try:
            status, headers, body = future.result()
        except Exception as exc:  # call_wsgi catches the application's; this is ours
            log.error("the front end failed on a request: %r", exc)
            status, headers, body = error_answer(500, "internal error")
        if environ.get("mlimg.answered"):  # answered 504 meanwhile: a stream made late goes
            if not isinstance(body, bytes):
                self._close_body(body, None)
            return
        self._respond(environ, status, headers, body, keep_alive)

    def _late(self, future: Any, environ: dict, keep_alive: bool) -> None:
        if future.done():
            return
        log.error("a request was not answered within its %ss deadline", self.limits.request_timeout)
        status, headers, body = error_answer(504, _LATE)
        self._respond(environ, status, headers, body, keep_alive)

    def _respond(
        self,
        environ: dict[str, Any],
        status: int,
        headers: list[tuple[str, str]],
        body: Any,
        keep_alive: bool,
    ) -> None:
        environ["mlimg.answered"] = True
        self.front.release_large(self)
        if not isinstance(body, bytes):  # no Content-Length: streamed
            self.streaming = True
            task = self.front.loop.create_task(
                self._stream(environ, status, headers, body, keep_alive)
            )
            self.front.streams.add(task)
            task.add_done_callback(self.front.streams.discard)
            return
        transport = self.transport
        keep_alive = keep_alive and not self.front.stopping and not self.eof
        if transport is not None:
            transport.write(_head(status, headers, len(body), keep_alive) + body)
        self._answered_all(environ, status, len(body), keep_alive)

    async def _stream(
        self,
        environ: dict[str, Any],
        status: int,
        headers: list[tuple[str, str]],
        body: Any,
        keep_alive: bool,
    ) -> None:
        """Send a streamed answer: its head, then each chunk of `body` as it comes."""
        loop, pool, limits = self.front.loop, self.front.pool, self.limits
        chunked = environ.get("SERVER_PROTOCOL") == "HTTP/1.1"  # else ended by closing
        keep_alive = keep_alive and chunked and not self.front.stopping and not self.eof
        self.writable = asyncio.Event()
        if not self.write_paused:
            self.writable.set()
        sent = 0
        complete = True  # the answer ends as HTTP says (not cut by a client that left or stalled)
        pending: asyncio.Future | None = None  # a next() of the body that is running
        chunks = iter(body)
        try:
            if self.transport is not None:
                self.transport.set_write_buffer_limits(high=_STREAM_BUFFER)
                self.transport.write(_stream_head(status, headers, chunked, keep_alive))
                self.transport.resume_reading()  # to see the client leave
            while self.transport is not None:
                if not self.writable.is_set():
                    try:
                        await asyncio.wait_for(self.writable.wait(), limits.stream_timeout)
                    except asyncio.TimeoutError:
                        log.info(
                            "a client read nothing of its stream for %gs; it is closed",
                            limits.stream_timeout,
                        )
                        keep_alive = complete = False
                        break
                    continue  # the client has read, or gone
                pending = loop.run_in_executor(pool, next, chunks, None)
                try:
                    chunk = await asyncio.wait_for(asyncio.shield(pending), limits.stream_timeout)
                except asyncio.TimeoutError:  # the application is stuck on its next chunk
                    timed_out = getattr(body, "timed_out", None)
                    chunk = timed_out(limits.stream_timeout) if timed_out else b""
                    self._send(chunk, chunked)
                    sent += len(chunk)
                    keep_alive = False
                    break
                pending = None
                if chunk is None:  # the body's end
                    break
                self._send(chunk, chunked)
                sent += len(chunk)
        except Exception as exc:
            log.error("the front end failed on a stream: %r", exc)
            keep_alive = complete = False
        finally:
            self._close_body(body, pending)
        if self.transport is not None and chunked and complete:
            self.transport.write(b"0\r\n\r\n")
        self.streaming = False
        self.writable = None
        if self.transport is not None:
            self.transport.set_write_buffer_limits()
        self._answered_all(environ, status, sent, keep_alive)

    def _send(self, chunk: bytes, chunked: bool) -> None:
        if self.transport is None or not chunk:
            return
        if chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            self.transport.write(chunk)

    def _close_body(self, body: Any, pending: asyncio.Future | None) -> None:
        """Close a streamed body in the thread pool, once no next() of it runs."""
        close = getattr(body, "close", None)
        if close is None:
            return
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda done: _forget(done) or self._close_body(body, None))
            return
        try:
            self.front.loop.run_in_executor(self.front.pool, close)
        except RuntimeError:  # the pool has stopped (the worker is leaving): close it here
            close()

    def _answered_all(self, environ: dict[str, Any], status: int, size: int, keep_alive: bool):
        """After an answer: its access line, then the connection's next request, or close."""
        self.busy = False
        transport = self.transport
        keep_alive = keep_alive and not self.front.stopping and not self.eof
        if self.front.access_log is not None:
            seconds = time.monotonic() - environ["mlimg.arrived"]
            self.front.access_log(environ, status, size, seconds)
        if transport is None:
            return
        if keep_alive and self.ready:
            self._next()
        elif keep_alive and self.refusal is not None:
            self.refuse(*self.refusal)
        elif not keep_alive:
            self.close()
        else:
            transport.resume_reading()
            if self.incoming is None:
                self._idle()

    def refuse(self, status: int, message: str) -> None:
        """Answer a request the application never sees, then close once the client has
        stopped sending (closing with unread data would reset the connection and could
        destroy the answer before the client reads it)."""
        transport = self.transport
        incoming, self.incoming = self.incoming, None
        self.lingering = True
        if transport is None:
            return
        self.front.release_large(self)  # what was read of its body is dropped
        if self.busy:  # answers leave in order: this one follows those of whole requests
            self.refusal = (status, message)
            return
        self.refusal = None
        _, headers, body = error_answer(status, message)
        transport.write(_head(status, headers, len(body), keep_alive=False) + body)
        self._log_refusal(incoming, status, len(body))
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self._set_timer(_LINGER_SECONDS, self.close)

    def room(self) -> None:
        """This connection's turn for a large body has come: read on."""
        if self.transport is not None and not self.busy:
            self.transport.resume_reading()

    def drain(self) -> None:
        if not self.busy and self.incoming is None and not self.ready:
            self._set_timer(min(_DRAIN_SECONDS, self.limits.idle_timeout), self.close)

    def _log_refusal(self, incoming: _Incoming | None, status: int, size: int) -> None:
        """An access line for a request the application never saw, with what was read of it."""
        if self.front.access_log is None:
            return
        url = incoming.url if incoming is not None else b""
        try:
            method = self.parser.get_method().decode("latin-1") if url else "-"
        except httptools.HttpParserError:
            method = "-"
        path = url.partition(b"?")[0].decode("latin-1")[:200] or "-"
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "RAW_URI": path,
            "REMOTE_ADDR": self.remote,
        }
        started = incoming.started if incoming is not None else time.monotonic()
        self.front.access_log(environ, status, size, time.monotonic() - started)

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    # timers

    def _idle(self) -> None:
        self._set_timer(self.limits.idle_timeout, self.close)

    def _too_slow(self) -> None:
        self.refuse(
            408, f"the request did not arrive whole within {self.limits.read_timeout:g} seconds"
        )

    def _set_timer(self, seconds: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self.timer = self.front.loop.call_later(seconds, callback)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _environ(self, incoming: _Incoming) -> dict[str, Any]:
        path, _, query = incoming.url.partition(b"?")
        body = b"".join(incoming.body)
        version = self.parser.get_http_version()
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.parser.get_method().decode("latin-1"),
            "PATH_INFO": path.decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "RAW_URI": incoming.url.decode("latin-1"),
            "SERVER_PROTOCOL": f"HTTP/{version}",
            "SERVER_NAME": self.front.server_name[0],
            "SERVER_PORT": str(self.front.server_name[1]),
            "REMOTE_ADDR": self.remote,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": _LogStream(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "mlimg.arrived": time.monotonic(),
        }
        for name, value in incoming.headers:
            text = value.decode("latin-1")
            if name == b"content-type":
                environ["CONTENT_TYPE"] = text
            elif name not in (b"content-length", b"transfer-encoding"):
                key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
                environ[key] = f"{environ[key]},{text}" if key in environ else text
        return environ


def call_wsgi(app: Callable[..., Any], environ: dict[str, Any]) -> tuple[int, list, Any]:
    """Run a WSGI application to its answer: (status, headers, body), the body whole (bytes),
    or, for a streamed answer (`_streamed`), the application's iterable itself."""
    answer: list[Any] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
        answer[:] = [int(status.split(" ", 1)[0]), headers]
        return lambda data: None  # the legacy write() callable; the runtime does not use it

    try:
        chunks = app(environ, start_response)
        if _streamed(answer, chunks):
            return answer[0], answer[1], chunks  # pulled chunk by chunk
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
    except Exception:
        log.exception("unexpected error while answering %s", environ.get("PATH_INFO"))
        return error_answer(500, "internal error")
    status, headers = answer
    return status, headers, body


def _forget(future: asyncio.Future) -> None:
    """Take a future's outcome that nobody waits for any more (asyncio would log it)."""
    if not future.cancelled():
        future.exception()


def _streamed(answer: list[Any], chunks: Any) -> bool:
    """Whether an answer is streamed: its length is not said, and its body is not a list
    (which is whole already)."""
    if not answer or isinstance(chunks, (list, tuple)):
        return False
    return not any(name.lower() == "content-length" for name, _ in answer[1])


def error_answer(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    from mlimg_runtime.errors import error_code

    body = json.dumps({"error_code": error_code(status), "message": message}).encode()
    return status, [("Content-Type", "application/json")], body


def _head(status: int, headers: list[tuple[str, str]], length: int, keep_alive: bool) -> bytes:
    lines = _head_lines(status, headers)
    lines.append(f"Content-Length: {length}\r\n".encode())
    lines.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    return b"".join(lines)


def _stream_head(
    status: int, headers: list[tuple[str, str]], chunked: bool, keep_alive: bool
) -> bytes:
    lines = _head_lines(status, headers)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    lines.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    return b"".join(lines)


def _head_lines(status: int, headers: list[tuple[str, str]]) -> list[bytes]:
    lines = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Error\r\n".encode()]
    for name, value in headers:
        if name.lower() not in ("content-length", "connection", "transfer-encoding"):
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    return lines


class _LogStream:
    """wsgi.errors: what an application writes there becomes log lines."""

    def write(self, text: str) -> None:
        if text.strip():
            log.error("%s", text.rstrip())

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


_MAX_HEADERS = 100
_SMALL_BODY = 64 * 1024  # a body up to this never waits for room
_HEADERS_TOO_LARGE = "the request line and headers are larger than the limit (64 KiB)"
_TOO_LARGE = "the request body is larger than the limit (MLIMG_MAX_REQUEST_BYTES)"
_LATE = "the request was not answered within its deadline (MLIMG_TIMEOUT)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
