"""The gunicorn worker that runs the front end: an event loop over the worker's sockets and
a pool of request threads.

gunicorn stays in charge of processes (forking, the swap after the model loads, signals,
heartbeats); each worker serves with `front.Front` instead of gunicorn's own HTTP handling.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import os
import resource
import signal
from dataclasses import replace
from typing import Any

from gunicorn.workers.base import Worker

from mlimg_runtime.front import Front, Limits

_HEARTBEAT_SECONDS = 1.0
_STREAM_CLOSE_SECONDS = 1.0  # at a stop, how long streams cut short have to close their bodies


class EventLoopWorker(Worker):
    """A gunicorn worker serving through `front.Front`; its settings come from `limits`."""

    limits: Limits | None = None  # set by the server before gunicorn starts (server.main)

    def run(self) -> None:
        limits = self.limits or Limits(
            max_body=100 * 1024 * 1024, request_timeout=float(self.cfg.timeout)
        )
        limits = _within_file_limit(limits)
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, self.cfg.threads), thread_name_prefix="request"
        )
        front = Front(
            self.wsgi,
            limits,
            pool,
            loop,
            access_log=self._access_log if self.cfg.accesslog else None,
            server_name=_server_name(self.sockets),
        )
        stopped = loop.create_future()

        def stop(graceful: bool) -> None:
            self.alive = False
            if not stopped.done():
                stopped.set_result(graceful)

        # The loop's own handlers replace gunicorn's, which would stop the worker at once on
        # SIGINT/SIGQUIT and notice SIGTERM only at the next heartbeat.
        loop.add_signal_handler(signal.SIGTERM, stop, True)
        loop.add_signal_handler(signal.SIGINT, stop, False)
        loop.add_signal_handler(signal.SIGQUIT, stop, False)
        try:
            loop.run_until_complete(self._serve(front, stopped))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            loop.close()

    async def _serve(self, front: Front, stopped: asyncio.Future) -> None:
        loop = asyncio.get_running_loop()
        servers = [
            await loop.create_server(front.protocol, sock=listener.sock, backlog=self.cfg.backlog)
            for listener in self.sockets
        ]
        while self.alive and not stopped.done():
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("parent changed, shutting down: %s", self)
                break
            await asyncio.wait([stopped], timeout=_HEARTBEAT_SECONDS)
        graceful = stopped.result() if stopped.done() else True
        for server in servers:
            server.close()
        front.stop()
        if graceful:
            # Requests under way are answered (with Connection: close) and idle connections
            # drained, within the graceful timeout.
            deadline = loop.time() + self.cfg.graceful_timeout
            while front.open and loop.time() < deadline:
                self.notify()
                await asyncio.sleep(0.05)
        for connection in list(front.connections):
            connection.close()
        if front.streams:  # streams cut at the deadline close their bodies (generators' finally)
            await asyncio.wait(list(front.streams), timeout=_STREAM_CLOSE_SECONDS)
        await asyncio.sleep(0)  # let the transports flush and close

    def _access_log(self, environ: dict[str, Any], status: int, size: int, seconds: float) -> None:
        access = getattr(self.log, "request", None)
        if access is not None:
            access(environ, status, size, dt.timedelta(seconds=seconds))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (the runtime's requirements bring it on Linux),
    else asyncio's, which is slower under concurrent load (ARCHITECTURE.md, "Measurements")."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _within_file_limit(limits: Limits) -> Limits:
    """Raise the open-file limit as far as allowed, and keep connections under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    room = max(16, soft - 256)  # files the model, the logs and the threads may want
    return replace(limits, max_connections=min(limits.max_connections, room))


def _server_name(sockets: list[Any]) -> tuple[str, int]:
    for listener in sockets:
        address = listener.sock.getsockname()
        if isinstance(address, tuple) and len(address) >= 2:
            return str(address[0]), int(address[1])
    return "localhost", 0
