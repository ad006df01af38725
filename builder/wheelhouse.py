"""Wheelhouses for builds with no route to a package index: every file a lock names for the
image's platform and Python, downloaded on a machine that has one, with the lock beside them.

pip downloads (uv has no download command) with the lock's hashes required and every wheel tag
the image accepts listed: the manylinux tags up to the lock's glibc, the CPython ABI, abi3, and
pure-Python wheels. Pinned versions leave pip no choice of release, only of file. A package
with no wheel for the target is named before any build; `--build-sdists` builds its wheel here
when this machine is the target's platform and Python, and the wheelhouse's lock then carries
that wheel's hash beside the release's. The wheelhouse is filled beside its path and renamed
into place whole.
"""

from __future__ import annotations

import hashlib
import platform as host_platform
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from mlimg.errors import InvalidOption, WheelhouseFailed
from mlimg.lock import PLATFORMS, Lock, pins_of, write
from mlimg.plan import BuildPlan

LOCK_NAME = "requirements.lock"  # the lock inside a wheelhouse
_MANYLINUX_GLIBC = 28  # the lock's wheels: manylinux_2_28 and older (lock.PLATFORMS)
_DOWNLOAD_TIMEOUT = 1800
_REMOTE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*) @ (?:https?|ftp)://", re.MULTILINE)
_MISSING = re.compile(r"(?:No matching distribution found for|satisfies the requirement) (\S+)")


@dataclass(frozen=True)
class Wheelhouse:
    path: Path
    files: int
    size: int  # bytes
    built: tuple[str, ...]  # wheels built here from source distributions


def fill(
    lock: Lock,
    directory: Path,
    plan: BuildPlan,
    report: Callable[[str], None],
    build_sdists: bool = False,
) -> Wheelhouse:
    """Download every file `lock` needs into `directory` (created, or an earlier wheelhouse
    replaced)."""
    directory = directory.resolve()
    _check_target(directory)
    staging = directory.with_name(f".{directory.name}.mlimg-partial-{secrets.token_hex(4)}")
    staging.mkdir(parents=True)
    try:
        write(lock, staging / LOCK_NAME)
        count = len({name for part in lock.parts for name in pins_of(part)})
        report(f"downloading {count} packages for {lock.platform}, Python {lock.python}")
        missing = _download(lock, staging, plan)
        built: tuple[str, ...] = ()
        if missing:
            if not build_sdists:
                raise WheelhouseFailed(_no_wheel_message(missing, lock))
            _check_host_matches(lock, missing)
            built = tuple(_build_wheels(lock, missing, staging, plan, report))
        for work_file in staging.glob(f".{LOCK_NAME}.*"):
            work_file.unlink()
        files = [p for p in staging.iterdir() if p.name != LOCK_NAME]
        result = Wheelhouse(directory, len(files), sum(p.stat().st_size for p in files), built)
        _replace(staging, directory)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_target(directory: Path) -> None:
    if not directory.parent.is_dir():
        raise InvalidOption(f"-d {directory}: the directory {directory.parent} does not exist")
    in_use = directory.exists() and any(directory.iterdir())
    if in_use and not (directory / LOCK_NAME).is_file():
        raise InvalidOption(
            f"-d {directory} holds files and is not a wheelhouse mlimg made: choose an "
            "empty or new directory"
        )


def _download(lock: Lock, staging: Path, plan: BuildPlan) -> list[str]:
    """Download what the lock names, section by section (a tool may pin another version of
    a package than the environment does); return the pins with no wheel for the target."""
    missing: list[str] = []
    for index, part in enumerate(lock.parts):
        requirements = staging / f".{LOCK_NAME}.{index}"  # removed before the rename
        requirements.write_text(part, encoding="utf-8")
        for _ in range(len(pins_of(part)) + 1):  # each pass names one more package with no wheel
            download = [*_pip(plan), "download", *_target(lock), "--dest", str(staging)]
            download += ["--no-deps", "--require-hashes", "--only-binary=:all:"]
            result = subprocess.run(
                [*download, "-r", str(requirements)],
                capture_output=True,
                text=True,
                timeout=_DOWNLOAD_TIMEOUT,
            )
            if result.returncode == 0:
                break
            found = _MISSING.search(result.stderr)
            if found is None:
                raise WheelhouseFailed(f"pip download failed:\n{_tail(result.stderr)}")
            missing.append(found.group(1))
            requirements.write_text(_without(part, missing), encoding="utf-8")
        else:  # pragma: no cover (bounded loop)
            raise WheelhouseFailed("pip download kept failing")
    return list(dict.fromkeys(missing))


