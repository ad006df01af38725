"""Nothing from outside the model directory may reach a build context, an image or a server:
symbolic links, paths that MLmodel names, direct references, conda specs, credentials."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from mlimg.errors import InvalidModel, InvalidRequirement
from mlimg.model import load_local_model
from mlimg.plan import BuildOptions, has_credentials, plan_build, redact_url
from mlimg.render import render_context, render_dockerfile
from mlimg.uris import resolve_model_uri
from tests.models import PYFUNC_MLMODEL, with_unresolved_lock, write_fake_model


def load(path: Path):
    return load_local_model(resolve_model_uri(str(path)))


def fake_model(tmp_path: Path, requirements: str = "mlflow==3.17.2\n") -> Path:
    return write_fake_model(tmp_path / "model", PYFUNC_MLMODEL, requirements)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the model, readable by its owner only."""
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text("top secret\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("target", ["file", "directory", "/etc/shadow"])
def test_a_link_out_of_the_model_is_refused_before_anything_is_written(
    tmp_path: Path, secret: Path, target: str
) -> None:
    model = fake_model(tmp_path)
    pointed = {"file": secret, "directory": secret.parent, "/etc/shadow": Path("/etc/shadow")}
    (model / "weights").mkdir()
    (model / "weights" / "leak").symlink_to(pointed[target])
    with pytest.raises(InvalidModel, match=r"weights/leak is a symbolic link to .*outside"):
        load(model)


def test_no_context_is_written_for_such_a_model(tmp_path: Path, secret: Path) -> None:
    from tests.builder.test_cli import assert_clean_failure, mlimg

    model = fake_model(tmp_path)
    (model / "model.pkl").symlink_to(secret)
    dest = tmp_path / "context"
    result = mlimg("generate-dockerfile", "-m", str(model), "-d", str(dest), cwd=tmp_path)
    assert_clean_failure(result, "model.pkl is a symbolic link")
    assert not dest.exists()
    assert {path.name for path in tmp_path.iterdir()} == {"model", "outside"}


@pytest.mark.parametrize("name", ["requirements.txt", "MLmodel", "python_env.yaml", "conda.yaml"])
def test_environment_files_linked_out_of_the_model_are_refused(
    tmp_path: Path, secret: Path, name: str
) -> None:
    model = fake_model(tmp_path)
    outside = tmp_path / "outside" / name
    shutil.copyfile(model / "MLmodel" if name == "MLmodel" else model / "requirements.txt", outside)
    (model / name).unlink(missing_ok=True)
    (model / name).symlink_to(outside)
    with pytest.raises(InvalidModel, match=rf"{re.escape(name)} is a symbolic link"):
        load(model)


def test_an_included_requirements_file_linked_out_is_refused(tmp_path: Path) -> None:
    model = fake_model(tmp_path, "-r more.txt\n")
    (tmp_path / "more.txt").write_text("numpy\n")
    (model / "more.txt").symlink_to(tmp_path / "more.txt")
    with pytest.raises(InvalidModel, match=r"more\.txt is a symbolic link"):
        load(model)


def test_links_inside_the_model_are_copied_as_links(tmp_path: Path) -> None:
    model = fake_model(tmp_path)
    (model / "data").mkdir()
    (model / "data" / "weights.bin").write_bytes(b"\x00" * 10)
    (model / "data" / "weights.bin").chmod(0o600)
    (model / "relative").symlink_to("data/weights.bin")
    (model / "absolute").symlink_to(model / "data" / "weights.bin")
    (model / "data-dir").symlink_to("data")
    plan = with_unresolved_lock(plan_build(load(model), BuildOptions()))
    context = render_context(plan, tmp_path / "ctx")
    copied = context.path / "model"
    for name in ("relative", "absolute", "data-dir"):
        assert (copied / name).is_symlink(), name
        assert not os.path.isabs(os.readlink(copied / name)), name
        assert Path(os.path.realpath(copied / name)).is_relative_to(copied.resolve())
    assert (copied / "absolute").read_bytes() == b"\x00" * 10
    # The file itself is made readable by the image's user, as every model file is.
    assert stat.S_IMODE((copied / "data" / "weights.bin").stat().st_mode) == 0o644


def test_a_dangling_link_and_a_fifo_are_refused(tmp_path: Path) -> None:
    model = fake_model(tmp_path)
    (model / "gone").symlink_to("nothing-here")
    with pytest.raises(InvalidModel, match="gone is a symbolic link to nothing-here, which does"):
        load(model)
    (model / "gone").unlink()
    os.mkfifo(model / "pipe")
    with pytest.raises(InvalidModel, match="pipe is not a regular file"):
        load(model)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("serving_input_path", "/etc/passwd"),
        ("serving_input_path", "../outside/secret.txt"),
        ("artifact_path", "/etc/passwd"),
        ("artifact_path", "../../etc/passwd"),
    ],
)
def test_example_paths_in_mlmodel_may_not_leave_the_model(
    tmp_path: Path, secret: Path, key: str, value: str
) -> None:
    mlmodel = PYFUNC_MLMODEL + f"saved_input_example_info:\n  {key}: {value}\n  type: json_object\n"
    model = write_fake_model(tmp_path / "model", mlmodel, "mlflow==3.17.2\n")
    kind = "absolute path" if value.startswith("/") else "outside the model"
    with pytest.raises(InvalidModel, match=kind):
        load(model)


