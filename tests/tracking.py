"""A real MLflow tracking server on 127.0.0.1 for URI tests, with a registered model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.models import example_requirements
from tests.probes import free_port


@contextmanager
def tracking_server(root: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--serve-artifacts",
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the tracking server did not start")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@dataclass(frozen=True)
class Registry:
    url: str
    name: str
    run_id: str
    model_id: str
    artifact_location: str
    uuid_v1: str
    uuid_v2: str


def register_models(url: str, name: str = "mlimg-iris") -> Registry:
    """Log two versions of the iris model; v1 gets alias 'champion' and stage 'Production'."""
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    os.environ["MLFLOW_TRACKING_URI"] = url
    mlflow.set_tracking_uri(url)
    features, target = load_iris(return_X_y=True, as_frame=True)
    infos = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for max_iter in (500, 300):
            model = LogisticRegression(max_iter=max_iter, random_state=0).fit(features, target)
            with mlflow.start_run():
                infos.append(
                    mlflow.sklearn.log_model(
                        model,
                        name="model",
                        registered_model_name=name,
                        signature=infer_signature(features, model.predict(features)),
                        input_example=features.head(3),
                        serialization_format="skops",
                        pip_requirements=example_requirements(),
                    )
                )
        client = MlflowClient()
        client.set_registered_model_alias(name, "champion", "1")
        client.transition_model_version_stage(name, "1", "Production")
    first = infos[0]
    logged = client.get_logged_model(first.model_id)
    return Registry(
        url=url,
        name=name,
        run_id=first.run_id,
        model_id=first.model_id,
        artifact_location=logged.artifact_location,
        uuid_v1=first.model_uuid,
        uuid_v2=infos[1].model_uuid,
    )
