"""Real images on a real engine: build, serve, compare with mlflow.pyfunc, inspect the image."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from tests.e2e.conftest import build, post, remove_tag, serving
from tests.models import PYFUNC_MLMODEL, example_requirements, make_sklearn_model, write_fake_model

PYFUNC_TAG = "mlimg-test/arithmetic:e2e"


def iris_frame() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    return load_iris(as_frame=True).data.iloc[::7]


def steps_from_cache(output: str) -> tuple[int, int]:
    match = re.search(r"\((\d+) of (\d+) steps from cache\)", output)
    assert match, output
    return int(match.group(1)), int(match.group(2))


def test_iris_predictions_equal_pyfunc(docker_client, iris_image: str, sklearn_model: Path) -> None:
    frame = iris_frame()
    expected = mlflow.pyfunc.load_model(str(sklearn_model)).predict(frame).tolist()
    bodies = {
        "application/json": json.dumps(
            {"dataframe_split": json.loads(frame.to_json(orient="split"))}
        ),
        "application/json; charset=utf-8": json.dumps(
            {"dataframe_records": json.loads(frame.to_json(orient="records"))}
        ),
        "text/csv": frame.to_csv(index=False),
    }
    with serving(docker_client, iris_image) as url:
        for content_type, body in bodies.items():
            status, answer = post(url, body.encode(), content_type)
            assert status == 200, answer
            assert answer == {"predictions": expected}, content_type
        status, answer = post(
            url, b'{"dataframe_split": {"columns": ["x"], "data": [[1]]}}', "application/json"
        )
        assert status == 400 and answer["error_code"] == "BAD_REQUEST"
        with urllib.request.urlopen(f"{url}/version", timeout=5) as response:
            assert json.loads(response.read())["mlflow_version"] == "3.17.2"


def test_image_contract(docker_client, iris_image: str, sklearn_model: Path) -> None:
    config = docker_client.images.get(iris_image).attrs["Config"]
    labels = config["Labels"]
    mlmodel = mlflow.models.Model.load(str(sklearn_model))
    assert labels["mlimg.model.uuid"] == mlmodel.model_uuid
    assert labels["mlimg.model.uri"] == str(sklearn_model)
    assert labels["mlimg.python-version"].startswith("3.11")
    assert labels["mlimg.model.flavors"] == "python_function,sklearn"
    assert labels["mlimg.env-manager"] == "uv"
    assert labels["mlimg.mlflow-package"] == "mlflow-skinny"
    assert labels["org.opencontainers.image.title"] == sklearn_model.name
    assert config["User"] == "10001:10001"
    assert "8080/tcp" in config["ExposedPorts"]
    assert config["Entrypoint"] == ["python", "-m", "mlimg_runtime"]
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python"]
    assert not any("ca-bundle" in env or "PIP_" in env for env in config["Env"])


def test_container_is_healthy_and_stops_gracefully(docker_client, iris_image: str) -> None:
    with serving(docker_client, iris_image) as url:
        container = next(
            c
            for c in docker_client.containers.list(filters={"label": "mlimg.e2e"})
            if c.ports.get("8080/tcp", [{}])[0].get("HostPort") == url.rsplit(":", 1)[1]
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            container.reload()
            health = container.attrs["State"]["Health"]["Status"]
            if health != "starting":
                break
            time.sleep(1)
        assert health == "healthy", container.attrs["State"]["Health"]
        started = time.monotonic()
        container.stop(timeout=20)
        stopped_after = time.monotonic() - started
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0, container.logs().decode()[-2000:]
        assert stopped_after < 10, f"SIGTERM took {stopped_after:.1f}s"


def test_final_image_carries_no_build_leftovers(docker_client, iris_image: str) -> None:
    script = textwrap.dedent(
        """
        import os, shutil
        found = [p for p in ("/tmp/mlimg", "/root/.cache/pip", "/home/mlimg/.cache/pip")
                 if os.path.exists(p)]
        found += [c for c in ("gcc", "cc", "g++", "make") if shutil.which(c)]
        print("uid", os.getuid(), "leftovers", found)
        """
    )
    output = docker_client.containers.run(
        iris_image, entrypoint=["python", "-c", script], remove=True, labels={"mlimg.e2e": "true"}
    ).decode()
    assert "uid 10001 leftovers []" in output


def test_image_holds_mlflow_skinny_compiled_and_without_test_suites(
    docker_client, iris_image: str
) -> None:
    script = textwrap.dedent(
        """
        import importlib.metadata as md, pathlib, sklearn
        site = pathlib.Path(sklearn.__file__).parents[1]
        names = {d.metadata["Name"].lower() for d in md.distributions()}
        print("skinny", "mlflow-skinny" in names, "full", "mlflow" in names)
        print("tests", sorted(str(p) for p in site.rglob("tests") if p.is_dir())[:3])
        print("compiled", (site / "sklearn" / "__pycache__").is_dir())
        """
    )
    output = docker_client.containers.run(
        iris_image, entrypoint=["python", "-c", script], remove=True, labels={"mlimg.e2e": "true"}
    ).decode()
    assert "skinny True full False" in output
    assert "tests []" in output
    assert "compiled True" in output


def test_concurrent_requests_each_get_their_own_predictions(
    docker_client, iris_image: str, sklearn_model: Path
) -> None:
    """Under concurrent load the server predicts requests in batches (sklearn is row-wise):
    every answer must still be exactly pyfunc's for that request's rows."""
    frame = iris_frame()
    model = mlflow.pyfunc.load_model(str(sklearn_model))
    requests = [frame.iloc[[i % len(frame), (3 * i) % len(frame)]] for i in range(240)]
    expected = [model.predict(rows).tolist() for rows in requests]
    with serving(docker_client, iris_image) as url:

        def ask(rows) -> tuple[int, object]:
            body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
            return post(url, json.dumps(body).encode(), "application/json")

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, requests))
    assert [status for status, _ in answers] == [200] * len(requests)
    assert [answer["predictions"] for _, answer in answers] == expected


def test_pyfunc_image_shares_the_dependency_layers(
    docker_client, iris_image: str, pyfunc_model: Path, ca_cert: Path
) -> None:
    result = build(pyfunc_model, PYFUNC_TAG, ca_cert)
    assert result.returncode == 0, result.stderr
    cached, steps = steps_from_cache(result.stderr)
    assert steps - cached == 2, "only the LABEL and model COPY steps should run"
    frame = pd.DataFrame({"a": [1.0, 3.0, 5.0], "b": [2.0, 4.0, 0.5]})
    expected = mlflow.pyfunc.load_model(str(pyfunc_model)).predict(frame)
    with serving(docker_client, PYFUNC_TAG) as url:
        status, answer = post(
            url,
            json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode(),
            "application/json",
        )
    assert status == 200, answer
    assert answer == {"predictions": expected.to_dict(orient="records")}


def build_retrained(
    tmp_path: Path, tag: str, ca_cert: Path, *extra: str
) -> tuple[Path, subprocess.CompletedProcess]:
    """The iris model retrained (new weights, the same requirements), built as `tag`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        retrained = make_sklearn_model(tmp_path / "iris-retrained", max_iter=300)
    result = build(retrained, tag, ca_cert, *extra)
    assert result.returncode == 0, result.stderr
    return retrained, result


