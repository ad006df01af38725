"""The MLServer engine's mapping of the contract's settings onto MLServer's, as pure functions
(MLServer itself is exercised by the images in tests/e2e/test_mlserver.py)."""

from __future__ import annotations

import subprocess
import sys

from mlimg_runtime import contract
from mlimg_runtime.config import ServerConfig
from mlimg_runtime.mlserver_engine import mlserver_settings, model_settings


def test_server_settings_come_from_the_contract() -> None:
    config = ServerConfig.from_env({"PORT": "9000", "MLIMG_WORKERS": "3", "MLIMG_HOST": "::"})
    settings = mlserver_settings(config, "/dev/shm/mlserver-x")
    assert (settings["http_port"], settings["host"], settings["parallel_workers"]) == (
        9000,
        "::",
        3,
    )
    assert settings["grpc_port"] == contract.MLSERVER_GRPC_PORT == 8081
    assert settings["metrics_port"] == contract.MLSERVER_METRICS_PORT == 8082
    # writable places for a read-only root and a user that owns nothing
    assert settings["metrics_dir"].startswith("/dev/shm/mlserver-x/")
    assert settings["environments_dir"].startswith("/dev/shm/mlserver-x/")
    assert settings["load_models_at_startup"] is False


def test_model_settings_name_path_and_v2_batching() -> None:
    config = ServerConfig.from_env(
        {"MLIMG_MODEL_PATH": "/m", "MLIMG_MODEL_NAME": "iris", "MLIMG_MAX_BATCH_ROWS": "32",
         "MLIMG_BATCHING": "on"}
    )  # fmt: skip
    settings = model_settings(config)
    assert (settings["name"], settings["parameters"]) == ("iris", {"uri": "/m"})
    assert (settings["max_batch_size"], settings["max_batch_time"]) == (32, 0.005)
    assert settings["implementation"] == "mlimg_runtime.mlserver_engine.MlimgModel"
    # MLServer's batcher holds even a lone request: not under auto (the default), nor off
    for mode in ("auto", "off"):
        held = model_settings(ServerConfig.from_env({"MLIMG_BATCHING": mode}))
        assert (held["max_batch_size"], held["max_batch_time"]) == (1, 0)


def test_the_module_imports_without_mlserver() -> None:
    """It ships in every image, the default engine's too, which have no mlserver."""
    code = (
        "import sys, mlimg_runtime.mlserver_engine; "
        "print([m for m in ('mlserver', 'fastapi', 'starlette') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
