"""Every image carries a CycloneDX SBOM of its Python environment (`mlimg sbom IMAGE`): its
components are exactly what `pip list` finds in the image, versions included."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.e2e.conftest import run_mlimg

VENV_PYTHON = "/opt/venv/bin/python"


def sbom_components(image: str, tmp_path: Path) -> set[tuple[str, str]]:
    """`mlimg sbom IMAGE -o FILE`, checked for shape; its components as (name, version)."""
    out = tmp_path / "sbom.cdx.json"
    result = run_mlimg("sbom", image, "-o", str(out))
    assert result.returncode == 0, result.stderr
    sbom = json.loads(out.read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.6"
    components = sbom["components"]
    for component in components:
        purl = component["purl"]
        assert purl.startswith("pkg:pypi/") and purl.endswith(f"@{component['version']}"), purl
    return {(canonicalize_name(c["name"]), c["version"]) for c in components}


def pip_list(image: str, python: str | None) -> set[tuple[str, str]]:
    """`pip list` inside the image: the base image's pip, run for the environment's Python."""
    target = ["--python", python] if python else []
    listed = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "/usr/local/bin/python", image, "-m", "pip",
         *target, "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return {(canonicalize_name(p["name"]), p["version"]) for p in json.loads(listed.stdout)}


@pytest.mark.parametrize(
    ("image_fixture", "python"), [("iris_image", VENV_PYTHON), ("mlserver_iris_image", VENV_PYTHON)]
)
def test_the_sbom_lists_exactly_what_pip_lists_in_the_image(
    request: pytest.FixtureRequest, image_fixture: str, python: str, tmp_path: Path
) -> None:
    image = request.getfixturevalue(image_fixture)
    components = sbom_components(image, tmp_path)
    assert components == pip_list(image, python)
    names = {name for name, _ in components}
    assert {"scikit-learn", "mlflow-skinny", "numpy"} <= names
    assert "cyclonedx-bom" not in names  # the tool that wrote it is not in the image


def test_the_sbom_goes_to_standard_output_and_says_where_it_is(iris_image: str) -> None:
    printed = run_mlimg("sbom", iris_image)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["bomFormat"] == "CycloneDX"
    labels = json.loads(
        subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", iris_image],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert labels["mlimg.sbom"] == "/opt/mlimg/sbom.cdx.json"


def test_images_without_an_sbom_are_named(docker_client, tmp_path: Path) -> None:
    missing = run_mlimg("sbom", "mlimg-test/no-such-image:e2e")
    assert missing.returncode == 2 and "no image mlimg-test/no-such-image:e2e" in missing.stderr
    foreign = run_mlimg("sbom", "python:3.11-slim", "-o", str(tmp_path / "sbom.json"))
    assert foreign.returncode == 2 and "carries no SBOM (no mlimg.sbom label)" in foreign.stderr
    assert "Traceback" not in missing.stderr + foreign.stderr
    assert list(tmp_path.iterdir()) == []
