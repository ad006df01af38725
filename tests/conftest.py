from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from tests.models import EXAMPLE_MODEL, load_models, make_pyfunc_model, make_sklearn_model


@pytest.fixture(scope="session")
def sklearn_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_sklearn_model(tmp_path_factory.mktemp("models") / "iris")


@pytest.fixture(scope="session")
def pyfunc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_pyfunc_model(tmp_path_factory.mktemp("models") / "arithmetic")


@pytest.fixture(scope="session")
def example_model() -> Path:
    return EXAMPLE_MODEL


@pytest.fixture(scope="session")
def ca_cert() -> Path:
    """The CA bundle the host's pip trusts: what a container needs to reach the index here."""
    return Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture(scope="session")
def protocol_models(tmp_path_factory: pytest.TempPathFactory, sklearn_model: Path) -> dict:
    """Every model of the conformance suite, by name (tests/protocol_models.py)."""
    from tests.protocol_models import PROTOCOL_MODELS, make_protocol_model

    root = tmp_path_factory.mktemp("protocol")
    models = {name: make_protocol_model(name, root / name) for name in PROTOCOL_MODELS}
    models["sklearn"] = sklearn_model
    return models


@pytest.fixture(scope="session")
def loaded_models(protocol_models: dict) -> dict:
    """The conformance models loaded with mlflow.pyfunc, once."""
    return load_models(protocol_models)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A real tracking server on 127.0.0.1 with model 'mlimg-iris' v1 (champion, Production), v2."""
    from tests.tracking import register_models, tracking_server

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    with tracking_server(tmp_path_factory.mktemp("tracking")) as url:
        yield register_models(url)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def genai_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The chat model, the two agents and the streaming PythonModel (tests/genai_models.py)."""
    from tests.genai_models import CODE, make_genai_model

    root = tmp_path_factory.mktemp("genai")
    return {name: make_genai_model(name, root / name) for name in CODE}


@pytest.fixture(scope="session")
def langchain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LangChain chain over a fake chat model (needs langchain, in the test extra)."""
    from tests.genai_models import make_genai_model

    return make_genai_model("langchain", tmp_path_factory.mktemp("genai") / "langchain")
