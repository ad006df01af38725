"""Spark fixtures: a standalone cluster on 127.0.0.1 (a master and two one-core workers started
from the pyspark installation), torn down even on failure, and one environment cache shared by
every Spark test, so that the model's environment is made and packed once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.probes import free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/spark/" in str(item.fspath):
            item.add_marker(pytest.mark.spark)


@pytest.fixture(scope="session")
def spark_home() -> Path:
    try:
        import pyspark
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI is set, so the Spark tests must run, but pyspark is missing")
        pytest.skip("needs pyspark: pip install -e '.[test,spark]'")
    return Path(pyspark.__file__).parent


@pytest.fixture(scope="session")
def spark_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spark-cache")


def run_predict(
    *args: str, cache: Path, timeout: float = 900, **variables: str
) -> subprocess.CompletedProcess:
    """`mlimg predict --runner spark ...` as a user runs it (with `variables` added to its
    environment); its output echoed for CI's log."""
    env = {**os.environ, "MLIMG_CACHE_DIR": str(cache), **variables}
    result = subprocess.run(
        [sys.executable, "-m", "mlimg", "predict", "--runner", "spark", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    sys.stderr.write(f"$ mlimg predict --runner spark {' '.join(args)}\n{result.stderr[-3000:]}")
    return result


@dataclass(frozen=True)
class SparkCluster:
    url: str  # spark://127.0.0.1:PORT
    workdir: Path  # its daemons' logs, and its executors' working directories

    def executor_pids(self) -> list[int]:
        """The executors running now (each a JVM whose working directory is in workdir)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes()
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if b"CoarseGrainedExecutorBackend" in command and cwd.startswith(str(self.workdir)):
                pids.append(int(entry.name))
        return pids


@pytest.fixture(scope="session")
def spark_cluster(
    spark_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SparkCluster]:
    """spark://127.0.0.1:PORT with two workers of one core and 1 GiB each."""
    workdir = tmp_path_factory.mktemp("spark-cluster")
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1"}
    spark_class = str(spark_home / "bin" / "spark-class")
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> Path:
        log = workdir / f"{name}.log"
        processes.append(
            subprocess.Popen(
                [spark_class, *args],
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: killed whole at the end
            )
        )
        return log

    try:
        master_log = start(
            "master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
            "--port", str(port), "--webui-port", "0",
        )  # fmt: skip
        for index in (1, 2):
            start(
                f"worker{index}", "org.apache.spark.deploy.worker.Worker", url,
                "--host", "127.0.0.1", "--cores", "1", "--memory", "1g", "--webui-port", "0",
                "--work-dir", str(workdir / f"work{index}"),
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while master_log.read_text(errors="replace").count("Registering worker") < 2:
            if time.monotonic() > deadline:
                pytest.fail(f"the Spark workers did not register: {master_log.read_text()[-3000:]}")
            if any(process.poll() is not None for process in processes):
                pytest.fail(f"a Spark daemon exited: {master_log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield SparkCluster(url, workdir)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
