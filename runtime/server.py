"""Start-up: bind first, answer 503 while the model loads, then serve it with gunicorn.

The master process binds the port and starts its workers at once, so an orchestrator can tell
"starting" (503 on /ping) from "dead" (no answer). Meanwhile the master loads the model, once;
when it is loaded the master replaces its workers with new ones forked from it, which share the
loaded model's memory copy-on-write. A model that fails to load stops the server with exit 1.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from mlimg_runtime.app import create_app
from mlimg_runtime.config import ServerConfig, use_writable_temp_dir
from mlimg_runtime.front import Limits
from mlimg_runtime.logs import access_logger_class, configure_logging
from mlimg_runtime.model import ServedModel, load_failure_hint, load_model
from mlimg_runtime.worker import EventLoopWorker

log = logging.getLogger("mlimg_runtime")


class _Gunicorn(BaseApplication):
    def __init__(self, app: Any, options: dict[str, Any]):
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        try:
            check_settings(self._options, self.cfg.settings)
        except UnknownSettings as exc:  # gunicorn would print any Exception as "Error: ..."
            log.error("%s", exc)
            sys.exit(1)
        for key, value in self._options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return self._app

    def run(self) -> None:  # BaseApplication.run, with the arbiter below
        try:
            _Arbiter(self).run()
        except RuntimeError as exc:
            log.error("%s", exc)
            sys.exit(1)


# The gunicorn versions the runtime is tested against (CI runs the runtime's tests on both
# ends); runtime/requirements.txt says the same.
GUNICORN_RANGE = ">=21.2,<28"
# Settings that only some versions in that range have, and that others may do without:
# the control socket (a management interface the runtime turns off) came in gunicorn 25.
VERSION_SPECIFIC_SETTINGS = frozenset({"control_socket_disable"})


class UnknownSettings(Exception):
    """Settings the installed gunicorn does not have (they would silently do nothing)."""


def check_settings(options: dict[str, Any], known: Any) -> None:
    unknown = set(options) - set(known) - VERSION_SPECIFIC_SETTINGS
    if unknown:
        raise UnknownSettings(
            f"gunicorn {_gunicorn_version()} does not know the settings "
            f"{', '.join(sorted(unknown))}; the runtime supports gunicorn {GUNICORN_RANGE}"
        )


def _gunicorn_version() -> str:
    import gunicorn

    return getattr(gunicorn, "__version__", "?")


class _Arbiter(Arbiter):
    """gunicorn's arbiter, which also replaces its workers once the model has loaded.

    The swap runs in the arbiter's own loop (its main thread), woken by the loader: the new
    workers are forked at once, and the old ones, now the oldest beyond the worker count, are
    stopped gracefully by gunicorn's own trimming (SIGTERM to the oldest). Waiting for the old
    ones to exit first, as gunicorn's own respawning does, kept the server unable to predict
    for longer, much longer when a client held keep-alive connections to the old ones (a
    stopping worker keeps them open for their keep-alive time) (ARCHITECTURE.md, "Measurements").
    """

    swap_pending = False  # set by the loader thread, cleared here

    def manage_workers(self) -> None:
        if self.swap_pending:
            self.swap_pending = False
            for _ in range(self.num_workers):
                self.spawn_worker()
        super().manage_workers()  # stops the surplus, oldest first: the ones without the model


class _ModelLoader:
    """Loads the model in the gunicorn master, then has the arbiter replace its workers."""

    def __init__(self, served: ServedModel, path: str):
        self.served = served
        self.path = path
        self.failed = False

    def start(self, arbiter: Any) -> None:
        threading.Thread(
            target=self._load, args=(arbiter,), name="model-loader", daemon=True
        ).start()

    def _load(self, arbiter: Any) -> None:
        started = time.monotonic()
        try:
            model, mlflow_version = load_model(self.path)
        except BaseException as exc:  # any failure to load ends the server, not just this thread
            # Once, with its traceback: what the model's author needs to mend it.
            log.error(
                "could not load the model at %s: %s: %s",
                self.path,
                type(exc).__name__,
                exc,
                exc_info=True,
            )
            hint = load_failure_hint(exc)
            if hint:
                log.error("%s", hint)
            self.failed = True
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.served.set(model, mlflow_version)
        # The model and the libraries it imported live as long as the process: move them out
        # of the collector's sight, so that a full collection in a worker (which would walk
        # about a million objects) stays short, and forked workers keep
        # sharing those pages instead of copying them when the collector touches them. The
        # collector was off while they loaded (see main), the recipe of gc.freeze's docs.
        gc.freeze()
        gc.enable()
        log.info("model loaded from %s in %.1fs", self.path, time.monotonic() - started)
        # The workers were forked before the model was there: the arbiter replaces them.
        arbiter.swap_pending = True
        arbiter.wakeup()

    def worker_exit(self, arbiter: Any, worker: Any) -> None:
        """gunicorn's worker_exit hook: in the worker as it leaves (and in the master for a
        worker found already gone, where it does nothing).

        A worker forked before the model loaded holds nothing of the model's to finish, yet
        Python's teardown of its modules kept it running beside the new workers after the
        swap, which raised the container's peak memory (ARCHITECTURE.md, "Measurements"): it
        leaves at once.
        """
        if worker.pid == os.getpid() and not self.served.loaded:
            logging.shutdown()  # its held access lines
            os._exit(_exit_code(sys.exc_info()[1]))


def _enable_gc(arbiter: Any, worker: Any) -> None:
    gc.enable()


def _exit_code(exc: BaseException | None) -> int:
    """The exit status a process leaving with `exc` would have (sys.exit's rules)."""
    if exc is None:
        return 0
    if not isinstance(exc, SystemExit):
        return 1
    if exc.code is None:
        return 0
    return exc.code & 0xFF if isinstance(exc.code, int) else 1


def front_limits(config: ServerConfig) -> Limits:
    return Limits(
        max_body=config.max_request_bytes,
        request_timeout=float(config.timeout),
        read_timeout=float(config.read_timeout),
        idle_timeout=float(config.keepalive),
        stream_timeout=float(config.stream_timeout),
    )


def gunicorn_options(
    config: ServerConfig, loader: _ModelLoader, temp_dir: str | None = None
) -> dict[str, Any]:
    return {
        "bind": f"{config.host}:{config.port}",
        "workers": config.workers,
        # By name: gunicorn before 22 takes no class here. Its limits are set in main.
        "worker_class": f"{EventLoopWorker.__module__}.{EventLoopWorker.__qualname__}",
        "threads": config.threads,
        # Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
        # connections across them; on one shared socket, one worker can take every
        # keep-alive connection of a client and leave the others idle.
        "reuse_port": True,
        # gunicorn's own timeout is a backstop: requests get 504 after config.timeout.
        "timeout": config.timeout + 30,
        "graceful_timeout": config.graceful_timeout,
        "accesslog": "-",
        "errorlog": "-",
        "logger_class": access_logger_class(config.log_format, config.log_flush_ms),
        "when_ready": loader.start,
        "post_fork": _enable_gc,
        "worker_exit": loader.worker_exit,
        "control_socket_disable": True,
        "worker_tmp_dir": temp_dir,  # each worker's heartbeat file
    }


def main() -> None:
    # Importing mlflow and the model's libraries makes about a million objects, and the
    # collector would walk them again and again as they come: it stays off until the model
    # has loaded (in workers forked before that, from their start).
    gc.disable()
    try:
        config = ServerConfig.from_env()
    except ValueError as exc:
        configure_logging("plain")
        log.error("bad configuration: %s", exc)
        sys.exit(2)
    configure_logging(config.log_format)
    try:
        temp_dir = use_writable_temp_dir()
    except OSError as exc:
        log.error("%s", exc)
        sys.exit(1)
    EventLoopWorker.limits = front_limits(config)  # the workers are forked from this process
    served = ServedModel()
    loader = _ModelLoader(served, config.model_path)
    app = create_app(served, config)
    log.info(
        "serving %s on %s:%d with %d worker(s); loading the model",
        config.model_path,
        config.host,
        config.port,
        config.workers,
    )
    try:
        _Gunicorn(app, gunicorn_options(config, loader, temp_dir)).run()
    except SystemExit as exc:
        if loader.failed:
            sys.exit(1)
        raise exc
