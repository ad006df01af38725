"""Docker Swarm on this machine's engine for the rolling-update test: swarm mode on 127.0.0.1,
a stack deployed from compose files, and everything undone afterwards, even on failure.

Swarm's routing mesh and service VIPs need IPVS, which this kernel lacks: the model's service
runs with `endpoint_mode: dnsrr`, and a load balancer of the test's own (nginx, re-resolving
`tasks.SERVICE` every second) is published in host mode. Swarm cannot publish on 127.0.0.1
alone; the test talks to the published port on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from docker.errors import APIError, NotFound

LB_TAG = "mlimg-test/swarm-lb:e2e"
_NGINX_CONF = """\
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path /tmp/body;
  proxy_temp_path /tmp/proxy;
  # Swarm's DNS, asked again every second: tasks come and go during an update.
  resolver 127.0.0.11 valid=1s ipv6=off;
  server {{
    listen 80;
    location / {{
      set $backend tasks.{service};
      proxy_pass http://$backend:{port};
      proxy_connect_timeout 2s;
      proxy_read_timeout 30s;
    }}
  }}
}}
"""
_LB_DOCKERFILE = """\
FROM python:3.11-slim
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light \\
 && rm -rf /var/lib/apt/lists/*
COPY nginx.conf /etc/nginx/nginx.conf
CMD ["nginx", "-g", "daemon off;"]
"""


def build_load_balancer(client, service: str, port: int) -> str:
    """An nginx image that spreads requests over the tasks of swarm service `service`."""
    files = {
        "Dockerfile": _LB_DOCKERFILE,
        "nginx.conf": _NGINX_CONF.format(service=service, port=port),
    }
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive.seek(0)
    client.images.build(fileobj=archive, custom_context=True, tag=LB_TAG, rm=True, pull=False)
    return LB_TAG


@contextmanager
def swarm_mode(client) -> Iterator[None]:
    """Swarm mode for the duration; an engine already in a swarm is left alone (skipped)."""
    state = client.info()["Swarm"]["LocalNodeState"]
    if state != "inactive":
        pytest.skip(f"the engine is already in swarm mode ({state}); not touching it")
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    try:
        yield
    finally:
        with contextlib.suppress(APIError):
            client.swarm.leave(force=True)
        _remove_network(client, "docker_gwbridge")


@contextmanager
def stack(client, name: str) -> Iterator[None]:
    """A stack's name for the duration; its services, containers and network removed after."""
    try:
        yield
    finally:
        subprocess.run(["docker", "stack", "rm", name], capture_output=True, timeout=60)
        label = {"label": f"com.docker.stack.namespace={name}"}
        deadline = time.monotonic() + 60
        while client.containers.list(all=True, filters=label) and time.monotonic() < deadline:
            time.sleep(0.5)
        _remove_network(client, f"{name}_default")


def deploy(name: str, *compose_files: Path) -> None:
    """`docker stack deploy` from local images (no registry to resolve them against here)."""
    args = ["docker", "stack", "deploy", "--resolve-image", "never"]
    for path in compose_files:
        args += ["-c", str(path)]
    result = subprocess.run([*args, name], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def update_state(client, service: str) -> str | None:
    """The service's update state: updating, completed, rollback_started, rollback_completed..."""
    status = client.services.get(service).attrs.get("UpdateStatus") or {}
    return status.get("State")


def running_images(client, service: str) -> list[str]:
    """The image of each task that is running and meant to be."""
    tasks = client.services.get(service).tasks(filters={"desired-state": "running"})
    return sorted(
        task["Spec"]["ContainerSpec"]["Image"]
        for task in tasks
        if task["Status"]["State"] == "running"
    )


def _remove_network(client, name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.networks.get(name).remove()
            return
        except NotFound:
            return
        except APIError:  # still in use by a container on its way out
            time.sleep(0.5)
