from pathlib import Path

import pytest

from mlimg_runtime.config import ServerConfig, available_cpus


def test_cgroup_v2_quota_caps_workers(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cpus(tmp_path) == min(2, available_cpus(tmp_path / "none"))


def test_unlimited_cgroup_uses_affinity(tmp_path: Path) -> None:
    import os

    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1


def test_config_from_env() -> None:
    config = ServerConfig.from_env(
        {"PORT": "9000", "MLIMG_WORKERS": "3", "MLIMG_MODEL_PATH": "/m", "MLIMG_TIMEOUT": "5"}
    )
    assert (config.port, config.workers, config.model_path, config.timeout) == (9000, 3, "/m", 5)


def test_config_defaults() -> None:
    config = ServerConfig.from_env({})
    assert (config.host, config.port, config.timeout) == ("0.0.0.0", 8080, 60)
    assert config.workers == available_cpus()
    assert (config.threads, config.batching, config.max_batch_rows, config.batch_wait_ms) == (
        8,
        "auto",
        64,
        5.0,
    )


def test_batching_settings_from_env() -> None:
    config = ServerConfig.from_env(
        {"MLIMG_BATCHING": " OFF ", "MLIMG_MAX_BATCH_ROWS": "16", "MLIMG_BATCH_WAIT_MS": "0.5"}
    )
    assert (config.batching, config.max_batch_rows, config.batch_wait_ms) == ("off", 16, 0.5)


def test_access_lines_are_written_at_most_200ms_late_unless_told() -> None:
    assert ServerConfig.from_env({}).log_flush_ms == 200.0
    assert ServerConfig.from_env({"MLIMG_LOG_FLUSH_MS": "0"}).log_flush_ms == 0.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "http"}, "PORT must be"),
        ({"MLIMG_WORKERS": "0"}, "MLIMG_WORKERS must be"),
        ({"MLIMG_BATCHING": "sometimes"}, "MLIMG_BATCHING must be one of auto, on, off"),
        ({"MLIMG_MAX_BATCH_ROWS": "0"}, "MLIMG_MAX_BATCH_ROWS must be"),
        ({"MLIMG_BATCH_WAIT_MS": "-1"}, "MLIMG_BATCH_WAIT_MS must be between"),
        ({"MLIMG_LOG_FLUSH_MS": "soon"}, "MLIMG_LOG_FLUSH_MS must be a number of milliseconds"),
        ({"MLIMG_BATCH_WAIT_MS": "nan"}, "MLIMG_BATCH_WAIT_MS must be between"),
        ({"MLIMG_BATCH_WAIT_MS": "soon"}, "MLIMG_BATCH_WAIT_MS must be a number"),
    ],
)
def test_bad_config(env, message) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig.from_env(env)
