"""mlimg: ship an MLflow model as a container image that serves the MLflow scoring protocol."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlimg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
