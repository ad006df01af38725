"""The runtime's settings, read once from environment variables (the image's contract)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8080
# What one request may cost: its body, and its input once decoded (estimated before decoding).
# Without a memory limit these; under one, an eighth and a quarter of it (see memory_bounds).
MAX_REQUEST_BYTES = 100 * 1024 * 1024
MAX_DECODED_BYTES = 1024 * 1024 * 1024
BATCHING_MODES = ("auto", "on", "off")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ServerConfig:
    model_path: str = "/opt/ml/model"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    workers: int = 1
    threads: int = 8
    timeout: int = 60
    read_timeout: int = 60  # a request's first byte to its last; 408 beyond
    keepalive: int = 5  # how long an idle connection stays open
    graceful_timeout: int = 8
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_decoded_bytes: int = MAX_DECODED_BYTES
    log_format: str = "plain"
    include_traceback: bool = False
    batching: str = "auto"  # auto: on for row-wise flavors (sklearn, xgboost, ...)
    max_batch_rows: int = 64
    batch_wait_ms: float = 5.0  # how long a batch may wait for the requests it expects
    log_flush_ms: float = 200.0  # how late an access line may be written (0: at once)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServerConfig:
        env = os.environ if environ is None else environ
        log_format = env.get("MLIMG_LOG_FORMAT", "plain").strip().lower()
        if log_format not in ("plain", "json"):
            raise ValueError(f"MLIMG_LOG_FORMAT must be 'plain' or 'json', not {log_format!r}")
        batching = env.get("MLIMG_BATCHING", "auto").strip().lower()
        if batching not in BATCHING_MODES:
            modes = ", ".join(BATCHING_MODES)
            raise ValueError(f"MLIMG_BATCHING must be one of {modes}, not {batching!r}")
        workers = _positive_int(env, "MLIMG_WORKERS", available_cpus())
        body_limit, decoded_limit = memory_bounds(memory_limit(), workers)
        return cls(
            model_path=env.get("MLIMG_MODEL_PATH", "/opt/ml/model"),
            host=env.get("MLIMG_HOST", "0.0.0.0"),
            port=_positive_int(env, "PORT", DEFAULT_PORT),
            workers=workers,
            threads=_positive_int(env, "MLIMG_THREADS", cls.threads),
            timeout=_positive_int(env, "MLIMG_TIMEOUT", 60),
            read_timeout=_positive_int(env, "MLIMG_READ_TIMEOUT", cls.read_timeout),
            keepalive=_positive_int(env, "MLIMG_KEEPALIVE", cls.keepalive),
            graceful_timeout=_positive_int(env, "MLIMG_GRACEFUL_TIMEOUT", 8),
            max_request_bytes=_positive_int(env, "MLIMG_MAX_REQUEST_BYTES", body_limit),
            max_decoded_bytes=_positive_int(env, "MLIMG_MAX_DECODED_BYTES", decoded_limit),
            log_format=log_format,
            include_traceback=env.get("MLIMG_INCLUDE_TRACEBACK", "").strip().lower() in _TRUE,
            batching=batching,
            max_batch_rows=_positive_int(env, "MLIMG_MAX_BATCH_ROWS", cls.max_batch_rows),
            batch_wait_ms=_milliseconds(env, "MLIMG_BATCH_WAIT_MS", cls.batch_wait_ms),
            log_flush_ms=_milliseconds(env, "MLIMG_LOG_FLUSH_MS", cls.log_flush_ms),
        )


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: the cgroup quota when one is set, else the affinity mask."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def memory_bounds(limit: int | None, workers: int = 1) -> tuple[int, int]:
    """The default body and decoded-input limits under `limit` bytes of memory.

    Each worker holds at most one large body beyond small ones, and decodes at most one large
    input at a time: so the bounds are an eighth and a quarter of the memory, shared by the
    workers, and the model and the runtime keep the other five eighths. Never more than
    MAX_REQUEST_BYTES and MAX_DECODED_BYTES.
    """
    if limit is None:
        return MAX_REQUEST_BYTES, MAX_DECODED_BYTES
    share = limit // max(1, workers)
    return min(MAX_REQUEST_BYTES, share // 8), min(MAX_DECODED_BYTES, share // 4)


def memory_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup's memory limit in bytes (`docker run --memory`, a Kubernetes limit), or None."""
    try:  # cgroup v2: "max" or a number
        raw = (cgroup_root / "memory.max").read_text().strip()
        return None if raw == "max" else int(raw)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: a huge number when there is none
        value = int((cgroup_root / "memory" / "memory.limit_in_bytes").read_text())
        return value if value < 2**60 else None
    except (OSError, ValueError):
        return None


def _cgroup_quota(root: Path) -> int | None:
    try:  # cgroup v2: "max 100000" or "150000 100000"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, -(-quota // period)) if quota > 0 else None
    except (OSError, ValueError):
        return None


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive whole number, not {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive whole number, not {raw!r}")
    return value


def _milliseconds(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of milliseconds, not {raw!r}") from None
    if not 0 <= value <= 10_000:
        raise ValueError(f"{name} must be between 0 and 10000 milliseconds, not {raw!r}")
    return value
