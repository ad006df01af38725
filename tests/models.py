"""Real MLflow models for the tests, made with mlflow itself.

Every model here is saved with the example model's requirements, so that all test images share
one dependency layer in the engine's build cache.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_MODEL = REPO / "examples" / "iris" / "model"


def example_requirements() -> list[str]:
    text = (EXAMPLE_MODEL / "requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def make_sklearn_model(
    dest: Path, max_iter: int = 500, relabel: int = 0, requirements: list[str] | None = None
) -> Path:
    """Iris logistic regression with a column signature and an input example; `relabel`
    shifts the classes it learns (a model with the same requirements and other answers);
    `requirements` replace the example's pip requirements."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True, as_frame=True)
    target = (target + relabel) % 3
    model = LogisticRegression(max_iter=max_iter, random_state=0).fit(features, target)
    mlflow.sklearn.save_model(
        model,
        dest,
        signature=infer_signature(features, model.predict(features)),
        input_example=features.head(3),
        serialization_format="skops",
        pip_requirements=example_requirements() if requirements is None else requirements,
    )
    return dest


PYFUNC_CODE = textwrap.dedent(
    '''
    import mlflow
    import pandas as pd


    class Arithmetic(mlflow.pyfunc.PythonModel):
        """Returns a DataFrame: the sum and product of columns a and b, and a label."""

        def predict(self, context, model_input, params=None):
            frame = pd.DataFrame(model_input)
            return pd.DataFrame(
                {
                    "sum": frame["a"] + frame["b"],
                    "product": frame["a"] * frame["b"],
                    "label": ["big" if v > 10 else "small" for v in frame["a"] * frame["b"]],
                }
            )


    mlflow.models.set_model(Arithmetic())
    '''
)


def make_pyfunc_model(dest: Path) -> Path:
    """A custom pyfunc model, saved as models-from-code (no pickled class)."""
    import mlflow.pyfunc

    code = dest.parent / f"{dest.name}_code.py"
    code.write_text(PYFUNC_CODE)
    example = pd.DataFrame({"a": [1.0, 2.5, 4.0], "b": [3.0, 4.0, 5.5]})
    mlflow.pyfunc.save_model(
        dest,
        python_model=str(code),
        input_example=example,
        pip_requirements=example_requirements(),
    )
    return dest


def load_models(paths: dict[str, Path]) -> dict:
    """Each model of `paths` loaded with mlflow.pyfunc, by the same name."""
    import warnings

    import mlflow.pyfunc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: mlflow.pyfunc.load_model(str(path)) for name, path in paths.items()}


def write_fake_model(
    dest: Path, mlmodel: str, requirements: str | None = None, **files: str
) -> Path:
    """A hand-written model directory, for the checks that run before anything loads it."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "MLmodel").write_text(textwrap.dedent(mlmodel))
    if requirements is not None:
        (dest / "requirements.txt").write_text(requirements)
    for name, text in files.items():
        (dest / name).write_text(text)
    return dest


PYFUNC_MLMODEL = """\
flavors:
  python_function:
    loader_module: mlflow.pyfunc.model
    python_version: 3.11.7
mlflow_version: 3.17.2
model_uuid: 0123456789abcdef
"""


def with_unresolved_lock(plan):  # type: ignore[no-untyped-def]
    """The plan with a lock made of its requirements as written, neither resolved nor hashed:
    for tests of what is rendered, which never install it (tests/builder/test_lock.py resolves
    real ones)."""
    import dataclasses

    from mlimg.lock import (
        BUILD_SECTION,
        ENGINE_SECTION,
        MODEL_SECTION,
        SBOM_TOOL_SECTION,
        UV_SECTION,
        Lock,
    )

    model = "".join(f"{item}\n" for item in plan.requirements)
    engine = "".join(f"{item}\n" for item in (*plan.runtime_requirements, *plan.runtime_no_deps))
    header = f"# mlimg test lock\n# python: {plan.model.python_minor}\n# platform: linux/amd64\n"
    build = "".join(f"{item}\n" for item in plan.model.build_requirements)
    build = BUILD_SECTION + build if build else ""
    tools = UV_SECTION + "uv\n" + SBOM_TOOL_SECTION + "cyclonedx-bom\n"
    text = header + build + MODEL_SECTION + model + ENGINE_SECTION + engine + tools
    return dataclasses.replace(plan, lock=Lock(text, plan.model.python_minor, "linux/amd64"))
