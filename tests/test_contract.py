"""The image contract is written once (runtime/contract.py): the README and the Dockerfile
say what it says."""

from __future__ import annotations

from pathlib import Path

from mlimg_runtime import contract
from mlimg_runtime.config import ServerConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_is_the_contracts() -> None:
    assert contract.settings_table() in README.read_text(encoding="utf-8")


def test_readme_endpoints_table_is_the_contracts() -> None:
    assert contract.endpoints_table() in README.read_text(encoding="utf-8")


def test_every_setting_is_a_server_config_field_and_back() -> None:
    fields = set(ServerConfig.__dataclass_fields__)
    assert {s.field for s in contract.SETTINGS} == fields


def test_environment_names_the_contracts_variables() -> None:
    env = contract.environment(model_path="/m", port=9000, workers=None, include_traceback=True)
    assert env == {"MLIMG_MODEL_PATH": "/m", "PORT": "9000", "MLIMG_INCLUDE_TRACEBACK": "1"}
    config = ServerConfig.from_env(env)
    assert (config.model_path, config.port, config.include_traceback) == ("/m", 9000, True)


def test_every_setting_says_what_the_mlserver_engine_does_with_it() -> None:
    assert all(setting.mlserver for setting in contract.SETTINGS)
