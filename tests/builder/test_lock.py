"""`mlimg lock`: the model's environment and the engine resolved on the host, with hashes, for
the image's Python and platform. Real resolutions with uv against the package index."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlimg import lock
from mlimg.envmanagers import SBOM_TOOL, UV_VERSION, uv_binary
from mlimg.errors import InvalidOption, LockFailed
from mlimg.model import LocalModel, load_local_model
from mlimg.plan import BuildOptions, plan_build
from mlimg.uris import resolve_model_uri


def local_model(path: Path) -> LocalModel:
    return load_local_model(resolve_model_uri(str(path)))


def mlimg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlimg", *args], capture_output=True, text=True, timeout=600
    )


def entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """Each locked package: its version and its hashes."""
    found: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in text.splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==", 1)
            found[name] = (version.split()[0], [])
        elif line.strip().startswith("--hash=sha256:") and name is not None:
            found[name][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
    return found


@pytest.fixture(scope="module")
def iris_lock(example_model: Path) -> lock.Lock:
    plan = plan_build(local_model(example_model), BuildOptions())
    return lock.resolve(plan, lambda line: None)


def test_the_lock_pins_the_model_and_the_runtime_with_hashes(iris_lock: lock.Lock) -> None:
    locked = entries(iris_lock.text)
    assert locked["scikit-learn"][0] == "1.9.1"  # the model's own pin holds
    assert locked["mlflow-skinny"][0] == "3.17.2"  # the client the model was saved with
    for runtime in ("flask", "gunicorn", "pandas", "numpy", "scipy"):
        assert runtime in locked, runtime
    assert all(hashes for _, hashes in locked.values()), "a package without a hash"
    assert iris_lock.text.startswith("# mlimg ")
    assert "# python: 3.11\n" in iris_lock.text and "x86_64-manylinux_2_28" in iris_lock.text
    environment = entries(iris_lock.environment)
    assert iris_lock.pins == {name: version for name, (version, _) in environment.items()}


def test_the_builds_tools_are_locked_apart_from_the_environment(iris_lock: lock.Lock) -> None:
    """uv and cyclonedx-bom run in the build stage, each in a place of its own: locked (so that
    an offline build finds them in a wheelhouse), never part of the environment's pins."""
    uv = entries(iris_lock.section(lock.UV_SECTION))
    assert list(uv) == ["uv"] and uv["uv"][0] == UV_VERSION and len(uv["uv"][1]) > 5
    sbom = entries(iris_lock.section(lock.SBOM_TOOL_SECTION))
    assert sbom["cyclonedx-bom"][0] == SBOM_TOOL.split("==")[1]
    assert all(hashes for _, hashes in sbom.values())
    assert "uv" not in iris_lock.pins and "cyclonedx-bom" not in iris_lock.pins
    # iris's python_env.yaml asks for pip, setuptools and wheel before its requirements: locked
    # apart, without what the environment holds (its versions win), so each package once.
    build = entries(iris_lock.build_part)
    assert build["pip"][0] == "23.2.1" and build["setuptools"][0] == "65.5.0" and "wheel" in build
    assert not set(build) & set(entries(iris_lock.model_part + iris_lock.engine_part))
    assert iris_lock.text.count(lock.UV_SECTION) == 1


def test_a_lock_without_the_tools_sections_is_refused(
    example_model: Path, iris_lock: lock.Lock, tmp_path: Path
) -> None:
    path = tmp_path / "old.lock"
    path.write_text(iris_lock.text.split(lock.UV_SECTION)[0])
    plan = plan_build(local_model(example_model), BuildOptions())
    with pytest.raises(InvalidOption, match="written by an earlier mlimg; write it again"):
        lock.check_fits(lock.read(path), plan, "linux/amd64")


def test_build_requirements_are_locked_and_checked(example_model: Path, tmp_path: Path) -> None:
    """python_env.yaml's build_dependencies (a virtualenv's pip and setuptools) get a section of
    their own, installed before the model's, and are held to it."""
    model = tmp_path / "model"
    shutil.copytree(example_model, model)
    env = model / "python_env.yaml"
    text = env.read_text()
    assert "build_dependencies:\n" in text
    build = "build_dependencies:\n- pip==24.0\n- setuptools==69.5.1\n"
    env.write_text(re.sub(r"build_dependencies:\n(- .*\n)*", build, text))
    plan = plan_build(local_model(model), BuildOptions(env_manager="virtualenv"))
    locked = lock.resolve(plan, lambda line: None)
    part = entries(locked.build_part)
    assert part == {name: part[name] for name in ("pip", "setuptools")}
    assert part["pip"][0] == "24.0" and part["setuptools"][0] == "69.5.1"
    assert all(hashes for _, hashes in part.values())
    assert locked.pins["pip"] == "24.0"  # the environment holds them
    lock.check_fits(locked, plan, "linux/amd64")
    other = tmp_path / "other.lock"
    other.write_text(locked.text.replace("\npip==24.0", "\npip==23.3"))
    refusal = "the lock pins pip 23.3, and python_env.yaml (build dependencies) requires pip==24.0"
    with pytest.raises(InvalidOption, match=re.escape(refusal)):
        lock.check_fits(lock.read(other), plan, "linux/amd64")


