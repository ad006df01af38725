"""The image contract, written once: what every image promises from outside and every setting
its server reads.

The runtime reads its settings from here (`config.ServerConfig`); the builder writes the
Dockerfile's `EXPOSE`, `USER`, `ENV` and health check, and `mlimg serve`'s environment, from
here; the README's settings table is this module's `settings_table()` (a test holds them equal).
Standard library only: the builder imports it without the runtime's dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass

PORT = 8080
MODEL_PATH = "/opt/ml/model"
USER_ID = 10001  # the image's user and group: not root, and no name needed to run as it
USER_NAME = "mlimg"
HOME = "/home/mlimg"
RUNTIME_PATH = "/opt/mlimg"  # where the image keeps mlimg_runtime (on PYTHONPATH)
SBOM_PATH = f"{RUNTIME_PATH}/sbom.cdx.json"  # the environment's CycloneDX SBOM (label mlimg.sbom)
# The MLServer engine's ports beside PORT (its HTTP port): gRPC, and Prometheus metrics.
MLSERVER_GRPC_PORT = 8081
MLSERVER_METRICS_PORT = 8082


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    answer: str


ENDPOINTS = (
    Endpoint(
        "GET",
        "/ping",
        "200 once the model is loaded; 503 while it loads (the port answers at once, so an "
        'orchestrator can tell "starting" from "dead")',
    ),
    Endpoint("GET", "/health", "the same as `/ping`"),
    Endpoint("GET", "/version", '`{"mlflow_version": ..., "mlimg_version": ...}`'),
    Endpoint(
        "POST",
        "/invocations",
        '`{"predictions": ...}` (MLflow\'s shapes: frames as records, arrays as lists, bytes as '
        "base64); a chat or agent payload answered unwrapped, as the model returns it; "
        '`"stream": true` for a model with `predict_stream`: server-sent events, '
        "`data: <chunk>` each, then `data: [DONE]`; errors as "
        '`{"error_code": ..., "message": ...}`',
    ),
    Endpoint(
        "POST",
        "/v1/chat/completions",
        "OpenAI's chat completions, whole or streamed (`chat.completion.chunk` events): "
        "ChatModel and ChatAgent models",
    ),
    Endpoint(
        "POST",
        "/v1/responses",
        "OpenAI's Responses API, whole or streamed (its event types): ResponsesAgent models; "
        "also at `/responses`, as MLflow's AgentServer routes it",
    ),
    Endpoint("GET", "/v1/models", "OpenAI's model list, naming the one model (`MLIMG_MODEL_NAME`)"),
)
HEALTH_PATH = "/ping"  # ready: 200 once the model is loaded, 503 while it loads
# alive: 200 from the moment the port answers, while the model loads too (a liveness probe)
LIVENESS_PATH = "/version"
# The top-level keys of a JSON body for /invocations: MLflow's input forms, and the raw
# OpenAI-style payloads (chat, completions, embeddings, agents) that are answered unwrapped.
FORMAT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
LLM_KEYS = ("messages", "prompt", "input")
STREAM_KEY = "stream"  # `"stream": true` in a JSON body asks for server-sent events
STREAM_END = "[DONE]"  # the last event of a stream that ended well


def answered_unwrapped(payload: object) -> bool:
    """Whether /invocations answers `payload` as the model returns it (a raw chat or agent
    payload) rather than inside `{"predictions": ...}`."""
    return (
        isinstance(payload, dict)
        and not any(key in payload for key in FORMAT_KEYS)
        and any(key in payload for key in LLM_KEYS)
    )


CHAT_COMPLETIONS = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MODELS = "/v1/models"


@dataclass(frozen=True)
class ModelKind:
    """What kind of model MLflow says a model is (MLmodel's `metadata.task`, which MLflow
    writes for its chat and agent interfaces), and what that kind answers."""

    name: str
    task: str | None
    answer_key: str | None  # the key every whole answer of this kind holds (None: any JSON)
    routes: tuple[str, ...]  # the OpenAI-compatible routes it answers, beside /invocations


MODEL_KINDS = (
    ModelKind("ChatModel", "agent/v1/chat", "choices", (CHAT_COMPLETIONS,)),
    ModelKind("ChatAgent", "agent/v2/chat", "messages", (CHAT_COMPLETIONS,)),
    ModelKind("ResponsesAgent", "agent/v1/responses", "output", (RESPONSES, "/responses")),
)
PYFUNC_KIND = ModelKind("pyfunc model", None, None, ())
OPENAI_ROUTES = tuple(dict.fromkeys(route for kind in MODEL_KINDS for route in kind.routes))


def model_kind(metadata: object) -> ModelKind:
    """The kind of a model whose MLmodel `metadata` mapping is this (None: none)."""
    task = metadata.get("task") if isinstance(metadata, dict) else None
    return next((kind for kind in MODEL_KINDS if kind.task == task), PYFUNC_KIND)


def streams(flavors: object) -> bool:
    """Whether a model with these MLmodel flavors has `predict_stream`: its pyfunc flavor says
    `streamable`, which mlflow.pyfunc reads to expose the method."""
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    return bool(isinstance(pyfunc, dict) and pyfunc.get("streamable"))


# Where the server writes temporary files when it may (an orchestrator's scratch volume);
# on a read-only root filesystem without one it falls back to /dev/shm.
SCRATCH_PATH = "/tmp"


@dataclass(frozen=True)
class Setting:
    """One environment variable the server reads.

    `kind` says how its text is read: `int` a positive whole number, `ms` milliseconds from 0
    to 10000, `choice` one of `choices` (case and spaces ignored), `flag` on for 1/true/yes/on,
    `text` as it is. A `default` of None is worked out at start-up (`default_text` says how).
    """

    variable: str
    field: str  # the ServerConfig attribute it sets
    kind: str
    default: object
    meaning: str
    default_text: str = ""
    choices: tuple[str, ...] = ()
    mlserver: str = ""  # whether and how the MLServer engine honours it

    @property
    def shown_default(self) -> str:
        if self.default_text:
            return self.default_text
        if isinstance(self.default, float) and self.default.is_integer():
            return f"`{int(self.default)}`"
        return f"`{self.default}`"


SETTINGS = (
    Setting(
        "PORT", "port", "int", PORT, "the port to listen on", mlserver="yes: MLServer's HTTP port"
    ),
    Setting("MLIMG_HOST", "host", "text", "0.0.0.0", "the address to bind", mlserver="yes"),
    Setting(
        "MLIMG_WORKERS",
        "workers",
        "int",
        None,
        "worker processes",
        default_text="CPUs the container may use (its cgroup quota, not the host's count)",
        mlserver="yes: MLServer's parallel inference workers",
    ),
    Setting(
        "MLIMG_THREADS",
        "threads",
        "int",
        8,
        "threads per worker that decode and predict `/invocations` requests (also the most "
        "requests one worker batches together)",
        mlserver="yes: threads per inference worker, for `/invocations` and V2",
    ),
    Setting(
        "MLIMG_BATCHING",
        "batching",
        "choice",
        "auto",
        "`auto`: batch concurrent requests for row-wise flavors (sklearn, xgboost, lightgbm, "
        "catboost); `on`: for any model; `off`",
        choices=("auto", "on", "off"),
        mlserver="yes for `/invocations`; `on` also turns on V2 adaptive batching (MLServer's, "
        "which holds every request up to `MLIMG_BATCH_WAIT_MS`)",
    ),
    Setting(
        "MLIMG_MAX_BATCH_ROWS",
        "max_batch_rows",
        "int",
        64,
        "the most rows predicted in one call; a larger request is predicted alone",
        mlserver="yes, and V2's `max_batch_size` under `on`",
    ),
    Setting(
        "MLIMG_BATCH_WAIT_MS",
        "batch_wait_ms",
        "ms",
        5.0,
        "how long a batch may wait for more requests, while some are being decoded or fewer "
        "have come than in the last batch (a lone request never waits)",
        mlserver="yes, and V2's `max_batch_time` under `on`",
    ),
    Setting(
        "MLIMG_TIMEOUT",
        "timeout",
        "int",
        60,
        "seconds from a request's arrival (whole) to its answer, waiting for a thread and "
        "decoding included; then 504 (from the front end itself one second later, if the "
        "application is stuck in a decoder)",
        mlserver="`/invocations` only",
    ),
    Setting(
        "MLIMG_STREAM_TIMEOUT",
        "stream_timeout",
        "int",
        60,
        "seconds a stream may wait, once its first chunk is out, for the model's next chunk or "
        "for a client to read what was sent; then the stream ends (with an error event if the "
        "model was the slow one). `MLIMG_TIMEOUT` bounds the wait for the first chunk",
        mlserver="no (the MLServer engine does not stream)",
    ),
    Setting(
        "MLIMG_READ_TIMEOUT",
        "read_timeout",
        "int",
        60,
        "seconds from a request's first byte to its last; then 408",
        mlserver="no (uvicorn's HTTP layer)",
    ),
    Setting(
        "MLIMG_KEEPALIVE",
        "keepalive",
        "int",
        5,
        "seconds a connection may stay open with no request under way (a new one included)",
        mlserver="no (uvicorn's 5 s)",
    ),
    Setting(
        "MLIMG_MAX_REQUEST_BYTES",
        "max_request_bytes",
        "int",
        None,
        "larger bodies are answered 413",
        default_text="100 MiB, or under a memory limit an eighth of each worker's share of it",
        mlserver="yes, on every path (V2 included)",
    ),
    Setting(
        "MLIMG_MAX_DECODED_BYTES",
        "max_decoded_bytes",
        "int",
        None,
        "what one request's input may take once decoded, estimated before decoding: past it, 413",
        default_text="1 GiB, or under a memory limit a quarter of each worker's share of it",
        mlserver="`/invocations` only",
    ),
    Setting(
        "MLIMG_GRACEFUL_TIMEOUT",
        "graceful_timeout",
        "int",
        8,
        "seconds in-flight requests get to finish after SIGTERM",
        mlserver="yes",
    ),
    Setting(
        "MLIMG_LOG_FORMAT",
        "log_format",
        "choice",
        "plain",
        "`json` for JSON lines (access lines carry method, path, status, latency_ms)",
        choices=("plain", "json"),
        mlserver="no (MLServer's own format)",
    ),
    Setting(
        "MLIMG_LOG_FLUSH_MS",
        "log_flush_ms",
        "ms",
        200.0,
        "how late an access line may be written: each worker writes its access lines in "
        "batches, as nginx's `access_log ... flush=` does (a write per request, and a wake-up "
        "of Docker's log reader: p50 at one connection was about 0.3 ms higher that way); `0` "
        "writes each at once. Other lines are never held",
        mlserver="no (MLServer writes no access lines)",
    ),
    Setting(
        "MLIMG_INCLUDE_TRACEBACK",
        "include_traceback",
        "flag",
        False,
        "`1` adds `stack_trace` to 500 answers",
        default_text="off",
        mlserver="`/invocations` only",
    ),
    Setting(
        "MLIMG_MODEL_PATH", "model_path", "text", MODEL_PATH, "where the model is", mlserver="yes"
    ),
    Setting(
        "MLIMG_MODEL_NAME",
        "model_name",
        "text",
        "model",
        "the model's name in `GET /v1/models` and in the V2 protocol's paths "
        "(`/v2/models/NAME/infer`; MLServer engine)",
        mlserver="yes",
    ),
)
_BY_FIELD = {setting.field: setting for setting in SETTINGS}
TRUE_WORDS = ("1", "true", "yes", "on")


def setting(field: str) -> Setting:
    return _BY_FIELD[field]


def default(field: str) -> object:
    return _BY_FIELD[field].default


def environment(**values: object) -> dict[str, str]:
    """The environment variables that give settings these values (by ServerConfig field; a
    value of None is left out, so the server's own default applies)."""
    return {
        _BY_FIELD[field].variable: _text(value)
        for field, value in values.items()
        if value is not None
    }


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def settings_table() -> str:
    """The README's table of settings, in Markdown."""
    lines = [
        "| variable | default | meaning | with `--engine mlserver` |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| `{s.variable}` | {s.shown_default} | {s.meaning} | {s.mlserver} |" for s in SETTINGS
    ]
    return "\n".join(lines) + "\n"


def endpoints_table() -> str:
    """The README's table of endpoints, in Markdown."""
    lines = ["| endpoint | answer |", "| --- | --- |"]
    lines += [f"| `{e.method} {e.path}` | {e.answer} |" for e in ENDPOINTS]
    return "\n".join(lines) + "\n"