def lock_in(directory: Path) -> Path:
    """The lock of a wheelhouse that `mlimg wheels` filled."""
    if not directory.is_dir():
        raise InvalidOption(f"--wheelhouse {directory}: no such directory")
    path = directory / LOCK_NAME
    if not path.is_file():
        raise InvalidOption(
            f"--wheelhouse {directory} is not a wheelhouse mlimg made (it has no {LOCK_NAME}): "
            "fill one with mlimg wheels"
        )
    return path


def package_files(directory: Path) -> list[Path]:
    """The wheelhouse's package files: regular files, never links (a wheelhouse mlimg fills
    has none), so that nothing outside it is copied into a build context."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.name != LOCK_NAME
        and not path.name.startswith(".")
        and path.is_file()
        and not path.is_symlink()
    )


def check_complete(lock: Lock, directory: Path) -> None:
    """Name, before any build, every pinned package the wheelhouse has no file of, and every
    file whose hash its lock does not hold (a copy damaged on its way across an air gap)."""
    held: dict[tuple[str, Version], list[Path]] = {}
    for path in package_files(directory):
        try:
            if path.name.endswith(".whl"):
                name, version, _, _ = parse_wheel_filename(path.name)
            else:
                name, version = parse_sdist_filename(path.name)
        except (InvalidWheelFilename, InvalidSdistFilename):
            continue
        held.setdefault((name, version), []).append(path)
    # A file inside the model is in the build context already; a URL is out of reach.
    remote = sorted({m.group(1) for m in _REMOTE.finditer(lock.text)})
    if remote:
        raise InvalidOption(
            f"the model requires {', '.join(remote)} by URL, which a build with no network "
            "cannot fetch: put the file inside the model and require it by a file: URL"
        )
    missing, damaged = set(), set()
    for part in lock.parts:
        hashes = hashes_of(part)
        for name, version in pins_of(part).items():
            files = held.get((canonicalize_name(name), Version(version)), [])
            if not files:
                missing.add(f"{name}=={version}")
            for path in files:
                if _sha256(path) not in hashes.get(canonicalize_name(name), set()):
                    damaged.add(path.name)
    if missing:
        raise InvalidOption(
            f"the wheelhouse {directory} has no file for {', '.join(sorted(missing))}: fill it "
            "again with mlimg wheels for this model"
        )
    if damaged:
        raise InvalidOption(
            f"in the wheelhouse {directory}, {', '.join(sorted(damaged))} does not match the "
            "hashes of its lock (damaged or replaced): fill it again with mlimg wheels"
        )


def hashes_of(text: str) -> dict[str, set[str]]:
    """Each entry's sha256 hashes in a lock's text, by its canonical name."""
    found: dict[str, set[str]] = {}
    name = None
    for line in text.splitlines():
        if _is_entry(line):
            name = canonicalize_name(line.split("==")[0].strip())
            found.setdefault(name, set())
        elif name is not None and line.strip().startswith("--hash=sha256:"):
            found[name].add(line.strip().split(":", 1)[1].rstrip(" \\"))
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _without(text: str, pins: list[str]) -> str:
    """The lock's text without the entries of `pins` (NAME==VERSION)."""
    names = {pin.split("==")[0].lower() for pin in pins}
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        if _is_entry(line):
            skipping = line.split("==")[0].strip().lower() in names
        if not skipping:
            kept.append(line)
    return "".join(kept)


