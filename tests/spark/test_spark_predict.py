"""`mlimg predict --runner spark` on `local[2]` and on a standalone cluster on 127.0.0.1: the
same predictions as `mlimg predict` on the same rows, Parquet and CSV in and out, the input's
key columns kept, a refused row named by its position with nothing written, and the clear
refusals (missing input, no pyspark, no Java) before Spark starts."""

from __future__ import annotations

import base64
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from mlimg import spark
from mlimg.errors import InvalidOption
from tests.protocol_models import make_protocol_model
from tests.spark.conftest import SparkCluster, run_predict


def mlimg_predict(model: Path, csv: Path, out: Path, cache: Path) -> pd.DataFrame:
    """The single-process `mlimg predict` on the same rows, as the reference."""
    env = {**os.environ, "MLIMG_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "mlimg", "predict", "-m", str(model), "-i", str(csv)]
    result = subprocess.run(
        [*command, "-o", str(out)], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr
    return pd.read_csv(out)


def read_output(path: Path, fmt: str = "parquet") -> pd.DataFrame:
    assert (path / "_SUCCESS").is_file()
    if fmt == "csv":
        frame = pd.concat(pd.read_csv(part) for part in sorted(path.glob("part-*.csv")))
    else:
        frame = pd.read_parquet(path)
    # A CSV input's kept columns are its text: ids as strings, sorted here as numbers.
    frame["id"] = frame["id"].astype(int)
    return frame.sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def iris_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """600 iris rows with an id column, as two Parquet files and two CSV files."""
    from sklearn.datasets import load_iris

    directory = tmp_path_factory.mktemp("iris-rows")
    features = pd.concat([load_iris(as_frame=True).data] * 4, ignore_index=True)
    features.insert(0, "id", range(len(features)))
    for index, part in enumerate((features.iloc[:250], features.iloc[250:])):
        part.to_parquet(directory / f"part{index}.parquet", index=False)
        part.to_csv(directory / f"part{index}.csv", index=False)
    features.to_csv(directory / "all.csv", index=False)
    return directory, features


def test_local_parquet_directory_equals_mlimg_predict(
    sklearn_model: Path, iris_rows, spark_cache: Path, spark_home: Path, tmp_path: Path
) -> None:
    directory, features = iris_rows
    expected = mlimg_predict(
        sklearn_model, directory / "all.csv", tmp_path / "ref.csv", spark_cache
    )
    out = tmp_path / "out"
    result = run_predict(
        "-m", str(sklearn_model), "-i", str(directory / "*.parquet"), "-o", str(out),
        "--master", "local[2]", "--keep-columns", "id", "--chunk-rows", "100", cache=spark_cache,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 600 rows to" in result.stderr and "rows/s)" in result.stderr
    got = read_output(out)
    assert list(got.columns) == ["id", "prediction"]
    assert got["id"].tolist() == features["id"].tolist()
    assert got["prediction"].tolist() == expected["prediction"].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref.csv"]  # no staging left


def test_csv_in_and_out_on_a_standalone_cluster(
    sklearn_model: Path, iris_rows, spark_cache: Path, spark_cluster: SparkCluster, tmp_path: Path
) -> None:
    """The model's environment packed once and shipped with the job, the model beside it."""
    directory, _ = iris_rows
    expected = mlimg_predict(
        sklearn_model, directory / "all.csv", tmp_path / "ref.csv", spark_cache
    )
    out = tmp_path / "out"
    result = run_predict(
        "-m", str(sklearn_model), "-i", str(directory / "part*.csv"), "-o", str(out),
        "--master", spark_cluster.url, "--keep-columns", "id", "--output-format", "csv",
        cache=spark_cache,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert list(spark_cache.glob("envs/*.venv.tar.gz")), "the environment was not packed"
    got = read_output(out, "csv")
    assert got["prediction"].tolist() == expected["prediction"].tolist()


def test_typed_columns_decode_as_the_server_decodes_them(
    spark_cache: Path, spark_home: Path, tmp_path: Path
) -> None:
    """Binary and datetime columns: Parquet's own types on Spark, base64 and ISO 8601 text in
    the reference's CSV; the model sees the same values either way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_protocol_model("typed", tmp_path / "typed")
    raw = [b"alpha", b"\xfe\xffbinary", b"gamma"]  # not UTF-8 (no NUL: the CSV reference)
    times = pd.to_datetime(
        ["2024-03-01 04:59:59.5", "1999-12-31 23:00:00", "2030-01-01"], format="ISO8601"
    )
    frame = pd.DataFrame({"id": [0, 1, 2], "a": [1, 2, 3], "b": raw, "c": times})
    frame.to_parquet(tmp_path / "nanos.parquet", index=False)  # pandas' default: ns
    frame.to_parquet(tmp_path / "typed.parquet", index=False, coerce_timestamps="us")
    text = frame.assign(
        b=[base64.b64encode(v).decode() for v in raw], c=[t.isoformat() for t in times]
    ).drop(columns="id")
    text.to_csv(tmp_path / "typed.csv", index=False)
    expected = mlimg_predict(model, tmp_path / "typed.csv", tmp_path / "ref.csv", spark_cache)
    out = tmp_path / "out"
    nanos = run_predict(
        "-m", str(model), "-i", str(tmp_path / "nanos.parquet"), "-o", str(out),
        "--master", "local[2]", cache=spark_cache,
    )  # fmt: skip
    assert nanos.returncode == 1 and "Traceback" not in nanos.stderr
    assert "write the Parquet with microseconds" in nanos.stderr and not out.exists()
    result = run_predict(
        "-m", str(model), "-i", str(tmp_path / "typed.parquet"), "-o", str(out),
        "--master", "local[2]", "--keep-columns", "id", cache=spark_cache,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = read_output(out)
    for column in ("a", "b", "c"):
        assert got[column].tolist() == expected[column].tolist(), column
    assert got["b"].tolist()[0] == "bytes:alpha"


def test_a_refused_row_is_named_by_position_and_nothing_is_written(
    spark_cache: Path, spark_home: Path, tmp_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_protocol_model("picky", tmp_path / "picky")
    values = [float(i) for i in range(3000)]
    values[2345] = -1.0
    frame = pd.DataFrame({"a": values})
    frame.iloc[:1000].to_parquet(tmp_path / "in-0.parquet", index=False)
    frame.iloc[1000:].to_parquet(tmp_path / "in-1.parquet", index=False)
    out = tmp_path / "out"
    result = run_predict(
        "-m", str(model), "-i", str(tmp_path / "in-*.parquet"), "-o", str(out),
        "--master", "local[2]", "--chunk-rows", "500", cache=spark_cache,
    )  # fmt: skip
    assert result.returncode == 1
    # The row's place in its own file: Spark reads the larger file first, so a count over the
    # whole input would not be the user's.
    where = f"row 1345 (from 0) of file://{tmp_path / 'in-1.parquet'}"
    assert f"mlimg: error: the model refused {where}: ValueError: a must not be " in result.stderr
    assert "Traceback" not in result.stderr and "\tat " not in result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "mlimg-partial" in p.name]


def test_missing_input_and_bad_options_fail_before_spark_starts(
    sklearn_model: Path, spark_cache: Path, spark_home: Path, tmp_path: Path
) -> None:
    missing = run_predict(
        "-m", str(sklearn_model), "-i", str(tmp_path / "nothing*.parquet"), "-o",
        str(tmp_path / "out"), cache=spark_cache, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and "no such file, directory or match" in missing.stderr
    assert "starting Spark" not in missing.stderr
    conf = run_predict(
        "-m", str(sklearn_model), "-i", str(tmp_path), "-o", str(tmp_path / "out"),
        "--conf", "spark.executor.memory", cache=spark_cache, timeout=120,
    )  # fmt: skip
    assert conf.returncode == 2 and "write it KEY=VALUE" in conf.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "precious.txt").write_text("keep me")
    taken = run_predict(
        "-m", str(sklearn_model), "-i", str(tmp_path), "-o", str(tmp_path / "taken"),
        cache=spark_cache, timeout=300,
    )  # fmt: skip
    assert taken.returncode == 2 and "is not the output of an earlier job" in taken.stderr
    assert (tmp_path / "taken" / "precious.txt").read_text() == "keep me"


def test_without_pyspark_or_java_the_message_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark raises ImportError
    with pytest.raises(InvalidOption, match=r"pip install 'mlimg\[spark\]'"):
        spark.check_pyspark()
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(InvalidOption, match="needs Java"):
        spark.check_java()


def test_a_killed_executor_does_not_spoil_the_output(
    spark_cache: Path, spark_cluster: SparkCluster, tmp_path: Path
) -> None:
    """An executor killed (SIGKILL) mid-job: Spark runs its tasks again elsewhere, and the
    output is whole and right, or the job fails with nothing written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_protocol_model("sleepy", tmp_path / "sleepy")  # 0.2 s per batch
    values = [float(i) for i in range(24_000)]
    for index in range(4):
        part = pd.DataFrame({"id": range(index * 6000, (index + 1) * 6000)})
        part["a"] = values[index * 6000 : (index + 1) * 6000]
        part.to_parquet(tmp_path / f"in-{index}.parquet", index=False)
    out = tmp_path / "out"
    args = [
        "-m", str(model), "-i", str(tmp_path / "in-*.parquet"), "-o", str(out),
        "--master", spark_cluster.url, "--keep-columns", "id", "--chunk-rows", "200",
    ]  # fmt: skip
    env = {**os.environ, "MLIMG_CACHE_DIR": str(spark_cache)}
    job = subprocess.Popen(
        [sys.executable, "-m", "mlimg", "predict", "--runner", "spark", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 600
        while len(spark_cluster.executor_pids()) < 2 and job.poll() is None:
            assert time.monotonic() < deadline, "no executors started"
            time.sleep(0.2)
        time.sleep(8)  # the model loaded, batches under way
        assert job.poll() is None, "the job ended before an executor could be killed"
        victim = spark_cluster.executor_pids()[0]
        os.kill(victim, signal.SIGKILL)
        _, stderr = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    sys.stderr.write(stderr[-3000:])
    if job.returncode == 0:
        got = read_output(out)
        assert got["id"].tolist() == list(range(24_000))
        assert got["prediction"].tolist() == [v * 2 for v in values]
    else:
        assert job.returncode == 1 and "mlimg: error: " in stderr and "Traceback" not in stderr
        assert not out.exists()
    assert job.returncode == 0, "Spark did not recover from one lost executor"


def test_parquet_and_csv_objects_in_an_s3_bucket(
    sklearn_model: Path, iris_rows, spark_cache: Path, spark_home: Path, tmp_path: Path
) -> None:
    """An S3 API on 127.0.0.1 (moto's server), reached as MLflow reaches it: a prefix of
    Parquet objects and a glob of CSV objects, read by the workers through pyarrow."""
    import boto3
    from moto.server import ThreadedMotoServer

    directory, _ = iris_rows
    expected = mlimg_predict(
        sklearn_model, directory / "all.csv", tmp_path / "ref.csv", spark_cache
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        variables = {
            "MLFLOW_S3_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "mlimg-test",
            "AWS_SECRET_ACCESS_KEY": "mlimg-test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        s3 = boto3.client(
            "s3",
            endpoint_url=variables["MLFLOW_S3_ENDPOINT_URL"],
            aws_access_key_id="mlimg-test",
            aws_secret_access_key="mlimg-test",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="lake")
        for part in sorted(directory.glob("part*")):
            s3.upload_file(str(part), "lake", f"iris-{part.suffix[1:]}/{part.name}")
        for source, pattern in (
            ("s3://lake/iris-parquet/", "parquet"),
            ("s3://lake/iris-csv/part*.csv", "csv"),
        ):
            out = tmp_path / f"out-{pattern}"
            args = ["-m", str(sklearn_model), "-i", source, "-o", str(out), "--keep-columns", "id"]
            if pattern == "parquet":
                args += ["-t", "parquet"]
            result = run_predict(*args, "--master", "local[2]", cache=spark_cache, **variables)
            assert result.returncode == 0, result.stderr
            got = read_output(out)
            assert got["prediction"].tolist() == expected["prediction"].tolist(), pattern
        missing = run_predict(
            "-m", str(sklearn_model), "-i", "s3://lake/nothing/", "-o", str(tmp_path / "none"),
            "--master", "local[2]", cache=spark_cache, **variables,
        )  # fmt: skip
        assert missing.returncode == 2 and "no object matches" in missing.stderr
    finally:
        server.stop()


def test_a_terminal_shows_the_stages_progress(
    spark_cache: Path, spark_home: Path, tmp_path: Path
) -> None:
    """Spark's stage progress bar on a terminal (stderr a tty); none in a log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_protocol_model("sleepy", tmp_path / "sleepy")  # 0.2 s per batch
    pd.DataFrame({"a": [float(i) for i in range(4000)]}).to_parquet(tmp_path / "in.parquet")
    args = [
        "-m", str(model), "-i", str(tmp_path / "in.parquet"), "--master", "local[2]",
        "--chunk-rows", "200",
    ]  # fmt: skip
    command = [sys.executable, "-m", "mlimg", "predict", "--runner", "spark", *args]
    env = {**os.environ, "MLIMG_CACHE_DIR": str(spark_cache), "COLUMNS": "100"}
    primary, secondary = pty.openpty()
    try:
        job = subprocess.Popen(
            [*command, "-o", str(tmp_path / "on-a-terminal")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary, env=env,
        )  # fmt: skip
        os.close(secondary)
        shown = _read_terminal(primary, job, timeout=600)
    finally:
        os.close(primary)
    sys.stderr.write(shown[-3000:])
    assert job.returncode == 0
    assert re.search(r"\[Stage \d+:[=> ]*\(\d+ \+ \d+\) / \d+\]", shown), shown[-3000:]
    assert "wrote 4,000 rows to" in shown
    logged = run_predict(*args, "-o", str(tmp_path / "in-a-log"), cache=spark_cache)
    assert logged.returncode == 0, logged.stderr
    assert "[Stage" not in logged.stderr and "wrote 4,000 rows to" in logged.stderr


def _read_terminal(primary: int, job: subprocess.Popen, timeout: float) -> str:
    """Everything the job wrote to its terminal, until it ends (or `timeout` passes)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif job.poll() is not None:
            break
    if job.poll() is None:
        job.kill()
    job.wait()
    return b"".join(chunks).decode(errors="replace")
