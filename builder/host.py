"""Running mlimg's runtime on the host, in the model's environment: `serve` and `predict`.

The runtime runs as a child process of the environment's interpreter, with only a copy of
mlimg_runtime on its path; Ctrl-C and SIGTERM are passed on to it as a graceful stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mlimg.engines import ServingEngine
from mlimg.envs import ModelEnvironment, runtime_path
from mlimg.errors import InvalidOption, ServerFailed
from mlimg_runtime import contract


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InvalidOption(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(
    engine: ServingEngine,
    env: ModelEnvironment,
    model_path: Path,
    host: str,
    port: int,
    workers: int | None,
    timeout: int,
) -> None:
    settings = contract.environment(
        model_path=model_path, host=host, port=port, timeout=timeout, workers=workers
    )
    code = run_runtime(env, ["-m", engine.module], settings)
    if code not in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT):
        raise ServerFailed(f"the server exited with code {code} (its log is above)")


def predict(
    env: ModelEnvironment,
    model_path: Path,
    input_path: Path | None,
    output_path: Path | None,
    content_type: str,
    chunk_rows: int,
) -> int:
    """Batch inference; the output file appears whole, or not at all, and two runs writing the
    same output each write their own file until the last one's is renamed into place.

    The child writes to a file with no name (O_TMPFILE) that is linked beside the output only
    once it is complete, so that even a SIGKILL of mlimg leaves nothing behind; where the file
    system cannot make such files, to a uniquely named hidden file, removed on failure.
    Returns the exit status (128 + the signal, for a run stopped by one).
    """
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
    args += ["--format", "csv" if output_path.suffix.lower() == ".csv" else "json"]
    with _unnamed_output(output_path) as (target, publish, pass_fds):
        code = run_runtime(env, [*args, "--output", target], {}, pass_fds=pass_fds)
        if code == 0:
            publish()
        return code


@contextlib.contextmanager
def _unnamed_output(output: Path) -> Iterator[tuple[str, Callable[[], None], tuple[int, ...]]]:
    """(where the child writes, how to put it in place, file descriptors the child inherits)."""
    try:
        fd = os.open(output.parent, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except (AttributeError, OSError):  # not Linux, or a file system without O_TMPFILE
        fd = None
    if fd is not None:

        def link() -> None:
            staged = _staging_name(output)
            # linkat(AT_SYMLINK_FOLLOW) on the descriptor's /proc entry, as open(2) shows for
            # O_TMPFILE; a directory descriptor makes Python call linkat rather than link.
            proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link(str(fd), staged, src_dir_fd=proc, follow_symlinks=True)
            finally:
                os.close(proc)
            os.replace(staged, output)

        try:
            yield f"/proc/self/fd/{fd}", link, (fd,)
        finally:
            os.close(fd)
        return
    staged = _staging_name(output)
    try:
        yield str(staged), lambda: os.replace(staged, output), ()
    finally:
        staged.unlink(missing_ok=True)


def _staging_name(output: Path) -> Path:
    return output.with_name(f".{output.name}.{secrets.token_hex(6)}.mlimg-partial")


def run_runtime(
    env: ModelEnvironment,
    args: Sequence[str],
    settings: dict[str, str],
    pass_fds: tuple[int, ...] = (),
) -> int:
    """Run the environment's Python on the runtime; returns its exit status, 128 + N when a
    signal N stopped mlimg (or the child) as a shell would report it.

    SIGINT and SIGTERM are passed on to the child as a graceful stop; the child is killed
    if mlimg itself dies (PR_SET_PDEATHSIG), so that it never goes on writing as an orphan.
    """
    with runtime_path() as path:
        environ = {**os.environ, **settings, "PYTHONPATH": str(path)}
        environ.pop("PYTHONHOME", None)
        child = subprocess.Popen(
            [str(env.python), *args],
            env=environ,
            pass_fds=pass_fds,
            preexec_fn=_die_with_parent,  # safe here: the CLI runs no other threads
        )
        received: list[int] = []

        def stop(signum: int, frame: object) -> None:
            received.append(signum)
            child.send_signal(signal.SIGTERM)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if received:
            return 128 + received[0]
        return 128 - code if code < 0 else code


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent (mlimg) dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        return
    if os.getppid() == 1:  # the parent died before the call: nobody to die with
        os._exit(1)


_PR_SET_PDEATHSIG = 1
