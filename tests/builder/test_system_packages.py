"""Shared libraries that wheels need of the system: known ones added, others by name, a hint
naming the missing one when the smoke test finds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlimg.errors import InvalidOption
from mlimg.model import load_local_model
from mlimg.plan import BuildOptions, plan_build
from mlimg.render import render_dockerfile
from mlimg.smoke import missing_library_hint
from mlimg.uris import resolve_model_uri
from tests.models import PYFUNC_MLMODEL, write_fake_model


def plan(tmp_path: Path, requirements: str, **options):
    model = write_fake_model(tmp_path / "model", PYFUNC_MLMODEL, requirements)
    return plan_build(load_local_model(resolve_model_uri(str(model))), BuildOptions(**options))


def test_lightgbm_brings_libgomp_into_the_final_stage(tmp_path: Path) -> None:
    built = plan(tmp_path, "mlflow==3.17.2\nlightgbm==4.7.0\n")
    assert built.system_packages == ("libgomp1",)
    dockerfile = render_dockerfile(built)
    final = dockerfile.split("\nFROM ")[-1]
    assert "apt-get install -y --no-install-recommends libgomp1" in final
    assert final.index("apt-get install") < final.index("USER 10001")


def test_no_package_no_apt(tmp_path: Path) -> None:
    built = plan(tmp_path, "mlflow==3.17.2\nscikit-learn\n")
    assert built.system_packages == ()
    assert "apt-get" not in render_dockerfile(built)


def test_named_packages_are_added_and_checked(tmp_path: Path) -> None:
    built = plan(tmp_path, "mlflow==3.17.2\n", system_packages=("libgl1", "libsndfile1=1.2.0-1"))
    assert "libgl1 libsndfile1=1.2.0-1" in render_dockerfile(built)
    with pytest.raises(InvalidOption, match="not a Debian package name"):
        plan(tmp_path / "again", "mlflow==3.17.2\n", system_packages=("libgl1; id",))


@pytest.mark.parametrize(
    ("log", "hint"),
    [
        (
            "OSError: libgomp.so.1: cannot open shared object file: No such file or directory",
            "the image lacks the system library libgomp.so.1: build with --system-package libgomp1",
        ),
        (
            "ImportError: libfoo-3.so.2.1: cannot open shared object file",
            "apt-file search libfoo-3.so.2.1",
        ),
    ],
)
def test_the_smoke_test_names_a_missing_library(log: str, hint: str) -> None:
    assert hint in missing_library_hint(f"Traceback ...\n{log}\n")
    assert missing_library_hint("ModuleNotFoundError: No module named 'x'") is None
