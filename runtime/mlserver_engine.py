"""The MLServer serving engine: MLServer 1.7 serving the model, with the image contract kept.

    python -m mlimg_runtime.mlserver_engine

MLServer brings the V2 (Open Inference) protocol on 8080 (`/v2/models/NAME/infer`, health,
metadata from the signature), gRPC on 8081 and Prometheus metrics on 8082, parallel inference
workers and adaptive batching of V2 requests. mlimg keeps its contract on top of it:

- The contract's settings (`contract.SETTINGS`) are read here and mapped onto MLServer's own
  (`mlserver_settings`); MLSERVER_* variables the mapping does not set still reach MLServer.
- `/ping`, `/health`, `/version` and `/invocations` are routes of the HTTP app from the start,
  ahead of MLServer's own: 503 while the model loads (MLServer registers a model's routes only
  once it has loaded, 404 before), the JSON error shape for every failure.
- `/invocations` is answered by `scoring.Scorer`, mlimg's decoding, batching (adaptive, per
  worker, as in mlimg's own server) and error sorting, in the inference worker that holds the
  model: the main process reads the body under its limit and hands it over.
- V2 inference uses mlserver-mlflow's codecs and metadata, with mlimg's error sorting: input
  the model refuses with ValueError or TypeError is 400, anything else 500.
- It does not stream: `"stream": true` on `/invocations`, and OpenAI's routes (`/v1/...`),
  are answered 501 with what to build instead (MLServer's dispatcher hands a worker's answer
  back whole, so a stream could not reach the client chunk by chunk).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import signal
import sys
import tempfile
import time
from importlib import metadata as distributions
from typing import Any, Optional

from mlimg_runtime import __version__, contract
from mlimg_runtime.codecs import JSON
from mlimg_runtime.config import ServerConfig, use_writable_temp_dir
from mlimg_runtime.errors import BadRequest, ModelLoading, ScoringError
from mlimg_runtime.model import ServedModel, load_failure_hint, load_model
from mlimg_runtime.model import predict as predict_sorted
from mlimg_runtime.scoring import BODY_TOO_LARGE, Scorer, error_body

log = logging.getLogger("mlimg_runtime")

GRPC_PORT = contract.MLSERVER_GRPC_PORT
METRICS_PORT = contract.MLSERVER_METRICS_PORT
_METHODS = {"/ping": "GET", "/health": "GET", "/version": "GET", "/invocations": "POST"}
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_NOT_FOUND = "no such endpoint: use /invocations, /ping, /health, /version or the V2 protocol"
_NO_OPENAI = (
    "{} is not served by the MLServer engine, which does not stream nor answer OpenAI's "
    "routes: build the image with --engine mlimg (the default) for them"
)


def mlserver_settings(config: ServerConfig, work_dir: str) -> dict[str, Any]:
    """MLServer's server settings from the contract's (what the engine does with each setting
    is its `mlserver` note in `contract.SETTINGS`)."""
    return {
        "host": config.host,
        "http_port": config.port,
        "grpc_port": GRPC_PORT,
        "metrics_port": METRICS_PORT,
        "parallel_workers": config.workers,
        # MLServer writes its metrics and unpacked environments here; with a read-only root
        # filesystem and a user that owns nothing, only a temporary directory is writable.
        "metrics_dir": os.path.join(work_dir, "metrics"),
        "environments_dir": os.path.join(work_dir, "environments"),
        "load_models_at_startup": False,  # the one model is named below, not searched for
        "debug": False,
    }


def model_settings(config: ServerConfig) -> dict[str, Any]:
    """The model's settings: its name in the V2 paths, where it is, and V2 adaptive batching.

    MLServer's adaptive batching holds every V2 request up to its `max_batch_time`, a lone one
    too: at one connection that tripled V2's p50 (ARCHITECTURE.md, "Measurements"). So it is on
    only with MLIMG_BATCHING=on; `auto` batches /invocations alone, where a lone request never
    waits."""
    batching = config.batching == "on"
    return {
        "name": config.model_name,
        "implementation": f"{__name__}.MlimgModel",
        "parameters": {"uri": config.model_path},
        "max_batch_size": config.max_batch_rows if batching else 1,
        "max_batch_time": config.batch_wait_ms / 1000 if batching else 0,
    }


def _model_class() -> Any:
    """The MLServer model class, defined once mlserver can be imported."""
    from mlserver.codecs import NumpyCodec
    from mlserver.errors import InferenceError, MLServerError
    from mlserver.handlers import custom_handler
    from mlserver.settings import ModelParameters
    from mlserver_mlflow import MLflowRuntime
    from mlserver_mlflow.codecs import TensorDictCodec
    from mlserver_mlflow.metadata import (
        DefaultInputPrefix,
        DefaultOutputPrefix,
        to_metadata_tensors,
        to_model_content_type,
    )

    class MlimgModel(MLflowRuntime):
        """mlserver-mlflow's runtime with mlimg's loading, /invocations and error sorting."""

        async def load(self) -> bool:
            try:
                model, mlflow_version = load_model(self._settings.parameters.uri)
            except ModuleNotFoundError as exc:  # MLServer logs the failure; this says why
                hint = load_failure_hint(exc)
                if hint:
                    log.error("%s", hint)
                raise
            self._model = model
            self._input_schema = model.metadata.get_input_schema()
            self._signature = model.metadata.signature
            self._v2_metadata(model.metadata.signature)
            self._config = ServerConfig.from_env()
            served = ServedModel()
            served.set(model, mlflow_version)
            self._scorer = Scorer(served, self._config, streams=False)
            self._threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._config.threads, thread_name_prefix="invocations"
            )
            return True

        def _v2_metadata(self, signature: Any) -> None:
            """The V2 metadata from the signature, as upstream's `_sync_metadata` makes it,
            for signatures without an output schema too (upstream fails to load those)."""
            if signature is None:
                return
            if signature.inputs is not None:
                self.inputs = to_metadata_tensors(signature.inputs, prefix=DefaultInputPrefix)
                if self._settings.parameters is None:
                    self._settings.parameters = ModelParameters()
                self._settings.parameters.content_type = to_model_content_type(signature.inputs)
            if signature.outputs is not None:
                self.outputs = to_metadata_tensors(signature.outputs, prefix=DefaultOutputPrefix)

        @custom_handler(rest_path="/invocations", rest_method="POST")
        async def invocations(
            self,
            content_type: Optional[str],  # noqa: UP045 (FastAPI evaluates it, on Python 3.9 too)
            body: bytes,
            arrived: float,
        ) -> Any:
            """Reached through the main process's /invocations route (the route MLServer
            registers for it is shadowed), in the worker that holds the model. Each request
            runs in a thread, so that the batcher can gather concurrent ones."""
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._threads, self._scorer.answer, content_type, body, arrived
            )

        async def predict(self, payload: Any) -> Any:
            decoded = self.decode_request(payload)
            params = None
            if payload.parameters is not None and payload.parameters.model_extra:
                params = payload.parameters.model_extra
            loop = asyncio.get_running_loop()
            try:
                output = await loop.run_in_executor(
                    self._threads,
                    predict_sorted,
                    self._model,
                    decoded,
                    params or {},
                    self._config.include_traceback,
                )
            except BadRequest as exc:
                raise InferenceError(exc.message) from None
            except ScoringError as exc:
                raise MLServerError(exc.message, status_code=exc.status) from None
            if hasattr(output, "to_numpy") and getattr(output, "ndim", 0) == 1:
                # A pandas Series (a pyfunc's usual answer) has no V2 codec of its own.
                return self.encode_response(output.to_numpy(), default_codec=NumpyCodec)
            return self.encode_response(output, default_codec=TensorDictCodec)

    MlimgModel.__module__ = __name__
    MlimgModel.__qualname__ = "MlimgModel"
    return MlimgModel


def __getattr__(name: str) -> Any:
    # MLServer names the implementation by its import path (the inference workers import it
    # again); the class needs mlserver, which the default engine's images do not have.
    if name == "MlimgModel":
        value = _model_class()
        globals()[name] = value
        return value
    raise AttributeError(name)


class ContractRoutes:
    """/ping, /health, /version and /invocations on MLServer's HTTP app, from the start."""

    def __init__(self, server: Any, config: ServerConfig) -> None:
        self.registry = server._model_registry
        self.config = config
        self.mlflow_version = _mlflow_version()

    def install(self, app: Any) -> None:
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        # First in the list, so that they answer before MLServer's routes of the same paths.
        app.router.routes[0:0] = [
            Route(path, self.answer, methods=_ALL_METHODS) for path in _METHODS
        ] + [
            Route(path, self.not_served, methods=_ALL_METHODS)
            for path in (contract.MODELS, *contract.OPENAI_ROUTES)
        ]
        app.exception_handlers[HTTPException] = self.http_error
        app.add_middleware(BodyLimit, config=self.config)

    async def answer(self, request: Any) -> Any:
        from starlette.responses import Response

        path = request.url.path
        arrived = time.monotonic()
        if request.method != _METHODS[path]:
            message = f"method not allowed: {path} takes {_METHODS[path]}"
            return self._error(405, message, {"Allow": _METHODS[path]})
        if path == "/version":
            body = {"mlflow_version": self.mlflow_version, "mlimg_version": __version__}
            return Response(json.dumps(body), media_type=JSON)
        model = await self._ready_model()
        if model is None:
            return self._error(503, ModelLoading("the model is still loading").message)
        if path != "/invocations":
            return Response("\n", media_type=JSON)
        body = await request.body()  # BodyLimit has held it to MLIMG_MAX_REQUEST_BYTES
        content_type = request.headers.get("content-type")
        try:
            status, answer = await model.invocations(content_type, body, arrived)
        except Exception as exc:  # the inference worker died (the scorer itself never raises)
            if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, StopIteration):
                # MLServer's dispatcher has no worker while it starts a new one: retryable.
                log.warning("no inference worker to answer /invocations; one is restarting")
                return self._error(503, "no inference worker is ready (one is restarting)")
            log.exception("the inference worker failed while answering /invocations")
            return self._error(500, "internal error: the inference worker failed")
        return Response(answer, status_code=status, media_type=JSON)

    async def not_served(self, request: Any) -> Any:
        return self._error(501, _NO_OPENAI.format(request.url.path))

    async def http_error(self, request: Any, exc: Any) -> Any:
        """Starlette's own 404 and 405 (a path no route has), in the JSON error shape."""
        status = exc.status_code
        return self._error(status, _NOT_FOUND if status == 404 else str(exc.detail))

    async def _ready_model(self) -> Any:
        from mlserver.errors import ModelNotFound

        try:
            model = await self.registry.get_model(self.config.model_name)
        except ModelNotFound:  # not registered yet, or unloaded after a failed load
            return None
        return model if model.ready else None

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        from starlette.responses import Response

        body = error_body(status, message, self.config)
        return Response(body, status_code=status, media_type=JSON, headers=headers)