def _target(lock: Lock) -> list[str]:
    """pip's options for the image's Python and every wheel tag it installs."""
    machine = PLATFORMS[lock.platform].split("-")[0]
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(_MANYLINUX_GLIBC, 4, -1)]
    tags += [f"manylinux2014_{machine}", f"linux_{machine}"]
    if machine == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    abi = "cp" + lock.python.replace(".", "")
    options = ["--python-version", lock.python, "--implementation", "cp"]
    options += [item for tag in tags for item in ("--platform", tag)]
    return [*options, "--abi", abi, "--abi", "abi3", "--abi", "none"]


def _pip(plan: BuildPlan) -> list[str]:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    if plan.ca_cert is not None:
        command += ["--cert", str(plan.ca_cert)]
    if plan.pip_index_url:
        command += ["--index-url", plan.pip_index_url]
    if plan.pip_extra_index_url:
        command += ["--extra-index-url", plan.pip_extra_index_url]
    return command


def _no_wheel_message(missing: list[str], lock: Lock) -> str:
    names = ", ".join(missing)
    text = f"no wheel for {lock.platform} and Python {lock.python}: {names}; "
    if _host_matches(lock):
        return text + "--build-sdists builds their wheels here from their source distributions"
    return text + (
        f"build their wheels on a {lock.platform} machine with Python {lock.python} "
        "(where --build-sdists does it), or choose versions that have wheels"
    )


def _host_matches(lock: Lock) -> bool:
    machine = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}.get(host_platform.machine())
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return sys.platform == "linux" and machine == lock.platform and here == lock.python


def _check_host_matches(lock: Lock, missing: list[str]) -> None:
    if not _host_matches(lock):
        raise WheelhouseFailed(_no_wheel_message(missing, lock))


def _build_wheels(
    lock: Lock, pins: list[str], staging: Path, plan: BuildPlan, report: Callable[[str], None]
) -> list[str]:
    """Build each pin's wheel from its source distribution (its hash checked), and add the
    wheel's hash to the wheelhouse's lock."""
    text = (staging / LOCK_NAME).read_text(encoding="utf-8")
    for pin in pins:
        report(f"building a wheel of {pin} from its source distribution")
        source = staging / f".{LOCK_NAME}.sdist"
        source.write_text(_only(lock.text, pin), encoding="utf-8")
        wheel = [*_pip(plan), "wheel", "--no-deps", "--require-hashes", "--no-binary=:all:"]
        result = subprocess.run(
            [*wheel, "--wheel-dir", str(staging), "-r", str(source)],
            capture_output=True,
            text=True,
            timeout=_DOWNLOAD_TIMEOUT,
        )
        source.unlink()
        if result.returncode != 0:
            raise WheelhouseFailed(f"cannot build a wheel of {pin}:\n{_tail(result.stderr)}")
        name = pin.split("==")[0].replace("-", "_").lower()
        [wheel] = [p for p in staging.glob("*.whl") if p.name.lower().startswith(name + "-")]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        text = _add_hash(text, pin, digest)
    (staging / LOCK_NAME).write_text(text, encoding="utf-8")
    return pins


def _only(text: str, pin: str) -> str:
    """The lock's header and its entry for one pin, hashes included."""
    name = pin.split("==")[0].lower()
    entries = [line.split("==")[0].strip() for line in text.splitlines() if _is_entry(line)]
    return _without(text, [entry for entry in entries if entry.lower() != name])


def _is_entry(line: str) -> bool:
    return "==" in line and line[:1] not in (" ", "#")


def _add_hash(text: str, pin: str, digest: str) -> str:
    lines = text.splitlines(keepends=True)
    name = pin.split("==")[0].lower()
    for index, line in enumerate(lines):
        if _is_entry(line) and line.split("==")[0].strip().lower() == name:
            lines.insert(index + 1, f"    --hash=sha256:{digest} \\\n")
            break
    return "".join(lines)


def _replace(staging: Path, directory: Path) -> None:
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}.mlimg-old-{secrets.token_hex(4)}")
        directory.rename(old)
    staging.rename(directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _tail(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return "\n".join(lines[-15:]) or "no reason given"
