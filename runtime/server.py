"""Start-up: load the model once, then serve it with gunicorn (forked workers share the model)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from mlimg_runtime.app import create_app
from mlimg_runtime.config import ServerConfig

log = logging.getLogger("mlimg_runtime")


class _Gunicorn(BaseApplication):
    def __init__(self, app: Any, options: dict[str, Any]):
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._app


def load_model(path: str) -> tuple[Any, str | None]:
    """Load the model through mlflow.pyfunc; returns it with the mlflow version that loaded it."""
    import mlflow
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(path), getattr(mlflow, "__version__", None)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = ServerConfig.from_env()
    except ValueError as exc:
        log.error("bad configuration: %s", exc)
        sys.exit(2)
    try:
        model, mlflow_version = load_model(config.model_path)
    except Exception as exc:
        log.error(
            "could not load the model at %s: %s: %s", config.model_path, type(exc).__name__, exc
        )
        sys.exit(1)
    log.info("model loaded from %s; serving on %s:%d", config.model_path, config.host, config.port)
    app = create_app(model, mlflow_version)
    options = {
        "bind": f"{config.host}:{config.port}",
        "workers": config.workers,
        "worker_class": "gthread",
        "threads": 2,
        "timeout": config.timeout,
        "graceful_timeout": config.graceful_timeout,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "preload_app": True,
    }
    _Gunicorn(app, options).run()
