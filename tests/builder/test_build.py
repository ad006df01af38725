"""The build guarantee as a function (`build.build_and_tag`), without the command line: its
refusals come before anything is rendered or built."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlimg.build import BuildSettings, build_and_tag, write_context
from mlimg.errors import EngineUnavailable, InvalidOption
from mlimg.plan import BuildOptions


def test_a_bad_tag_is_refused_first(sklearn_model: Path) -> None:
    with pytest.raises(InvalidOption, match="Not:A:Tag"):
        build_and_tag(str(sklearn_model), BuildOptions(), BuildSettings("Not:A:Tag"), print)


def test_no_engine_is_named(
    sklearn_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with pytest.raises(EngineUnavailable, match="no Docker engine answers"):
        build_and_tag(str(sklearn_model), BuildOptions(), BuildSettings("m:1"), print)
    assert not [p for p in tmp_path.iterdir() if p.name != "none.sock"]


def test_write_context_reports_the_trusted_ca(sklearn_model: Path, tmp_path: Path) -> None:
    said: list[str] = []
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    context = write_context(
        str(sklearn_model), BuildOptions(ca_cert=ca), tmp_path / "c", said.append
    )
    assert (context.path / "Dockerfile").is_file()
    assert said[0] == f"trusting the CA bundle {ca} during the build"
    assert said[1] == "locking the model's environment for Python 3.11 on linux/amd64"
    assert "mlimg.lock" in context.plan.labels
