from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from tests.models import EXAMPLE_MODEL, make_pyfunc_model, make_sklearn_model


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
