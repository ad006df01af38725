from pathlib import Path

import pytest

from mlimg.errors import InvalidModel, InvalidRequirement, ModelNotFound
from mlimg.model import load_local_model
from mlimg.uris import resolve_model_uri
from tests.models import PYFUNC_MLMODEL, write_fake_model


def load(uri: str):
    return load_local_model(resolve_model_uri(uri))


def test_reads_a_real_sklearn_model(sklearn_model: Path) -> None:
    model = load(str(sklearn_model))
    assert model.path == sklearn_model.resolve()
    assert set(model.flavors) == {"python_function", "sklearn"}
    assert model.python_minor == "3.11"
    assert "scikit-learn==1.9.1" in [str(req) for req in model.requirements]
    assert str(model.build_requirements[0]).startswith("pip==")
    assert model.model_uuid and model.mlflow_version == "3.17.2"
    assert set(model.serving_example) == {"dataframe_split"}


def test_file_uri_resolves_to_the_same_directory(sklearn_model: Path) -> None:
    assert load(sklearn_model.resolve().as_uri()).path == sklearn_model.resolve()


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"no model at .*nope: no such file"):
        load(str(tmp_path / "nope"))


def test_file_instead_of_directory(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_text("x")
    with pytest.raises(ModelNotFound, match="is a file"):
        load(str(tmp_path / "model.pkl"))


def test_directory_without_mlmodel(tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="has no MLmodel file"):
        load(str(tmp_path))


@pytest.mark.parametrize(
    ("mlmodel", "message"),
    [
        ("flavors: [unclosed\n", "MLmodel is malformed"),
        ("- a list\n", "expected a YAML mapping"),
        ("mlflow_version: 3.17.2\n", "no 'flavors' mapping"),
    ],
)
def test_malformed_mlmodel(tmp_path: Path, mlmodel: str, message: str) -> None:
    write_fake_model(tmp_path, mlmodel, requirements="numpy\n")
    with pytest.raises(InvalidModel, match=message):
        load(str(tmp_path))


def test_model_without_pyfunc_flavor(tmp_path: Path) -> None:
    write_fake_model(tmp_path, "flavors:\n  keras: {}\n", requirements="numpy\n")
    with pytest.raises(InvalidModel, match="flavors are keras, with no 'python_function'"):
        load(str(tmp_path))


def test_bad_requirement_line_is_named(tmp_path: Path) -> None:
    write_fake_model(tmp_path, PYFUNC_MLMODEL, requirements="numpy\npandas; rm -rf /\n")
    with pytest.raises(InvalidRequirement, match=r"requirements\.txt line 2"):
        load(str(tmp_path))


def test_model_without_environment(tmp_path: Path) -> None:
    write_fake_model(tmp_path, PYFUNC_MLMODEL)
    with pytest.raises(InvalidModel, match=r"no python_env\.yaml, requirements\.txt or conda"):
        load(str(tmp_path))


def test_python_version_from_python_env(tmp_path: Path) -> None:
    write_fake_model(
        tmp_path,
        PYFUNC_MLMODEL,
        **{"python_env.yaml": "python: 3.10.4\ndependencies: [numpy]\n"},
    )
    model = load(str(tmp_path))
    assert model.python_version == "3.10.4" and [str(r) for r in model.requirements] == ["numpy"]


def test_bad_python_version(tmp_path: Path) -> None:
    write_fake_model(
        tmp_path, PYFUNC_MLMODEL, **{"python_env.yaml": "python: latest\ndependencies: []\n"}
    )
    with pytest.raises(InvalidModel, match="'latest', which is not a Python version"):
        load(str(tmp_path))


def test_records_example_is_wrapped(tmp_path: Path) -> None:
    mlmodel = PYFUNC_MLMODEL + (
        "saved_input_example_info:\n  artifact_path: input_example.json\n"
        "  pandas_orient: records\n  type: dataframe\n"
    )
    write_fake_model(
        tmp_path, mlmodel, requirements="numpy\n", **{"input_example.json": '[{"a": 1}]'}
    )
    assert load(str(tmp_path)).serving_example == {"dataframe_records": [{"a": 1}]}