class BodyLimit:
    """ASGI middleware: a body over MLIMG_MAX_REQUEST_BYTES is 413 on every path, the
    contract's /invocations and MLServer's V2 routes (which read whatever arrives) alike: by
    its Content-Length before the app runs, or, sent in chunks, as soon as the bytes pass the
    limit (such a body is read here, then handed on)."""

    def __init__(self, app: Any, config: ServerConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.config.max_request_bytes
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > limit:
                return await self._refuse(send)
            return await self.app(scope, receive, send)
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            return await self.app(scope, receive, send)
        messages = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                return await self._refuse(send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed() -> dict:
            return next(replay, None) or await receive()

        return await self.app(scope, replayed, send)

    async def _refuse(self, send: Any) -> None:
        body = error_body(413, BODY_TOO_LARGE, self.config)
        headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _mlflow_version() -> str | None:
    for name in ("mlflow", "mlflow-skinny"):
        try:
            return distributions.version(name)
        except distributions.PackageNotFoundError:
            continue
    return None


def _stop_gracefully(server: Any, graceful_timeout: float) -> None:
    """SIGTERM (and SIGINT, SIGQUIT) stop the HTTP server first and let the requests in flight
    finish, for up to MLIMG_GRACEFUL_TIMEOUT, before MLServer stops its inference workers.
    MLServer's own handlers stop the workers first, and a request in flight was answered 500
    (CancelledError)."""
    loop = asyncio.get_running_loop()

    async def stop(signum: int) -> None:
        http = getattr(server._rest_server, "_server", None)  # uvicorn's, once started
        if http is not None:
            http.should_exit = True  # no new connections; requests in flight go on
            deadline = loop.time() + graceful_timeout
            state = http.server_state
            while (state.connections or state.tasks) and loop.time() < deadline:
                await asyncio.sleep(0.05)
        await server.stop(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        loop.add_signal_handler(signum, lambda s=signum: asyncio.ensure_future(stop(s)))


async def _serve(config: ServerConfig, work_dir: str) -> bool:
    """Run MLServer until it stops; whether the model had loaded."""
    from mlserver import MLServer
    from mlserver.settings import ModelSettings, Settings

    server = MLServer(Settings(**mlserver_settings(config, work_dir)))
    _stop_gracefully(server, config.graceful_timeout)
    routes = ContractRoutes(server, config)
    routes.install(server._rest_server._app)  # mlserver 1.7's HTTP app (pinned)
    await server.start([ModelSettings(**model_settings(config))])
    return await routes._ready_model() is not None


def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [mlimg] %(levelname)s - %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        config = ServerConfig.from_env()
    except ValueError as exc:
        log.error("bad configuration: %s", exc)
        sys.exit(2)
    try:
        use_writable_temp_dir()
    except OSError as exc:
        log.error("%s", exc)
        sys.exit(1)
    work_dir = tempfile.mkdtemp(prefix="mlserver-")
    from mlserver.utils import install_uvloop_event_loop

    install_uvloop_event_loop()
    log.info(
        "serving %s with MLServer on %s:%d (gRPC %d, metrics %d), %d worker(s)",
        config.model_path,
        config.host,
        config.port,
        GRPC_PORT,
        METRICS_PORT,
        config.workers,
    )
    loaded = asyncio.run(_serve(config, work_dir))
    if not loaded:
        log.error("the model at %s did not load (MLServer's log above says why)", config.model_path)
        sys.exit(1)


if __name__ == "__main__":
    main()