def test_retrained_model_rebuilds_only_the_model_layers(
    docker_client, iris_image: str, tmp_path: Path, ca_cert: Path
) -> None:
    tag = "mlimg-test/iris-retrained:e2e"
    retrained, result = build_retrained(tmp_path, tag, ca_cert)
    cached, steps = steps_from_cache(result.stderr)
    assert steps - cached == 2
    labels = docker_client.images.get(tag).attrs["Config"]["Labels"]
    assert labels["mlimg.model.uuid"] == mlflow.models.Model.load(str(retrained)).model_uuid


def test_readme_example_model_builds(
    docker_client, iris_image: str, example_model: Path, ca_cert: Path
) -> None:
    result = build(example_model, "mlimg-test/example:e2e", ca_cert)
    assert result.returncode == 0, result.stderr
    assert "/invocations answered 200 with predictions: [0, 0, 0]" in result.stderr


FAILING_MODEL = textwrap.dedent(
    """
    import mlflow


    class Broken(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            raise RuntimeError("this model always fails")


    mlflow.models.set_model(Broken())
    """
)


def test_failed_smoke_test_keeps_the_old_tag_and_no_container(
    docker_client, iris_image: str, tmp_path: Path, ca_cert: Path
) -> None:
    code = tmp_path / "broken.py"
    code.write_text(FAILING_MODEL)
    model = tmp_path / "broken"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            model,
            python_model=str(code),
            input_example=pd.DataFrame({"a": [1.0]}),
            pip_requirements=example_requirements(),
        )
    tag = "mlimg-test/broken:e2e"
    docker_client.images.get(iris_image).tag("mlimg-test/broken", "e2e")
    before = docker_client.images.get(tag).id
    result = build(model, tag, ca_cert)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr.split("the container's log:")[0]
    assert "/invocations answered 500" in result.stderr
    assert "this model always fails" in result.stderr
    assert f"{tag} was not changed" in result.stderr
    assert docker_client.images.get(tag).id == before
    assert docker_client.containers.list(all=True, filters={"label": "mlimg.smoke-test"}) == []
    remove_tag(docker_client, tag)


