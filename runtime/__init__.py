"""mlimg's inference server: loads one MLflow model and answers the MLflow scoring protocol.

It runs inside every image (and under `mlimg serve`), in the model's own environment, so it
imports nothing from the builder and needs only flask, gunicorn and the model's mlflow.
"""

from mlimg_runtime._version import __version__

__all__ = ["__version__"]
