"""The command line as a user meets it: real processes, messages, exit codes, files left."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models import PYFUNC_MLMODEL, write_fake_model


def mlimg(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "mlimg", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_clean_failure(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert message in result.stderr, result.stderr


def test_generate_writes_a_context(sklearn_model: Path, tmp_path: Path) -> None:
    result = mlimg("generate-dockerfile", "-m", str(sklearn_model), "--no-ca-cert", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mlimg-dockerfile" / "Dockerfile").is_file()
    assert "docker build -t IMAGE" in result.stderr
    assert "trusting the CA bundle" not in result.stderr


def test_ca_cert_defaults_to_pip_cert(sklearn_model: Path, ca_cert: Path, tmp_path: Path) -> None:
    result = mlimg(
        "generate-dockerfile",
        "-m",
        str(sklearn_model),
        "-d",
        "out",
        cwd=tmp_path,
        PIP_CERT=str(ca_cert),
        MLIMG_CA_CERT="",
    )
    assert result.returncode == 0, result.stderr
    assert f"trusting the CA bundle {ca_cert}" in result.stderr
    assert (tmp_path / "out" / "mlimg" / "ca-bundle.pem").is_file()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no model at"),
        ("no_mlmodel", "has no MLmodel file"),
        ("malformed", "MLmodel is malformed"),
        ("no_pyfunc", "no 'python_function' flavor"),
        ("shell_requirement", "requirements.txt line 2: 'numpy; rm -rf /' is not a valid PEP 508"),
        ("backticks", "requirements.txt line 1: '`id`' is not a valid PEP 508"),
    ],
)
def test_bad_models_fail_cleanly_and_write_nothing(
    tmp_path: Path, setup: str, message: str
) -> None:
    model = tmp_path / "model"
    if setup == "no_mlmodel":
        model.mkdir()
    elif setup == "malformed":
        write_fake_model(model, "flavors: {python_function: [\n", "numpy\n")
    elif setup == "no_pyfunc":
        write_fake_model(model, "flavors:\n  sklearn: {}\n", "numpy\n")
    elif setup == "shell_requirement":
        write_fake_model(model, PYFUNC_MLMODEL, "pandas\nnumpy; rm -rf /\n")
    elif setup == "backticks":
        write_fake_model(model, PYFUNC_MLMODEL, "`id`\n")
    out = tmp_path / "out"
    result = mlimg("generate-dockerfile", "-m", str(model), "-d", str(out), cwd=tmp_path)
    assert_clean_failure(result, message)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unreachable_engine_is_named(sklearn_model: Path, tmp_path: Path) -> None:
    result = mlimg(
        "build",
        "-m",
        str(sklearn_model),
        "-t",
        "mlimg-test/never:built",
        cwd=tmp_path,
        DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock",
    )
    assert_clean_failure(result, "no Docker engine answers at unix://")


def test_bad_ca_cert_is_a_usage_error(sklearn_model: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("hello\n")
    result = mlimg(
        "generate-dockerfile", "-m", str(sklearn_model), "--ca-cert", str(bogus), cwd=tmp_path
    )
    assert_clean_failure(result, "holds no PEM certificate")
    assert result.returncode == 2


def test_credentials_in_index_url_are_announced_not_written(
    sklearn_model: Path, tmp_path: Path
) -> None:
    locked = mlimg("lock", "-m", str(sklearn_model), "-o", "iris.lock", cwd=tmp_path)
    assert locked.returncode == 0, locked.stderr
    result = mlimg(
        "generate-dockerfile",
        "-m",
        str(sklearn_model),
        "--no-ca-cert",
        "--pip-index-url",
        "https://me:hunter2@index.example.invalid/simple",
        "--lock",
        str(tmp_path / "iris.lock"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "--build-arg PIP_INDEX_URL='https://***@index.example.invalid/simple'" in result.stderr
    assert "hunter2" not in result.stderr
    assert "hunter2" not in (tmp_path / "mlimg-dockerfile" / "Dockerfile").read_text()
    unreachable = mlimg(
        "generate-dockerfile", "-m", str(sklearn_model), "--no-ca-cert", "-d", "other",
        "--pip-index-url", "https://me:hunter2@index.example.invalid/simple", cwd=tmp_path,
    )  # fmt: skip
    assert unreachable.returncode == 1 and "hunter2" not in unreachable.stderr
    assert "cannot resolve the model's requirements" in unreachable.stderr


@pytest.mark.parametrize("tag", ["UPPER/case", "name:bad tag", "-leading", "a//b"])
def test_malformed_tag_is_refused_before_any_work(
    sklearn_model: Path, tmp_path: Path, tag: str
) -> None:
    result = mlimg(
        "build",
        "-m",
        str(sklearn_model),
        "-t",
        tag,
        cwd=tmp_path,
        DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock",
    )
    assert_clean_failure(result, "is not a valid image reference")


def test_predict_refuses_bad_paths_before_making_an_environment(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "model", PYFUNC_MLMODEL, "mlflow==3.17.2\n")
    source = tmp_path / "in.csv"
    source.write_text("a\n1\n")
    (tmp_path / "a-directory").mkdir()
    for args, message in (
        (("-i", str(tmp_path / "missing.csv")), "is not a file"),
        (("-i", str(tmp_path)), "is not a file"),
        (("-i", str(source), "-o", str(tmp_path / "a-directory")), "is a directory"),
        (("-i", str(source), "-t", "parquet"), "parquet input needs --runner spark"),
        (("-i", str(source), "--runner", "spark", "-t", "json", "-o", "x"), "not JSON"),
    ):
        result = mlimg("predict", "-m", str(model), *args, cwd=tmp_path)
        assert_clean_failure(result, message)
        assert "creating" not in result.stderr
