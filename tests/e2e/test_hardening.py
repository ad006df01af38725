"""The image as an operator runs it and an attacker meets it: a read-only root filesystem and
an arbitrary user id, slow and silent clients for half a minute, the health check through it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from tests.attacks import slow_and_silent
from tests.e2e.conftest import post, serving


def predictions(url: str, frame: pd.DataFrame) -> list:
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))}).encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["predictions"]


def health(container) -> str:
    container.reload()
    return container.attrs["State"].get("Health", {}).get("Status", "none")


def wait_healthy(container, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while (status := health(container)) == "starting" and time.monotonic() < deadline:
        time.sleep(0.5)
    return status


def test_read_only_root_and_an_arbitrary_user(
    docker_client, iris_image: str, sklearn_model: Path
) -> None:
    """As Kubernetes runs it with readOnlyRootFilesystem and OpenShift with a random uid:
    no tmpfs, no flag, the model still served and the health check passing."""
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).data.iloc[::10]
    expected = mlflow.pyfunc.load_model(str(sklearn_model)).predict(frame).tolist()
    options = {"read_only": True, "user": "43210:43210", "healthcheck": {"interval": 2 * 10**9}}
    with serving(docker_client, iris_image, **options) as url:
        assert predictions(url, frame) == expected
        container = docker_client.containers.list(filters={"label": "mlimg.e2e"})[0]
        assert wait_healthy(container) == "healthy", container.logs().decode()[-2000:]


def test_slow_and_silent_clients_for_30_seconds(docker_client, iris_image: str) -> None:
    """200 slowloris and 2,000 silent connections held for 30 s: every ordinary request is
    answered 200, /ping stays 200 and the container stays healthy."""
    example = Path(__file__).resolve().parents[2] / "examples/iris/model/serving_input_example.json"
    options = {"healthcheck": {"interval": 3 * 10**9}}
    with serving(docker_client, iris_image, **options) as url:
        container = docker_client.containers.list(filters={"label": "mlimg.e2e"})[0]
        assert wait_healthy(container) == "healthy"
        port = int(url.rsplit(":", 1)[1])
        seen = slow_and_silent(port, example, 30, 200, 2000)
        status = health(container)
    p50, p99 = seen.quantile(0.5) * 1000, seen.quantile(0.99) * 1000
    print(f"under attack: {len(seen.latencies)} requests, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert seen.errors == []
    assert set(seen.statuses) == {200}
    assert len(seen.latencies) > 100
    assert p99 < 250, seen.latencies[-10:]  # 100 ms on an idle machine; CI shares two cores
    assert status == "healthy"


def test_under_300_mb_the_documented_limits_hold_and_no_worker_dies(
    docker_client, iris_image: str
) -> None:
    """`docker run --memory 300m` with two workers: bodies over 300/16 MiB and inputs whose
    decoding is estimated over 300/8 MiB are 413; what fits is answered; nothing is killed."""
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True).data
    fits = pd.concat([data] * 400, ignore_index=True).to_csv(index=False).encode()  # 60k rows
    too_long = b'{"dataframe_split": {"data": [' + b"[5.1, 3.5, 1.4, 0.2], " * 1_700_000
    too_wide = (",".join(f"c{i}" for i in range(10**6)) + "\n").encode()  # 7 MB, 10^6 columns
    dense = pd.concat([data] * 3000, ignore_index=True).to_csv(index=False).encode()  # 13 MB
    options = {"mem_limit": "300m", "memswap_limit": "300m", "environment": {"MLIMG_WORKERS": "2"}}
    with serving(docker_client, iris_image, **options) as url:
        container = docker_client.containers.list(filters={"label": "mlimg.e2e"})[0]
        status, answer = post(url, fits, "text/csv")
        assert status == 200 and len(answer["predictions"]) == 60_000
        status, answer = post(url, too_long, "application/json")  # 37 MB: over the body limit
        assert status == 413, answer
        for body in (too_wide, dense):  # under the body limit, over the decoding budget
            status, answer = post(url, body, "text/csv")
            assert status == 413 and "MLIMG_MAX_DECODED_BYTES" in answer["message"], answer
        with ThreadPoolExecutor(4) as pool:  # large ones at once take turns
            statuses = list(pool.map(lambda _: post(url, fits, "text/csv", 120)[0], range(4)))
        assert statuses == [200] * 4
        # The kernel's count of processes it killed for memory: cgroup v2, else v1.
        events = container.exec_run(
            [
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory.events || cat /sys/fs/cgroup/memory/memory.oom_control",
            ]
        ).output.decode()
        logs = container.logs().decode()
        container.reload()
    assert "oom_kill 0" in events, events
    assert not container.attrs["State"]["OOMKilled"]
    assert "SIGKILL" not in logs and "Perhaps out of memory" not in logs, logs[-2000:]