def test_runtime_conflict_fails_the_build_naming_both(
    docker_client, tmp_path: Path, ca_cert: Path
) -> None:
    model = write_fake_model(tmp_path / "old-werkzeug", PYFUNC_MLMODEL, "werkzeug==1.0.1\n")
    tag = "mlimg-test/conflict:e2e"
    remove_tag(docker_client, tag)
    result = build(model, tag, ca_cert)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # Found by the lock, before any build: whose requirements, and uv's reasons.
    assert "cannot resolve the engine's requirements beside the model's pins" in result.stderr
    assert "werkzeug==1.0.1" in result.stderr.lower()
    assert re.search(r"flask[ =<>!~]\S* depends on werkzeug", result.stderr, re.IGNORECASE)
    assert "[1/" not in result.stderr  # no build step ran
    assert not docker_client.images.list(name="mlimg-test/conflict")


def test_a_base_image_the_engine_cannot_have_is_named_before_any_step(
    docker_client, sklearn_model: Path, ca_cert: Path
) -> None:
    """No registry answers here; where one does, this repository does not exist there."""
    tag = "mlimg-test/no-base:e2e"
    result = build(sklearn_model, tag, ca_cert, "--base-image", "mlimg-test/no-such-base:1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        "the base image mlimg-test/no-such-base:1 is not in this Docker engine and could not be "
        "pulled" in result.stderr
    )
    assert "docker pull mlimg-test/no-such-base:1" in result.stderr
    assert "[1/" not in result.stderr  # no build step ran
    assert not docker_client.images.list(name="mlimg-test/no-base")


def test_a_module_missing_from_the_requirements_is_named_with_its_traceback(
    docker_client, tmp_path: Path, ca_cert: Path
) -> None:
    """MLflow saves this model with skops, which its explicit pip_requirements leave out."""
    requirements = [r for r in example_requirements() if not r.startswith("skops")]
    model = make_sklearn_model(tmp_path / "no-skops", requirements=requirements)
    tag = "mlimg-test/no-skops:e2e"
    result = build(model, tag, ca_cert)
    assert result.returncode == 1
    report, log = result.stderr.split("the container's log:")
    assert "Traceback" not in report
    assert (
        "mlimg: error: could not load the model at /opt/ml/model: ModuleNotFoundError: "
        "No module named 'skops'\nhint: the module skops is missing from the model's "
        "environment" in report
    )
    assert 'extra_pip_requirements=["skops"]' in report
    # The log: the address, the traceback once, none of the smoke test's own probes.
    assert "Listening at: http://0.0.0.0:8080" in log
    assert log.count("Traceback (most recent call last)") == 1
    assert "import skops.io" in log
    assert "GET /ping" not in log
    assert not docker_client.images.list(name="mlimg-test/no-skops")


def test_a_model_without_an_example_is_checked_on_ping_and_says_so(
    docker_client, sklearn_model: Path, tmp_path: Path, ca_cert: Path
) -> None:
    """The README's promise: /invocations is checked only with the model's own example."""
    import shutil

    import yaml

    model = tmp_path / "no-example"
    shutil.copytree(sklearn_model, model)
    for name in ("input_example.json", "serving_input_example.json"):
        (model / name).unlink()
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    del mlmodel["saved_input_example_info"]
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    tag = "mlimg-test/no-example:e2e"
    result = build(model, tag, ca_cert)
    assert result.returncode == 0, result.stderr
    assert "/ping answered 200" in result.stderr
    assert (
        "the model carries no input example, so only /ping was checked: log it with "
        "input_example= to have /invocations checked too" in result.stderr
    )
    assert "/invocations answered" not in result.stderr
    remove_tag(docker_client, tag)
