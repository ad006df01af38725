"""What the runtime says about a model that fails to load."""

from __future__ import annotations

import pytest

from mlimg_runtime.model import load_failure_hint


@pytest.mark.parametrize(
    ("module", "package"),
    [
        ("skops.io", "skops"),
        ("sklearn.linear_model", "scikit-learn"),
        ("cv2", "opencv-python-headless"),
    ],
)
def test_a_missing_module_is_named_with_the_package_to_add(module: str, package: str) -> None:
    hint = load_failure_hint(ModuleNotFoundError(f"No module named '{module}'", name=module))
    assert hint is not None
    assert f"the module {module.split('.')[0]} is missing from the model's environment" in hint
    assert f'extra_pip_requirements=["{package}"]' in hint


@pytest.mark.parametrize(
    "exc", [ValueError("bad"), ModuleNotFoundError("no name"), OSError("gone")]
)
def test_other_failures_get_no_hint(exc: BaseException) -> None:
    assert load_failure_hint(exc) is None
