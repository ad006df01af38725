"""The runtime's settings, read once from environment variables (the image's contract)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlimg_runtime.contract import SCRATCH_PATH, SETTINGS, TRUE_WORDS, Setting, default

# What one request may cost: its body, and its input once decoded (estimated before decoding).
# Without a memory limit these; under one, an eighth and a quarter of it (see memory_bounds).
MAX_REQUEST_BYTES = 100 * 1024 * 1024
MAX_DECODED_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """The runtime's settings; each field's variable, default and meaning are in `contract`."""

    model_path: str = default("model_path")
    host: str = default("host")
    port: int = default("port")
    workers: int = 1
    threads: int = default("threads")
    timeout: int = default("timeout")
    read_timeout: int = default("read_timeout")
    stream_timeout: int = default("stream_timeout")
    keepalive: int = default("keepalive")
    graceful_timeout: int = default("graceful_timeout")
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_decoded_bytes: int = MAX_DECODED_BYTES
    log_format: str = default("log_format")
    include_traceback: bool = default("include_traceback")
    batching: str = default("batching")
    max_batch_rows: int = default("max_batch_rows")
    batch_wait_ms: float = default("batch_wait_ms")
    log_flush_ms: float = default("log_flush_ms")
    model_name: str = default("model_name")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServerConfig:
        env = os.environ if environ is None else environ
        values = {s.field: read_setting(s, env.get(s.variable)) for s in SETTINGS}
        if values["workers"] is None:
            values["workers"] = available_cpus()
        body_limit, decoded_limit = memory_bounds(memory_limit(), values["workers"])
        if values["max_request_bytes"] is None:
            values["max_request_bytes"] = body_limit
        if values["max_decoded_bytes"] is None:
            values["max_decoded_bytes"] = decoded_limit
        return cls(**values)


def read_setting(setting: Setting, raw: str | None) -> Any:
    """A setting's value from its variable's text (None: not set), or ValueError saying why."""
    if raw is None or (setting.kind != "text" and raw.strip() == ""):
        return setting.default
    name = setting.variable
    if setting.kind == "text":
        return raw
    if setting.kind == "flag":
        return raw.strip().lower() in TRUE_WORDS
    if setting.kind == "choice":
        value = raw.strip().lower()
        if value not in setting.choices:
            raise ValueError(f"{name} must be one of {', '.join(setting.choices)}, not {value!r}")
        return value
    if setting.kind == "ms":
        try:
            ms = float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number of milliseconds, not {raw!r}") from None
        if not 0 <= ms <= 10_000:
            raise ValueError(f"{name} must be between 0 and 10000 milliseconds, not {raw!r}")
        return ms
    try:
        number = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive whole number, not {raw!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive whole number, not {raw!r}")
    return number


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


TEMP_CANDIDATES = (SCRATCH_PATH, "/var/tmp", "/dev/shm")


def use_writable_temp_dir() -> str:
    """Make the first writable temporary directory the process's and its children's (TMPDIR,
    for what the model's libraries start); OSError, saying what to mount, when there is none."""
    directory = writable_temp_dir()
    if directory is None:
        raise OSError(
            f"no writable temporary directory (TMPDIR, {', '.join(TEMP_CANDIDATES)}): the root "
            "filesystem is read-only; mount a tmpfs at /tmp (docker run --tmpfs /tmp; "
            "Kubernetes: an emptyDir volume)"
        )
    tempfile.tempdir = directory
    os.environ["TMPDIR"] = directory
    return directory


def writable_temp_dir(candidates: tuple[str, ...] = TEMP_CANDIDATES) -> str | None:
    """The first directory a temporary file can be made in: $TMPDIR, then `candidates`.

    With a read-only root filesystem (`docker run --read-only`, Kubernetes'
    readOnlyRootFilesystem) /tmp is not writable, but /dev/shm, a tmpfs in every container,
    still is: the image then runs with no extra flag.
    """
    for directory in filter(None, (os.environ.get("TMPDIR"), *candidates)):
        try:
            with tempfile.TemporaryFile(dir=directory):
                return directory
        except OSError:
            continue
    return None
