"""Running mlimg's runtime on the host, in the model's environment: `serve` and `predict`.

The runtime runs as a child process of the environment's interpreter, with only a copy of
mlimg_runtime on its path; Ctrl-C and SIGTERM are passed on to it as a graceful stop.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mlimg.envs import ModelEnvironment, runtime_path
from mlimg.errors import InvalidOption, ServerFailed


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InvalidOption(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(
    env: ModelEnvironment,
    model_path: Path,
    host: str,
    port: int,
    workers: int | None,
    timeout: int,
) -> None:
    settings = {
        "MLIMG_MODEL_PATH": str(model_path),
        "MLIMG_HOST": host,
        "PORT": str(port),
        "MLIMG_TIMEOUT": str(timeout),
    }
    if workers:
        settings["MLIMG_WORKERS"] = str(workers)
    code = run_runtime(env, ["-m", "mlimg_runtime"], settings)
    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise ServerFailed(f"the server exited with code {code} (its log is above)")


def predict(
    env: ModelEnvironment,
    model_path: Path,
    input_path: Path | None,
    output_path: Path | None,
    content_type: str,
    chunk_rows: int,
) -> int:
    """Batch inference; the output file appears whole, or not at all."""
    args = [
        "-m",
        "mlimg_runtime.batch",
        "--model",
        str(model_path),
        "--type",
        content_type,
        "--chunk-rows",
        str(chunk_rows),
    ]
    if input_path is not None:
        args += ["--input", str(input_path)]
    if output_path is None:
        return run_runtime(env, args, {})
    output_path = output_path.resolve()
    if not output_path.parent.is_dir():
        raise InvalidOption(f"-o {output_path}: the directory {output_path.parent} does not exist")
    # The suffix tells the batch runner which format to write.
    partial = output_path.with_name(f".{output_path.stem}.mlimg-partial{output_path.suffix}")
    try:
        code = run_runtime(env, [*args, "--output", str(partial)], {})
        if code == 0:
            os.replace(partial, output_path)
        return code
    finally:
        partial.unlink(missing_ok=True)


def run_runtime(env: ModelEnvironment, args: Sequence[str], settings: dict[str, str]) -> int:
    """Run the environment's Python on the runtime; returns its exit code."""
    with runtime_path() as path:
        environ = {**os.environ, **settings, "PYTHONPATH": str(path)}
        environ.pop("PYTHONHOME", None)
        child = subprocess.Popen([str(env.python), *args], env=environ)

        def stop(signum: int, frame: object) -> None:
            child.send_signal(signal.SIGTERM)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
