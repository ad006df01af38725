"""Real container registries on 127.0.0.1 for the push tests: Debian's `docker-registry`
(CNCF distribution), open or behind htpasswd, each with its own storage, stopped afterwards.

The Docker engine treats registries on 127.0.0.0/8 as insecure (plain HTTP) by default, so
push and pull need no engine change.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.probes import free_port


@contextmanager
def container_registry(workdir: Path, credentials: tuple[str, str] | None = None) -> Iterator[str]:
    """Run a registry; yield its address, HOST:PORT. With `credentials`, it asks for them."""
    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(
                "CI is set, but docker-registry is missing (apt-get install docker-registry)"
            )
        pytest.skip("needs docker-registry (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}},
        "http": {"addr": address},
    }
    if credentials is not None:
        import bcrypt

        user, password = credentials
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=6)).decode()
        (workdir / "htpasswd").write_text(f"{user}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "mlimg-test", "path": str(workdir / "htpasswd")}}
    (workdir / "config.yml").write_text(json.dumps(config))  # YAML reads JSON
    log = (workdir / "registry.log").open("wb")
    process = subprocess.Popen(
        [binary, "serve", str(workdir / "config.yml")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_until_answering(address, process, workdir / "registry.log")
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_until_answering(address: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the registry exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{address}/v2/", timeout=2):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # up, and asking for credentials
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the registry at {address} did not answer: {log.read_text()[-2000:]}")


def docker_config(directory: Path, auths: dict[str, tuple[str, str]] | None = None) -> Path:
    """A Docker client config directory (for DOCKER_CONFIG) holding these logins, as
    `docker login` writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = {
        registry: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        for registry, (user, password) in (auths or {}).items()
    }
    (directory / "config.json").write_text(json.dumps({"auths": entries}))
    return directory
