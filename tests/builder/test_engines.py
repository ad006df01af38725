"""The serving-engine seam: what each engine puts into the plan, the context and the
Dockerfile, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlimg.engines import ENGINES, MLSERVER, serving_engine
from mlimg.envs import environment_key
from mlimg.errors import InvalidOption
from mlimg.model import load_local_model
from mlimg.plan import BuildOptions, plan_build
from mlimg.render import render_context, render_dockerfile
from mlimg.uris import resolve_model_uri
from mlimg_runtime import contract
from tests.models import PYFUNC_MLMODEL, with_unresolved_lock, write_fake_model


def model_of(path: Path):
    return load_local_model(resolve_model_uri(str(path)))


def test_the_default_engine_is_mlimgs_own_and_installs_its_runtime(sklearn_model: Path) -> None:
    plan = plan_build(model_of(sklearn_model), BuildOptions())
    assert plan.engine == "mlimg" and plan.labels["mlimg.engine"] == "mlimg"
    names = {req.name for req in plan.runtime_requirements}
    assert {"flask", "gunicorn", "httptools"} <= names and not plan.runtime_no_deps
    dockerfile = render_dockerfile(plan)
    assert 'ENTRYPOINT ["python", "-m", "mlimg_runtime"]' in dockerfile
    assert "\nEXPOSE 8080\n" in dockerfile
    assert "--no-deps --require-hashes -r /tmp/mlimg/runtime.lock" in dockerfile


def test_mlserver_engine_plan_context_and_dockerfile(sklearn_model: Path, tmp_path: Path) -> None:
    plan = plan_build(model_of(sklearn_model), BuildOptions(engine="mlserver"))
    assert plan.labels["mlimg.engine"] == "mlserver"
    assert [str(req) for req in plan.runtime_no_deps] == ["mlserver-mlflow==1.7.1"]
    runtime = {req.name: req for req in plan.runtime_requirements}
    assert str(runtime["mlserver"].specifier) == "==1.7.1"
    assert "<0.22" in str(runtime["uvloop"].specifier)  # 0.22 kills MLServer's workers
    assert "flask" not in runtime and "gunicorn" not in runtime
    context = render_context(with_unresolved_lock(plan), tmp_path / "ctx")
    dockerfile = context.dockerfile
    assert 'ENTRYPOINT ["python", "-m", "mlimg_runtime.mlserver_engine"]' in dockerfile
    ports = (contract.PORT, contract.MLSERVER_GRPC_PORT, contract.MLSERVER_METRICS_PORT)
    assert f"\nEXPOSE {' '.join(map(str, ports))}\n" in dockerfile
    # its packages, mlserver-mlflow among them, from the engine's section of the lock
    assert "--no-deps --require-hashes -r /tmp/mlimg/runtime.lock" in dockerfile
    assert "mlserver-mlflow==1.7.1\n" in (context.path / "mlimg" / "runtime.lock").read_text()
    marker = json.loads((context.path / "mlimg" / "context.json").read_text())
    assert marker["engine"] == "mlserver"


def test_mlserver_engine_refuses_a_python_it_does_not_run_on(tmp_path: Path) -> None:
    written = write_fake_model(
        tmp_path / "m",
        PYFUNC_MLMODEL,
        requirements="mlflow==3.17.2\n",
        **{"python_env.yaml": "python: 3.13.5\ndependencies: [mlflow==3.17.2]\n"},
    )
    model = model_of(written)
    with pytest.raises(InvalidOption, match=r"runs on Python below 3\.13.*--engine mlimg"):
        plan_build(model, BuildOptions(engine="mlserver"))
    assert plan_build(model, BuildOptions()).engine == "mlimg"


def test_an_unknown_engine_is_named() -> None:
    with pytest.raises(InvalidOption, match="unknown serving engine 'triton'; choose one of"):
        serving_engine("triton")


def test_each_engine_has_its_own_cached_environment(sklearn_model: Path) -> None:
    model = model_of(sklearn_model)
    keys = {environment_key(model, "uv", engine) for engine in ENGINES.values()}
    assert len(keys) == len(ENGINES)


def test_engine_modules_and_requirement_files_ship_with_the_runtime() -> None:
    from importlib.resources import files
    from importlib.util import find_spec

    runtime = files("mlimg_runtime")
    for engine in ENGINES.values():
        assert find_spec(engine.module) is not None, engine.module
        for name in filter(None, (engine.requirements_file, engine.no_deps_file)):
            assert runtime.joinpath(name).is_file(), name
    assert all("==" in str(req) for req in MLSERVER.no_deps_requirements())


def test_local_env_manager_names_what_the_engine_lacks() -> None:
    from dataclasses import replace

    from mlimg.envs import _local_environment

    lacking = replace(MLSERVER, host_modules=("mlflow", "no_such_module_for_mlimg"))
    with pytest.raises(InvalidOption) as refused:
        _local_environment(lacking)
    message = str(refused.value)
    assert "lacks no_such_module_for_mlimg for the mlserver engine" in message
    assert "pip install --no-deps mlserver-mlflow==1.7.1" in message
