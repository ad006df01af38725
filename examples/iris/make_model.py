"""Make the example model that the README builds: iris, logistic regression, a few kilobytes.

    python examples/iris/make_model.py            # (re)writes examples/iris/model

It carries a signature (four double columns in, one long out) and an input example, so
`mlimg build` can smoke-test the image with it. It is saved in skops format (no pickle), and
its requirements are listed explicitly so that MLflow's inference adds nothing stray.
"""

import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import mlflow.sklearn
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

REQUIRED = ("mlflow", "numpy", "pandas", "scikit-learn", "scipy", "skops")


def main(dest: Path) -> None:
    features, target = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500, random_state=0).fit(features, target)
    example = features.head(3)
    shutil.rmtree(dest, ignore_errors=True)
    mlflow.sklearn.save_model(
        model,
        dest,
        signature=infer_signature(features, model.predict(features)),
        input_example=example,
        serialization_format="skops",
        pip_requirements=[f"{name}=={version(name)}" for name in REQUIRED],
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "model")
