"""A real MLflow tracking server on 127.0.0.1 for URI tests, with a registered model."""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.models import example_requirements
from tests.probes import answering, free_port


@contextmanager
def tracking_server(root: Path):
    """`mlflow server` on 127.0.0.1 with its store under `root`: its URL, once /health
    answers (its log in root/server.log)."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
        "--workers", "1",
    ]  # fmt: skip
    with answering(command, port, log=root / "server.log", timeout=120, ready="/health"):
        yield f"http://127.0.0.1:{port}"


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
