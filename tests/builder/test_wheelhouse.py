"""`mlimg wheels`: every file of the model's lock for the image's platform and Python, with
the lock beside them; installed here with no index at all. Real downloads from the index."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

from mlimg import lock, wheelhouse
from mlimg.envmanagers import UV_VERSION, uv_binary
from mlimg.errors import InvalidOption

LOCK = "requirements.lock"


def mlimg(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "mlimg", *args], capture_output=True, text=True, timeout=900
    )
    sys.stderr.write(result.stderr[-2000:])
    return result


def pins(lock_text: str) -> dict[str, str]:
    found = {}
    for line in lock_text.splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==", 1)
            found[canonicalize_name(name)] = version.split()[0]
    return found


def wheels(directory: Path) -> dict[str, tuple[str, set[str]]]:
    """Each wheel's project: its version and its platform tags."""
    found = {}
    for path in directory.glob("*.whl"):
        name, version, _, tags = parse_wheel_filename(path.name)
        found[str(name)] = (str(version), {tag.platform for tag in tags})
    return found


def install_offline(wheelhouse: Path, venv: Path) -> dict[str, str]:
    """The environment's sections of the wheelhouse's lock installed into a new venv with no
    index and no cache."""
    environment = venv.with_name("environment.lock")
    environment.write_text(lock.read(wheelhouse / LOCK).environment)
    uv = uv_binary()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CACHE": "1"}
    subprocess.run([uv, "venv", "-q", "--python", "3.11", str(venv)], check=True, env=env)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", python, "--offline", "--no-index",
         "--find-links", str(wheelhouse), "--no-deps", "--require-hashes",
         "-r", str(environment)],
        check=True, env=env, timeout=600,
    )  # fmt: skip
    listed = subprocess.run(
        [uv, "pip", "list", "--python", python, "--format=freeze"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    return {canonicalize_name(n): v for n, v in (line.split("==", 1) for line in listed.split())}


@pytest.fixture(scope="module")
def iris_wheelhouse(example_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wheelhouse") / "iris"
    result = mlimg("wheels", "-m", str(example_model), "-d", str(directory))
    assert result.returncode == 0, result.stderr
    assert re.search(r"wrote \d+ files \(\d+ MB\) and their lock to ", result.stderr)
    return directory


def test_every_locked_package_has_its_wheel_and_installs_with_no_index(
    iris_wheelhouse: Path, tmp_path: Path
) -> None:
    whole = lock.read(iris_wheelhouse / LOCK)
    wanted = {(name, version) for part in whole.parts for name, version in pins(part).items()}
    held = {
        (str(name), str(version))
        for name, version, _, _ in map(
            parse_wheel_filename, (p.name for p in iris_wheelhouse.glob("*.whl"))
        )
    }
    assert held == wanted and ("uv", UV_VERSION) in held  # the build's tools are there too
    locked = pins(whole.environment)
    assert sorted(p.name for p in iris_wheelhouse.iterdir() if not p.name.endswith(".whl")) == [
        LOCK
    ]
    assert not [p for p in iris_wheelhouse.parent.iterdir() if "mlimg-partial" in p.name]
    assert install_offline(iris_wheelhouse, tmp_path / "venv") == locked


def test_an_arm64_wheelhouse_holds_arm64_wheels(example_model: Path, tmp_path: Path) -> None:
    """Filled on this amd64 host for arm64 (nothing here can install it)."""
    directory = tmp_path / "arm64"
    result = mlimg("wheels", "-m", str(example_model), "-d", str(directory), "--platform",
                   "linux/arm64")  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = wheels(directory)
    assert set(found) == set(pins((directory / LOCK).read_text()))
    platforms = set().union(*(tags for _, tags in found.values()))
    assert any("aarch64" in tag for tag in platforms)
    assert not any("x86_64" in tag for tag in platforms), platforms
    assert "# platform: linux/arm64" in (directory / LOCK).read_text()


@pytest.fixture(scope="module")
def sdist_model(example_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example model, also requiring docopt 0.6.2: a release with a source archive only."""
    model = tmp_path_factory.mktemp("sdist") / "model"
    shutil.copytree(example_model, model)
    with (model / "requirements.txt").open("a") as requirements:
        requirements.write("\ndocopt==0.6.2\n")
    return model


def test_a_package_without_a_wheel_is_named_before_anything_is_written(
    sdist_model: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "wheelhouse"
    here = mlimg("wheels", "-m", str(sdist_model), "-d", str(directory))
    assert here.returncode == 1 and "Traceback" not in here.stderr
    assert "no wheel for linux/amd64 and Python 3.11: docopt==0.6.2; --build-sdists" in here.stderr
    arm = mlimg("wheels", "-m", str(sdist_model), "-d", str(directory), "--platform", "linux/arm64")
    assert arm.returncode == 1
    assert "docopt==0.6.2; build their wheels on a linux/arm64 machine" in arm.stderr
    assert list(tmp_path.iterdir()) == []  # no wheelhouse, nothing half-made


def test_build_sdists_builds_the_wheel_here_and_locks_its_hash(
    sdist_model: Path, tmp_path: Path
) -> None:
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the example model's Python is 3.11: only a 3.11 mlimg builds its wheels")
    directory = tmp_path / "wheelhouse"
    result = mlimg("wheels", "-m", str(sdist_model), "-d", str(directory), "--build-sdists")
    assert result.returncode == 0, result.stderr
    assert "1 built here" in result.stderr
    [wheel] = directory.glob("docopt-0.6.2-*.whl")
    lock_text = (directory / LOCK).read_text()
    entry = lock_text[lock_text.index("\ndocopt==0.6.2") :].split("# via")[0]
    assert entry.count("--hash=sha256:") == 2  # the source archive's, and the wheel built here
    assert install_offline(directory, tmp_path / "venv")["docopt"] == "0.6.2"
    assert wheel.is_file()


def test_a_lock_for_another_python_and_a_foreign_directory_are_refused(
    example_model: Path, iris_wheelhouse: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.lock"
    other.write_text(
        (iris_wheelhouse / LOCK).read_text().replace("# python: 3.11", "# python: 3.12")
    )
    refused = mlimg("wheels", "-m", str(example_model), "-d", str(tmp_path / "w"), "--lock",
                    str(other))  # fmt: skip
    assert refused.returncode == 2
    assert "the lock is for Python 3.12; this image needs 3.11" in refused.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "precious.txt").write_text("keep me")
    foreign = mlimg("wheels", "-m", str(example_model), "-d", str(taken))
    assert foreign.returncode == 2 and "is not a wheelhouse mlimg made" in foreign.stderr
    assert (taken / "precious.txt").read_text() == "keep me"


def test_generate_dockerfile_from_a_wheelhouse_needs_no_index(
    example_model: Path, iris_wheelhouse: Path, tmp_path: Path
) -> None:
    """The context carries the wheelhouse's files and lock; the Dockerfile asks no index and
    trusts no CA (a given one is left out: nothing is downloaded)."""
    context = tmp_path / "context"
    result = mlimg("generate-dockerfile", "-m", str(example_model), "--wheelhouse",
                   str(iris_wheelhouse), "-d", str(context), "--ca-cert",
                   str(certifi_bundle()))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"build it with: docker build --network none -t IMAGE {context}" in result.stderr
    held = sorted(p.name for p in iris_wheelhouse.iterdir() if p.name != LOCK)
    assert sorted(p.name for p in (context / "wheels").iterdir()) == held
    lock_text = (iris_wheelhouse / LOCK).read_text()
    assert (context / "mlimg" / "requirements.lock").read_text() == lock_text
    dockerfile = (context / "Dockerfile").read_text()
    assert "COPY wheels /tmp/mlimg/wheels" in dockerfile and "--no-index" in dockerfile
    assert "PIP_INDEX_URL" not in dockerfile and "ca-bundle" not in dockerfile
    assert not (context / "mlimg" / "ca-bundle.pem").exists()


def certifi_bundle() -> Path:
    import certifi

    return Path(certifi.where())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env-manager", "conda"], "--wheelhouse needs an env manager that installs from wheels"),
        (["--lock", "LOCK"], "--wheelhouse carries its own lock: leave out --lock"),
    ],
)
def test_a_wheelhouse_is_refused_where_it_cannot_work(
    example_model: Path, iris_wheelhouse: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [str(iris_wheelhouse / LOCK) if arg == "LOCK" else arg for arg in args]
    result = mlimg("generate-dockerfile", "-m", str(example_model), "--wheelhouse",
                   str(iris_wheelhouse), "-d", str(tmp_path / "context"), *args)  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_is_not_a_wheelhouse_is_named(example_model: Path, tmp_path: Path) -> None:
    for directory, message in ((tmp_path / "nowhere", "no such directory"),
                               (tmp_path, "is not a wheelhouse mlimg made")):  # fmt: skip
        result = mlimg("generate-dockerfile", "-m", str(example_model), "--wheelhouse",
                       str(directory), "-d", str(tmp_path / "context"))  # fmt: skip
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "context").exists()


def test_an_arm64_build_context_is_rendered_here(example_model: Path, tmp_path: Path) -> None:
    """Locked and rendered for arm64 on this amd64 host; nothing here can build or run it."""
    context = tmp_path / "context"
    result = mlimg("generate-dockerfile", "-m", str(example_model), "--platform", "linux/arm64",
                   "-d", str(context))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"docker build --platform linux/arm64 -t IMAGE {context}" in result.stderr
    lock_text = (context / "mlimg" / "requirements.lock").read_text()
    assert "# platform: linux/arm64 (aarch64-manylinux_2_28)" in lock_text
    assert "--platform linux/arm64" in (context / "Dockerfile").read_text().splitlines()[1]


def test_a_damaged_or_linked_file_is_named_before_the_build(
    example_model: Path, iris_wheelhouse: Path, tmp_path: Path
) -> None:
    """A file changed on its way across the air gap fails its lock's hash here, not half-way
    through a build; a link is never followed out of the wheelhouse, so its package is
    missing."""
    damaged = tmp_path / "damaged"
    shutil.copytree(iris_wheelhouse, damaged)
    [wheel] = damaged.glob("six-*.whl")
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    result = mlimg("generate-dockerfile", "-m", str(example_model), "--wheelhouse", str(damaged),
                   "-d", str(tmp_path / "context"))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{wheel.name} does not match the hashes of its lock" in result.stderr
    outside = tmp_path / wheel.name
    wheel.rename(outside)
    outside.write_bytes(outside.read_bytes()[:-1])  # the right bytes, outside the wheelhouse
    wheel.symlink_to(outside)
    linked = mlimg("generate-dockerfile", "-m", str(example_model), "--wheelhouse",
                   str(damaged), "-d", str(tmp_path / "context"))  # fmt: skip
    assert linked.returncode == 2 and re.search(r"has no file for six==[\d.]+", linked.stderr)
    assert not (tmp_path / "context").exists()


def test_a_requirement_by_url_is_refused_for_an_offline_build(tmp_path: Path) -> None:
    """pip fetches a `NAME @ https://...` entry from its URL, wherever else the file lies."""
    text = (
        "# mlimg test lock\n# python: 3.11\n# platform: linux/amd64\n"
        f"{lock.MODEL_SECTION}tiny @ https://example.invalid/tiny-1.0-py3-none-any.whl \\\n"
        "    --hash=sha256:00\n"
        f"{lock.ENGINE_SECTION}{lock.UV_SECTION}{lock.SBOM_TOOL_SECTION}"
    )
    with pytest.raises(InvalidOption, match="requires tiny by URL, which a build with no network"):
        wheelhouse.check_complete(lock.Lock(text, "3.11", "linux/amd64"), tmp_path)
