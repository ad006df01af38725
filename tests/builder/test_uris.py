"""Every model URI form, resolved against a real tracking server by MLflow's own client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlimg.errors import InvalidModel, ModelNotFound
from mlimg.model import load_local_model
from mlimg.uris import open_model, resolve_model_uri
from tests.probes import free_port


def load(uri: str, tmp_path: Path):
    return load_local_model(resolve_model_uri(uri, tmp_path))


def test_runs_uri(registry, tmp_path: Path) -> None:
    model = load(f"runs:/{registry.run_id}/model", tmp_path)
    assert model.model_uuid == registry.uuid_v1
    assert model.run_id == registry.run_id


@pytest.mark.parametrize(
    ("suffix", "version"),
    [
        ("/1", "1"),
        ("@champion", "1"),
        ("/Production", "1"),
        ("/production", "1"),
        ("/latest", "2"),
        ("/2", "2"),
    ],
)
def test_registered_model_uris(registry, tmp_path: Path, suffix: str, version: str) -> None:
    model = load(f"models:/{registry.name}{suffix}", tmp_path)
    assert model.registered_name == registry.name
    assert model.registered_version == version
    assert model.model_uuid == (registry.uuid_v1 if version == "1" else registry.uuid_v2)
    assert model.run_id


def test_logged_model_uri(registry, tmp_path: Path) -> None:
    model = load(f"models:/{registry.model_id}", tmp_path)
    assert model.model_uuid == registry.uuid_v1
    assert (model.model_id, model.run_id) == (registry.model_id, registry.run_id)


def test_mlflow_artifacts_uri(registry, tmp_path: Path) -> None:
    assert registry.artifact_location.startswith("mlflow-artifacts:/")
    model = load(registry.artifact_location, tmp_path)
    assert model.model_uuid == registry.uuid_v1


def test_open_model_removes_the_download(registry) -> None:
    with open_model(f"models:/{registry.name}/1") as resolved:
        assert (resolved.path / "MLmodel").is_file()
        where = resolved.path
    assert not where.exists()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("runs:/0123456789abcdef0123456789abcdef/model", "0123456789abcdef0123456789abcdef"),
        ("models:/no-such-model/1", "no-such-model"),
        ("models:/mlimg-iris/99", "99"),
        ("models:/mlimg-iris@nobody", "nobody"),
    ],
)
def test_unknown_models_are_named(registry, tmp_path: Path, uri: str, message: str) -> None:
    with pytest.raises(ModelNotFound, match=message) as excinfo:
        load(uri, tmp_path)
    assert str(excinfo.value).startswith(uri)


def test_artifact_path_without_mlmodel(registry, tmp_path: Path) -> None:
    with pytest.raises((InvalidModel, ModelNotFound), match="runs:/"):
        load(f"runs:/{registry.run_id}/model/requirements.txt", tmp_path / "a")
    with pytest.raises((InvalidModel, ModelNotFound), match="runs:/"):
        load(f"runs:/{registry.run_id}/no-such-path", tmp_path / "b")


def generate(uri: str, out: Path, tracking_url: str, *extra: str) -> subprocess.CompletedProcess:
    """`mlimg generate-dockerfile` against the tracking server at `tracking_url`."""
    return subprocess.run(
        [sys.executable, "-m", "mlimg", "generate-dockerfile", "-m", uri, "-d", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_url},
    )


def test_cli_records_the_resolved_origin_in_labels(registry, tmp_path: Path) -> None:
    result = generate(
        f"models:/{registry.name}@champion", tmp_path / "out", registry.url, "--no-ca-cert"
    )
    assert result.returncode == 0, result.stderr
    dockerfile = (tmp_path / "out" / "Dockerfile").read_text()
    assert f'mlimg.model.uri="models:/{registry.name}@champion"' in dockerfile
    assert 'mlimg.model.registered-version="1"' in dockerfile
    assert f'mlimg.model.run-id="{registry.run_id}"' in dockerfile
    assert f'mlimg.model.registered-name="{registry.name}"' in dockerfile
    assert (tmp_path / "out" / "model" / "MLmodel").is_file()


def test_unreachable_server_fails_fast_and_cleanly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = generate("models:/anything/1", tmp_path / "out", url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"the tracking server ({url}) did not answer" in result.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def s3_bucket(monkeypatch_module, example_model: Path) -> str:
    """A real S3 API on 127.0.0.1 (moto's server) holding the example model."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "mlimg-test",
        "AWS_SECRET_ACCESS_KEY": "mlimg-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch_module.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="models")
    for path in example_model.iterdir():
        s3.upload_file(str(path), "models", f"iris/{path.name}")
    yield "s3://models/iris"
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_object_store_uri(s3_bucket: str, example_model: Path, tmp_path: Path) -> None:
    model = load(s3_bucket, tmp_path)
    assert model.model_uuid == load_local_model(resolve_model_uri(str(example_model))).model_uuid
    assert model.source == s3_bucket


def test_missing_object_is_named(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises((ModelNotFound, InvalidModel), match="s3://models/nothing"):
        load("s3://models/nothing", tmp_path)


@pytest.mark.parametrize("form", ["runs", "version", "alias", "logged"])
def test_labels_name_the_model_and_where_its_files_are_the_same_on_every_build(
    registry, tmp_path: Path, form: str
) -> None:
    """Not the temporary download's name; mlimg.model.source is the artifact location that
    holds the files, whatever the URI's kind, and it reads the same model."""
    import mlflow.artifacts
    import yaml

    uri, title = {
        "runs": (f"runs:/{registry.run_id}/model", "model"),
        "version": (f"models:/{registry.name}/1", registry.name),
        "alias": (f"models:/{registry.name}@champion", registry.name),
        "logged": (f"models:/{registry.model_id}", registry.model_id),
    }[form]
    labels = []
    for build in ("a", "b"):
        result = generate(uri, tmp_path / build, registry.url, "--no-ca-cert")
        assert result.returncode == 0, result.stderr
        labels.append(label_lines(tmp_path / build / "Dockerfile"))
    assert labels[0] == labels[1]
    assert labels[0]["org.opencontainers.image.title"] == title
    source = labels[0]["mlimg.model.source"]
    assert source == registry.artifact_location  # MLflow 3 keeps a model's files by its id
    copy = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "c"))
    mlmodel = yaml.safe_load((Path(copy) / "MLmodel").read_text())
    assert mlmodel["model_uuid"] == registry.uuid_v1


def label_lines(dockerfile: Path) -> dict[str, str]:
    """The LABEL instruction's keys and values, as the Dockerfile writes them."""
    import re

    text = dockerfile.read_text()
    return dict(re.findall(r'([\w.-]+)="((?:[^"\\]|\\.)*)"', text.split("LABEL", 1)[1]))
