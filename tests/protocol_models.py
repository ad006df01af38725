"""The models of the protocol conformance suite, one per kind of input the spec shows.

Each is a real MLflow model saved by mlflow itself (models-from-code, no pickled classes), with
the example model's requirements so that their images share one dependency layer.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

from tests.models import example_requirements

# name -> (predict body, signature factory); each predict returns something JSON-friendly.
_CODE = {
    "typed": """
        class Model(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                params = params or {}
                frame = pd.DataFrame(model_input)
                return pd.DataFrame({
                    "a": frame["a"] * params.get("scale", 1.0),
                    "b": [_describe(value) for value in frame["b"]],
                    "suffix": [params.get("suffix", "") for _ in range(len(frame))],
                    "tags": [len(params.get("tags", [])) for _ in range(len(frame))],
                    "c": [_describe(v) for v in frame["c"]] if "c" in frame else None,
                })

        def _describe(value):
            if isinstance(value, bytes):
                return "bytes:" + value.decode("utf-8", "replace")
            return type(value).__name__ + ":" + str(pd.Timestamp(value).isoformat())
    """,
    "chat": """
        class Model(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                params = params or {}
                frame = pd.DataFrame(model_input)
                answers = []
                for messages in frame["messages"]:
                    last = list(messages)[-1]["content"]
                    text = f"echo: {last}"[: int(params.get("max_tokens", 16))]
                    answers.append({
                        "object": "chat.completion",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "temperature": params.get("temperature"),
                    })
                return answers
    """,
    "qa": """
        class Model(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                limit = int((params or {}).get("max_answer_len", 15))
                frame = pd.DataFrame(model_input)
                return [c.split(" but ")[-1][:limit] for c in frame["context"]]
    """,
    "tensor": """
        class Model(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                return np.asarray(model_input, dtype="float64").sum(axis=-1)
    """,
    "vector": """
        class Model(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                return np.asarray(model_input, dtype="float64") * 2
    """,
    "dying": """
        import os
        import signal

        class Model(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                frame = pd.DataFrame(model_input)
                if (frame["a"] == 666).any():  # the process dies, as a crashing library would
                    os.kill(os.getpid(), signal.SIGKILL)
                return frame["a"] * 2
    """,
    "picky": """
        class Model(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                frame = pd.DataFrame(model_input)
                if (frame["a"] < 0).any():
                    raise ValueError("a must not be negative")
                return frame["a"] * 2
    """,
    "sleepy": """
        import time


        class Model(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                time.sleep(0.2)  # a model slow enough for a test to act mid-job
                return pd.DataFrame(model_input)["a"] * 2
    """,
    "unloadable": """
        class Model(mlflow.pyfunc.PythonModel):
            def load_context(self, context):
                raise RuntimeError("this model cannot be loaded")

            def predict(self, context, model_input, params=None):
                return model_input
    """,
    "broken": """
        class Model(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                raise RuntimeError("this model always fails")
    """,
    "slow": """
        import time


        class Model(mlflow.pyfunc.PythonModel):
            def load_context(self, context):
                time.sleep(4)  # so that a test can see /ping answer 503 while it loads

            def predict(self, context, model_input, params=None):
                time.sleep(float((params or {}).get("seconds", 0)))
                return list(range(len(model_input)))
    """,
    "words": """
        class Model(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                if isinstance(model_input, pd.DataFrame):
                    model_input = model_input.iloc[:, 0].tolist()
                return [" ".join(words) for words in model_input]
    """,
}


def _signature(name: str):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
    from mlflow.types.schema import Array, Object, Property

    if name in ("binary", "datetime", "typed"):
        columns = [ColSpec("long", "a"), ColSpec("binary" if name == "typed" else name, "b")]
        if name == "typed":
            columns.append(ColSpec("datetime", "c"))
        return ModelSignature(
            inputs=Schema(columns),
            params=ParamSchema(
                [
                    ParamSpec("scale", "double", 1.0),
                    ParamSpec("suffix", "string", "none"),
                    ParamSpec("tags", "string", ["x"], shape=(-1,)),
                ]
            ),
        )
    if name == "chat":
        message = Object([Property("role", "string"), Property("content", "string")])
        return ModelSignature(
            inputs=Schema([ColSpec(Array(message), "messages")]),
            params=ParamSchema(
                [ParamSpec("temperature", "double", 1.0), ParamSpec("max_tokens", "long", 16)]
            ),
        )
    if name == "qa":
        return ModelSignature(
            inputs=Schema([ColSpec("string", "question"), ColSpec("string", "context")]),
            params=ParamSchema([ParamSpec("max_answer_len", "long", 15)]),
        )
    if name == "tensor":
        return ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1, 2))]))
    if name == "vector":
        return ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1,))]))
    if name == "words":
        return ModelSignature(inputs=Schema([ColSpec(Array("string"))]))
    if name in ("broken", "dying", "unloadable", "picky", "sleepy"):
        return ModelSignature(inputs=Schema([ColSpec("double", "a")]))
    if name == "slow":
        return ModelSignature(
            inputs=Schema([ColSpec("double", "a")]),
            params=ParamSchema([ParamSpec("seconds", "double", 0.0)]),
        )
    raise KeyError(name)


PROTOCOL_MODELS = (
    "typed",
    "binary",
    "datetime",
    "chat",
    "qa",
    "tensor",
    "vector",
    "words",
    "broken",
    "slow",
)


def make_protocol_model(name: str, dest: Path) -> Path:
    import mlflow.pyfunc

    code_name = "typed" if name in ("binary", "datetime", "typed") else name
    code = dest.parent / f"{dest.name}_code.py"
    body = textwrap.dedent(_CODE[code_name])
    code.write_text(
        "import mlflow\nimport numpy as np\nimport pandas as pd\n\n"
        + body
        + "\n\nmlflow.models.set_model(Model())\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            dest,
            python_model=str(code),
            signature=_signature(name),
            pip_requirements=example_requirements(),
        )
    return dest
