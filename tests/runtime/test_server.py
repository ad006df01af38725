"""Start-up: the arbiter swaps its pre-load workers for ones forked after the model loaded,
and the pre-load ones leave without Python's teardown."""

from __future__ import annotations

import os
import signal
import sys
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from mlimg_runtime.app import create_app
from mlimg_runtime.config import ServerConfig, writable_temp_dir
from mlimg_runtime.model import ServedModel
from mlimg_runtime.server import (
    GUNICORN_RANGE,
    UnknownSettings,
    _Arbiter,
    _exit_code,
    _Gunicorn,
    _ModelLoader,
    check_settings,
    gunicorn_options,
)


def arbiter_with_stub_processes(workers: int) -> tuple[_Arbiter, list[tuple[str, int]]]:
    """A real arbiter whose forks and kills are recorded instead of done."""
    config = ServerConfig(workers=workers, port=0, host="127.0.0.1")
    served = ServedModel()
    options = gunicorn_options(config, _ModelLoader(served, "/nowhere"))
    arbiter = _Arbiter(_Gunicorn(create_app(served, config), options))
    events: list[tuple[str, int]] = []
    next_pid = iter(range(200, 300))

    def spawn_worker() -> int:
        arbiter.worker_age += 1
        pid = next(next_pid)
        arbiter.WORKERS[pid] = SimpleNamespace(age=arbiter.worker_age)
        events.append(("spawn", pid))
        return pid

    def kill_worker(pid: int, sig: int) -> None:
        events.append(("stop" if sig == signal.SIGTERM else f"signal {sig}", pid))

    arbiter.spawn_worker = spawn_worker  # type: ignore[method-assign]
    arbiter.kill_worker = kill_worker  # type: ignore[method-assign]
    return arbiter, events


def test_new_workers_are_forked_before_the_old_ones_are_stopped() -> None:
    arbiter, events = arbiter_with_stub_processes(workers=2)
    arbiter.manage_workers()  # start-up: the two workers that answer 503 while loading
    assert events == [("spawn", 200), ("spawn", 201)]
    events.clear()

    arbiter.swap_pending = True  # what the loader sets when the model has loaded
    arbiter.manage_workers()
    assert events[:2] == [("spawn", 202), ("spawn", 203)]
    assert {pid for what, pid in events[2:]} == {200, 201}  # only the old ones are stopped
    assert {what for what, pid in events[2:]} == {"stop"}
    assert arbiter.swap_pending is False

    events.clear()
    for pid in (200, 201):  # the old ones exit and are reaped
        del arbiter.WORKERS[pid]
    arbiter.manage_workers()
    assert events == []  # one swap: nothing more is forked or stopped


@pytest.mark.parametrize(
    ("leaving", "status"),
    [
        (None, 0),
        (SystemExit(None), 0),
        (SystemExit(3), 3),
        (SystemExit(-1), 255),
        (SystemExit("a message"), 1),
        (ValueError("boom"), 1),
    ],
)
def test_exit_status_follows_sys_exit(leaving: BaseException | None, status: int) -> None:
    assert _exit_code(leaving) == status


def exit_status_of_a_worker_leaving(loader: _ModelLoader, in_the_master: bool = False) -> int:
    """Fork, leave with sys.exit(3) through the worker_exit hook, as gunicorn's worker does
    (or as its master does for a worker found gone); the child's status, or 99 when the hook
    let the child go on."""
    pid = os.fork()
    if pid == 0:
        worker = SimpleNamespace(pid=os.getppid() if in_the_master else os.getpid())
        try:
            try:
                sys.exit(3)
            finally:
                loader.worker_exit(None, worker)
        except SystemExit:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_worker_without_the_model_leaves_at_once_with_its_status() -> None:
    assert exit_status_of_a_worker_leaving(_ModelLoader(ServedModel(), "/nowhere")) == 3


def test_a_worker_with_the_model_leaves_through_python_teardown() -> None:
    served = ServedModel()
    served.model = object()  # loaded: the model's own atexit handlers must run
    assert exit_status_of_a_worker_leaving(_ModelLoader(served, "/nowhere")) == 99


def test_the_hook_run_by_the_master_for_a_vanished_worker_leaves_nothing() -> None:
    loader = _ModelLoader(ServedModel(), "/nowhere")  # the master while the model loads
    assert exit_status_of_a_worker_leaving(loader, in_the_master=True) == 99


def test_an_unknown_gunicorn_setting_is_refused_not_dropped() -> None:
    config = ServerConfig(workers=1, port=0, host="127.0.0.1")
    served = ServedModel()
    options = {**gunicorn_options(config, _ModelLoader(served, "/nowhere")), "no_such": 1}
    with pytest.raises(UnknownSettings, match="does not know the settings no_such"):
        check_settings(options, Config().settings)
    with pytest.raises(SystemExit):  # the server stops on it, the message logged
        _Gunicorn(create_app(served, config), options)


def test_the_supported_gunicorn_range_is_the_one_images_install() -> None:
    from importlib.resources import files

    import gunicorn
    from packaging.specifiers import SpecifierSet

    lines = files("mlimg_runtime").joinpath("requirements.txt").read_text().splitlines()
    [pin] = [line for line in lines if line.startswith("gunicorn")]
    assert pin == f"gunicorn{GUNICORN_RANGE}"
    assert gunicorn.__version__ in SpecifierSet(GUNICORN_RANGE)


def test_a_read_only_root_still_has_a_temporary_directory(tmp_path, monkeypatch) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    writable = tmp_path / "shm"
    writable.mkdir()
    monkeypatch.delenv("TMPDIR", raising=False)
    if os.access(read_only, os.W_OK):  # root ignores modes: make a file where a dir should be
        read_only.rmdir()
        read_only.write_text("")
    assert writable_temp_dir((str(read_only), str(writable))) == str(writable)
    assert writable_temp_dir((str(read_only),)) is None
