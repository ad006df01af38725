"""Models saved under Python 3.9 (the MLflow 2.x/3.1 years) and 3.13, for real: each is logged
in a container of that Python's base image with an MLflow that supports it, then built by
mlimg, and its image must pass the smoke test and answer the protocol's forms as that
model's own mlflow.pyfunc predicts (computed in the same container)."""

from __future__ import annotations

import json
import shlex
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import build, post, serving

# (base image, what the container installs to save the model): the newest releases that
# support that Python here (mlflow 3.1 is the last for 3.9).
VERSIONS = {
    "3.9": ("python:3.9-slim", ["mlflow-skinny==3.1.4", "scikit-learn==1.6.1", "pandas<2.3"]),
    "3.13": (
        "python:3.13-slim",
        ["mlflow-skinny==3.17.2", "scikit-learn==1.7.2", "pandas", "skops"],
    ),
}

SAVE_MODEL = """
import json, sys
import mlflow.pyfunc, mlflow.sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True, as_frame=True)
model = LogisticRegression(max_iter=500).fit(X, y)
mlflow.sklearn.save_model(model, "/out/model", input_example=X.iloc[:3])
frame = X.iloc[::10]
expected = mlflow.pyfunc.load_model("/out/model").predict(frame).tolist()
json.dump({"frame": json.loads(frame.to_json(orient="split")), "expected": expected,
           "python": sys.version.split()[0]}, open("/out/expected.json", "w"))
"""


def make_model(docker_client, python: str, dest: Path, ca_cert: Path) -> Path:
    """Save the model in a container of `python`'s base image; its directory under `dest`."""
    from docker.errors import ImageNotFound

    base, packages = VERSIONS[python]
    try:
        docker_client.images.get(base)
    except ImageNotFound:
        pytest.fail(f"{base} is not present: ../shared/ci/base-image.sh {base} builds it")
    dest.mkdir(parents=True, exist_ok=True)
    script = (
        f"python -m pip install --quiet --disable-pip-version-check {shlex.join(packages)} "
        f"&& python -c '{SAVE_MODEL}'"
    )
    result = subprocess.run(
        ["docker", "run", "--rm", "-v", f"{dest}:/out", "-v", f"{ca_cert}:/ca.pem:ro",
         "-e", "PIP_CERT=/ca.pem", "-e", "REQUESTS_CA_BUNDLE=/ca.pem", base, "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return dest / "model"


@pytest.mark.parametrize("python", sorted(VERSIONS))
def test_a_model_saved_under_another_python_is_served(
    docker_client, python: str, tmp_path: Path, ca_cert: Path
) -> None:
    model = make_model(docker_client, python, tmp_path, ca_cert)
    facts = json.loads((tmp_path / "expected.json").read_text())
    assert facts["python"].startswith(f"{python}.")
    tag = f"mlimg-test/python{python.replace('.', '')}:e2e"
    result = build(model, tag, ca_cert)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"python:{python}-slim" in result.stderr
    assert "/invocations answered 200 with predictions" in result.stderr
    split = facts["frame"]
    columns, rows = split["columns"], split["data"]
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    csv = ",".join(columns) + "\n" + "\n".join(",".join(map(str, row)) for row in rows) + "\n"
    headerless = "\n".join(",".join(map(str, row)) for row in rows) + "\n"
    whole = [[round(value) for value in row] for row in rows]  # whole numbers for doubles
    forms = {
        "split": (json.dumps({"dataframe_split": split}), "application/json"),
        "records": (json.dumps({"dataframe_records": records}), "application/json"),
        "top-level records": (json.dumps(records), "application/json"),
        "csv": (csv, "text/csv"),
        "headerless csv": (headerless, "application/csv"),
    }
    with serving(docker_client, tag) as url:
        for name, (body, content_type) in forms.items():
            status, answer = post(url, body.encode(), content_type)
            assert (status, answer) == (200, {"predictions": facts["expected"]}), name
        body = json.dumps({"dataframe_split": {"columns": columns, "data": whole}}).encode()
        status, answer = post(url, body, "application/json")
        assert status == 200 and len(answer["predictions"]) == len(rows), answer
        status, answer = post(url, b'{"dataframe_split": {"columns": ["x"], "data": [[NaN]]}}',
                              "application/json")  # fmt: skip
        assert status == 400, answer
        status, answer = post(url, b"{}", "text/plain")
        assert status == 415, answer
        with urllib.request.urlopen(f"{url}/version", timeout=5) as response:
            assert json.loads(response.read())["mlflow_version"] is not None
