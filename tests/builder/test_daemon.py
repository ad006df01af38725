"""The Docker SDK module's logic that needs no engine: which references may be pushed, the
pinned reference, the push report, and the message for each push failure."""

from __future__ import annotations

import collections

import pytest

from mlimg import daemon
from mlimg.errors import InvalidOption


@pytest.mark.parametrize(
    ("reference", "registry"),
    [
        ("127.0.0.1:5000/team/iris:1", "127.0.0.1:5000"),
        ("registry.example.com/iris", "registry.example.com"),
        ("localhost/iris:2", "localhost"),
        ("docker.io/someone/iris:1", "docker.io"),
    ],
)
def test_references_that_name_a_registry_may_be_pushed(reference: str, registry: str) -> None:
    assert daemon.check_pushable(reference) == registry


@pytest.mark.parametrize("reference", ["iris:1", "team/iris:1", "iris"])
def test_a_reference_without_a_registry_is_refused(reference: str) -> None:
    with pytest.raises(InvalidOption, match="names no registry"):
        daemon.check_pushable(reference)


def test_the_pinned_reference_drops_the_tag_for_the_digest() -> None:
    pushed = daemon.PushedImage("127.0.0.1:5000/team/iris:1", "sha256:" + "0" * 64)
    assert pushed.pinned == "127.0.0.1:5000/team/iris@sha256:" + "0" * 64


def test_the_push_report_names_each_layer_and_sums_up() -> None:
    lines: list[str] = []
    progress = daemon._PushProgress(lines.append)
    big = 50_000_000
    for event in (
        {"status": "Preparing", "id": "a"},
        {"status": "Pushing", "id": "a", "progressDetail": {"current": 1, "total": big}},
        {"status": "Pushed", "id": "a"},
        {"status": "Layer already exists", "id": "b"},
        {"status": "Pushing", "id": "c", "progressDetail": {"current": 1, "total": 1000}},
        {"status": "Pushed", "id": "c"},
    ):
        progress.update(event)
    assert lines == [
        "  pushing layer a (50.0 MB)",
        "  pushed layer a (50.0 MB)",
        "  pushed layer c (0.0 MB)",
    ]
    assert progress.summary() == "pushed 2 layers (50.0 MB); 1 already in the registry"


@pytest.mark.parametrize(
    ("error", "says"),
    [
        ("no basic auth credentials", "asks for credentials and your Docker config has none"),
        (
            'Get "http://r:5/v2/": dial tcp 127.0.0.1:5: connect: connection refused',
            "cannot be reached",
        ),
        ("denied: requested access to the resource is denied", "denied pushing"),
        ("something new", "failed: something new"),
    ],
)
def test_each_push_failure_has_its_message(error: str, says: str) -> None:
    assert says in daemon._push_failure("r:5/iris:1", "r:5", error)


@pytest.mark.parametrize(
    ("log", "network", "says"),
    [
        ("ERROR: No matching distribution found for scikit-learn==1.9.1", "none",
         "the wheelhouse has no file for scikit-learn==1.9.1: fill it again"),
        ("  Because scikit-learn was not found in the provided package locations and you "
         "require scikit-learn==1.9.1, we can conclude that your requirements are unsatisfiable.",
         "none", "the wheelhouse has no file for scikit-learn==1.9.1: fill it again"),
        ("ERROR: No matching distribution found for scikit-learn==1.9.1", None,
         "the package index has no file for scikit-learn==1.9.1"),
    ],
)  # fmt: skip
def test_a_missing_package_file_is_named(log: str, network: str | None, says: str) -> None:
    """pip's and uv's words for a pinned version with no file where the build looks."""
    tail = collections.deque(["Looking in links: /tmp/mlimg/wheels", log])
    message = daemon._build_failure("returned a non-zero code: 1", tail, "[9/27] RUN", network)
    assert says in message
    assert "conflict" not in message


@pytest.mark.parametrize(
    ("step", "whose"),
    [
        ("RUN micromamba create --yes --prefix /opt/conda-env --file /tmp/mlimg/env/conda.yaml",
         "the model's conda environment (conda.yaml)"),
        ("RUN /opt/venv/bin/python -m pip install --no-deps -r /tmp/mlimg/env/requirements.lock",
         "the model's requirements"),
        ("RUN /opt/venv/bin/python -m pip install -r /tmp/mlimg/runtime.lock",
         "the serving engine's packages"),
    ],
)  # fmt: skip
def test_a_resolver_failure_names_whose_requirements_failed(step: str, whose: str) -> None:
    """Not "mlimg's runtime requirements conflict" when the runtime is not involved."""
    tail = collections.deque(["", "error: Could not solve for environment specs", "  nothing"])
    message = daemon._build_failure("returned a non-zero code: 1", tail, step)
    assert message.splitlines()[0] == f"the image build failed: the step {step} exited with code 1"
    assert f"{whose} cannot be installed together" in message
    assert "runtime requirements conflict" not in message


def test_a_base_image_that_cannot_be_pulled_is_named_with_the_ways_to_provide_it() -> None:
    dns = 'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io'
    message = daemon._build_failure(dns, collections.deque(), "FROM python:3.12-slim AS build")
    assert message.startswith("the base image python:3.12-slim is not in this Docker engine")
    for way in ("docker pull python:3.12-slim", "registry-mirrors", "--base-image IMAGE"):
        assert way in message
    assert "last lines of the build log" not in message  # it would be empty