def test_a_file_url_outside_the_model_is_refused(tmp_path: Path) -> None:
    model = fake_model(tmp_path, "mlflow==3.17.2\npkg @ file:///etc/passwd\n")
    with pytest.raises(InvalidRequirement, match="file outside the model directory"):
        load(model)


@pytest.mark.parametrize("url", ["ftp://example.invalid/pkg.whl", "ssh://example.invalid/x"])
def test_a_direct_reference_must_be_http(tmp_path: Path, url: str) -> None:
    model = fake_model(tmp_path, f"mlflow==3.17.2\npkg @ {url}\n")
    with pytest.raises(InvalidRequirement, match="not an http"):
        load(model)


def test_a_wheel_inside_the_model_is_copied_into_the_build_stage(tmp_path: Path) -> None:
    model = fake_model(tmp_path)
    wheel = model / "wheels" / "pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK fake")
    (model / "requirements.txt").write_text(f"mlflow==3.17.2\npkg @ {wheel.as_uri()}\n")
    plan = with_unresolved_lock(plan_build(load(model), BuildOptions()))
    context = render_context(plan, tmp_path / "ctx")
    # The lock names it by this path (tests/builder/test_lock.py).
    assert (context.path / "env" / "files" / "wheels" / wheel.name).read_bytes() == b"PK fake"


@pytest.mark.parametrize(
    "dependency",
    ["python=3.11 && id", "numpy; rm -rf /", "$(id)", "numpy`id`", "'quoted'", "a\nb", 3.11],
)
def test_conda_specs_are_checked_as_strictly_as_pip_lines(tmp_path: Path, dependency) -> None:
    model = fake_model(tmp_path)
    (model / "requirements.txt").unlink()
    import yaml

    conda = {"channels": ["conda-forge"], "dependencies": ["python=3.11", dependency, "pip"]}
    (model / "conda.yaml").write_text(yaml.safe_dump(conda))
    with pytest.raises(InvalidModel, match="is not a conda match spec"):
        load(model)


def test_ordinary_conda_specs_and_channels_pass(tmp_path: Path) -> None:
    import yaml

    model = fake_model(tmp_path)
    (model / "requirements.txt").unlink()
    conda = {
        "channels": ["conda-forge", "nvidia/label/cuda-11.8.0", "https://conda.example/c"],
        "dependencies": [
            "python=3.11.7",
            "numpy>=1.24,<2",
            "conda-forge::pytorch=2.1=py311_0",
            "python_abi 3.11.* *_cp311",
            "pip<=24.0",
            {"pip": ["mlflow==3.17.2"]},
        ],
    }
    (model / "conda.yaml").write_text(yaml.safe_dump(conda))
    assert [str(req) for req in load(model).requirements] == ["mlflow==3.17.2"]


def test_a_conda_channel_with_credentials_is_refused(tmp_path: Path) -> None:
    import yaml

    model = fake_model(tmp_path)
    conda = {"channels": ["https://user:token@conda.example/c"], "dependencies": ["pip"]}
    (model / "conda.yaml").write_text(yaml.safe_dump(conda))
    with pytest.raises(InvalidModel, match="channel"):
        load(model)


TOKEN_URLS = [
    "https://gitlab.example.invalid/api/v4/projects/1/packages/pypi/simple?private_token=s3cr3t",
    "https://user:s3cr3t@index.example.invalid/simple",
    "https://index.example.invalid/simple#s3cr3t",
]


@pytest.mark.parametrize("url", TOKEN_URLS)
def test_an_index_url_carrying_a_token_is_never_written(
    sklearn_model: Path, tmp_path: Path, url: str
) -> None:
    assert has_credentials(url)
    assert "s3cr3t" not in redact_url(url)
    plan = plan_build(load(sklearn_model), BuildOptions(pip_extra_index_url=url))
    context = render_context(with_unresolved_lock(plan), tmp_path / "ctx")
    for path in context.path.rglob("*"):
        if path.is_file():
            assert b"s3cr3t" not in path.read_bytes(), path
    assert "ARG PIP_EXTRA_INDEX_URL\n" in render_dockerfile(plan)
    assert any("s3cr3t" not in notice and "--build-arg" in notice for notice in context.notices)
    assert plan.build_args["PIP_EXTRA_INDEX_URL"] == url