def test_the_lock_installs_as_it_is_and_is_complete(iris_lock: lock.Lock, tmp_path: Path) -> None:
    """`--no-deps --require-hashes`: every file checked, nothing resolved again; `pip check`
    then finds every dependency present."""
    path = tmp_path / "iris.lock"
    path.write_text(iris_lock.environment)
    uv, venv = uv_binary(), tmp_path / "venv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run([uv, "venv", "-q", "--python", "3.11", str(venv)], check=True, env=env)
    python = str(venv / "bin" / "python")
    install = [uv, "pip", "install", "-q", "--python", python, "--no-deps", "--require-hashes"]
    subprocess.run([*install, "-r", str(path)], check=True, env=env, timeout=600)
    check = subprocess.run(
        [uv, "pip", "check", "--python", python], capture_output=True, text=True, env=env
    )
    assert check.returncode == 0, check.stdout + check.stderr
    listed = subprocess.run(
        [uv, "pip", "list", "--python", python, "--format=freeze"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    installed = dict(line.split("==", 1) for line in listed.split())
    assert {name.lower(): version for name, version in installed.items()} == {
        name.lower(): version for name, version in iris_lock.pins.items()
    }


def test_an_arm64_lock_has_the_same_versions(example_model: Path, iris_lock: lock.Lock) -> None:
    """Resolved on this amd64 host for arm64: nothing here can run it. The hashes are those of
    every file of each release (as pip-compile's), so the platforms differ only in versions
    where a platform's wheels do, and not for this model."""
    plan = plan_build(local_model(example_model), BuildOptions())
    arm = lock.resolve(plan, lambda line: None, platform="linux/arm64")
    assert "# platform: linux/arm64 (aarch64-manylinux_2_28)" in arm.text
    assert arm.pins == iris_lock.pins
    assert entries(arm.environment) == entries(iris_lock.environment)


def test_the_mlserver_engine_is_locked_with_its_packages(example_model: Path) -> None:
    plan = plan_build(local_model(example_model), BuildOptions(engine="mlserver"))
    pins = lock.resolve(plan, lambda line: None).pins
    assert pins["mlserver"] == "1.7.1" and "mlserver-mlflow" in pins
    assert int(pins["protobuf"].split(".")[0]) < 7  # mlserver's pin wins over mlflow-skinny's
    assert pins["scikit-learn"] == "1.9.1"


def test_requirements_that_cannot_be_resolved_are_named(
    example_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    subprocess.run(["cp", "-r", str(example_model), str(model)], check=True)
    requirements = model / "requirements.txt"
    text = requirements.read_text().replace("scikit-learn==1.9.1", "scikit-learn==9.9.9")
    requirements.write_text(text)
    plan = plan_build(local_model(model), BuildOptions())
    with pytest.raises(LockFailed, match="cannot resolve the model's requirements") as failed:
        lock.resolve(plan, lambda line: None)
    assert "scikit-learn==9.9.9" in str(failed.value)
    result = mlimg("lock", "-m", str(model), "-o", str(tmp_path / "lock.txt"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "mlimg: error: cannot resolve the model's requirements" in result.stderr
    assert not list(tmp_path.glob("*lock*"))  # nothing written


def test_the_command_writes_to_stdout_or_a_file(example_model: Path, tmp_path: Path) -> None:
    printed = mlimg("lock", "-m", str(example_model), "--python", "3.13")
    assert printed.returncode == 0, printed.stderr
    assert "# python: 3.13\n" in printed.stdout and "scikit-learn==1.9.1" in printed.stdout
    written = mlimg("lock", "-m", str(example_model), "-o", str(tmp_path / "iris.lock"))
    assert written.returncode == 0, written.stderr
    assert "packages pinned with their hashes (sha256:" in written.stderr
    assert (tmp_path / "iris.lock").read_text().count("--hash=sha256:") > 60
    assert [p.name for p in tmp_path.iterdir()] == ["iris.lock"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--python", "3"], "is not a Python version X.Y"),
        (["--platform", "linux/s390x"], "'linux/s390x' is not one of"),
        (["-o", "/nonexistent/dir/lock.txt"], "does not exist"),
    ],
)
def test_bad_options_are_refused(example_model: Path, args: list[str], message: str) -> None:
    result = mlimg("lock", "-m", str(example_model), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_lock_that_fits_is_read_back_and_accepted(
    example_model: Path, iris_lock: lock.Lock, tmp_path: Path
) -> None:
    path = tmp_path / "iris.lock"
    lock.write(iris_lock, path)
    again = lock.read(path)
    assert again == iris_lock
    lock.check_fits(again, plan_build(local_model(example_model), BuildOptions()), "linux/amd64")


@pytest.mark.parametrize(
    ("change", "platform", "message"),
    [
        (("scikit-learn==1.9.1", "scikit-learn==1.8.0"), "linux/amd64",
         "the lock pins scikit-learn 1.8.0, and requirements.txt line "),
        (("\nscikit-learn==", "\n# scikit-learn=="), "linux/amd64",
         "the lock has no scikit-learn, which requirements.txt line "),
        (("\ngunicorn==", "\n# gunicorn=="), "linux/amd64",
         "the lock has no gunicorn, which the engine requires"),
        (("# python: 3.11", "# python: 3.12"), "linux/amd64",
         "the lock is for Python 3.12; this image needs 3.11"),
        (("", ""), "linux/arm64", "the lock is for linux/amd64; this image is for linux/arm64"),
    ],
)  # fmt: skip
def test_a_lock_that_does_not_fit_is_refused_with_the_difference_named(
    example_model: Path,
    iris_lock: lock.Lock,
    tmp_path: Path,
    change: tuple[str, str],
    platform: str,
    message: str,
) -> None:
    path = tmp_path / "iris.lock"
    assert change[0] in iris_lock.text
    path.write_text(iris_lock.text.replace(*change, 1))
    plan = plan_build(local_model(example_model), BuildOptions())
    with pytest.raises(InvalidOption, match=re.escape(message)):
        lock.check_fits(lock.read(path), plan, platform)


def test_a_file_that_is_not_a_lock_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("scikit-learn==1.9.1\n")
    with pytest.raises(InvalidOption, match="not a lock written by mlimg lock"):
        lock.read(path)
    with pytest.raises(InvalidOption, match="cannot read it"):
        lock.read(tmp_path / "missing.lock")


def tiny_wheel(directory: Path) -> Path:
    """A valid, minimal pure-Python wheel (mlimg-test-pkg 1.0)."""
    import zipfile

    wheel = directory / "mlimg_test_pkg-1.0-py3-none-any.whl"
    info = "mlimg_test_pkg-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mlimg_test_pkg/__init__.py", "")
        archive.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: mlimg-test-pkg\nVersion: 1.0\n"
        )
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel


def test_a_wheel_inside_the_model_is_locked_by_its_path_in_the_build_stage(
    example_model: Path, tmp_path: Path
) -> None:
    import hashlib

    model = tmp_path / "model"
    shutil.copytree(example_model, model)
    (model / "wheels").mkdir()
    wheel = tiny_wheel(model / "wheels")
    with (model / "requirements.txt").open("a") as requirements:
        requirements.write(f"\nmlimg-test-pkg @ {wheel.as_uri()}\n")
    locked = lock.resolve(plan_build(local_model(model), BuildOptions()), lambda line: None)
    entry = f"mlimg-test-pkg @ file:///tmp/mlimg/env/files/wheels/{wheel.name}"
    assert entry in locked.model_part
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() in locked.text
    assert str(tmp_path) not in locked.text  # the same lock wherever the model lies
    lock.check_fits(locked, plan_build(local_model(model), BuildOptions()), "linux/amd64")


def test_generate_dockerfile_takes_a_lock_and_refuses_one_that_does_not_fit(
    example_model: Path, iris_lock: lock.Lock, tmp_path: Path
) -> None:
    good = tmp_path / "iris.lock"
    lock.write(iris_lock, good)
    result = mlimg("generate-dockerfile", "-m", str(example_model), "--lock", str(good), "-d",
                   str(tmp_path / "ctx"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ctx" / "mlimg" / "requirements.lock").read_text() == iris_lock.text
    assert f'mlimg.lock="{iris_lock.digest}"' in (tmp_path / "ctx" / "Dockerfile").read_text()
    other = tmp_path / "other.lock"
    other.write_text(iris_lock.text.replace("\nscikit-learn==1.9.1", "\nscikit-learn==1.8.0"))
    refused = mlimg("generate-dockerfile", "-m", str(example_model), "--lock", str(other), "-d",
                    str(tmp_path / "ctx2"))  # fmt: skip
    assert refused.returncode == 2 and "the lock pins scikit-learn 1.8.0" in refused.stderr
    assert not (tmp_path / "ctx2").exists()
