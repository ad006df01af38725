"""`mlimg predict --runner spark`: batch inference on Spark, local (`local[*]`) or on a cluster.

The driver runs here, in mlimg's own Python (which then needs `mlimg[spark]`); the model runs
in Spark's Python workers, in the model's environment (the same cached one `serve` and
`predict` use), through `mlimg_runtime.spark` (shipped with the job). On a local master the
workers use that environment's interpreter in place; on any other master it is packed once
(venv-pack), cached beside the environment, and shipped with the job (`spark.archives`), as
PySpark's documentation recommends, with the model directory beside it.

The output is written by Spark to `OUTPUT.mlimg-partial-XXXX` beside the output path (not
hidden: Spark would not read a hidden directory back), then renamed into place: a failed or
interrupted job leaves nothing where the output should be.
"""

from __future__ import annotations

import contextlib
import csv as csv_module
import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlimg import envs
from mlimg.errors import InvalidOption, MlimgError
from mlimg.model import LocalModel

FORMATS = ("parquet", "csv")
# Read through pyarrow in the workers rather than Spark's Hadoop file systems, which need a
# connector jar (hadoop-aws) that pyspark does not ship.
OBJECT_STORES = ("s3",)
_SUCCESS = "_SUCCESS"  # what Spark writes into a completed output directory
_ENV_ARCHIVE = "environment"  # where executors unpack the model's environment
_MODEL_ARCHIVE = "model"  # where executors unpack the model
# Rows per Arrow batch when --chunk-rows is not given: as many as fit _BATCH_BYTES of input,
# within _BATCH_ROWS. Each batch is one call of the model (and of MLflow's schema check):
# 100,000 rows rather than 10,000 took a third off the job on iris (benchmarks/spark_predict.py).
_BATCH_BYTES = 32 << 20
_BATCH_ROWS = (1_000, 100_000)


class SparkJobFailed(MlimgError):
    """The Spark job failed: a row the model refused, an executor lost for good, bad input."""


@dataclass(frozen=True)
class SparkJob:
    inputs: tuple[str, ...]  # files, directories or globs, local or URIs Spark reads
    output: Path
    input_format: str | None = None  # parquet or csv; None: from the inputs' names
    output_format: str = "parquet"
    master: str = "local[*]"
    conf: tuple[tuple[str, str], ...] = ()
    keep_columns: tuple[str, ...] = ()
    batch_rows: int | None = None  # rows per Arrow batch; None: from the input's columns


@dataclass(frozen=True)
class SparkSummary:
    rows: int
    seconds: float
    output: Path


def check_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise InvalidOption(
            "--runner spark needs pyspark in mlimg's own Python: pip install 'mlimg[spark]'"
        ) from None


def check_java() -> None:
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise InvalidOption(
            "--runner spark needs Java (17 or 21) for Spark: install a JDK, or point JAVA_HOME "
            "at one"
        )


def input_format(job: SparkJob) -> str:
    if job.input_format is not None:
        return job.input_format
    suffixes = {Path(urlsplit(path).path.rstrip("/")).suffix.lower() for path in job.inputs}
    if suffixes == {".csv"}:
        return "csv"
    return "parquet"


def check_inputs(job: SparkJob) -> None:
    """Local inputs must exist before Spark starts (its own message is a Java stack)."""
    for path in job.inputs:
        scheme = urlsplit(path).scheme
        if scheme in ("", "file") and not glob.glob(urlsplit(path).path if scheme else path):
            raise InvalidOption(f"-i {path}: no such file, directory or match")


def run(
    job: SparkJob, model: LocalModel, env_manager: str, report: Callable[[str], None]
) -> SparkSummary:
    """Predict every input row on Spark. The model's environment is made (or checked) here; on
    a local master Spark starts meanwhile, in a thread, since its workers' interpreter is known
    before the environment is ready (the start and the check take some 4 s each)."""
    check_pyspark()
    check_java()
    check_inputs(job)
    output = job.output.resolve()
    _check_output(output)
    started = time.monotonic()
    local = job.master.startswith("local")
    # Full mlflow where the model pins it: it brings pyarrow, which Spark's Arrow batches need.
    with (
        tempfile.TemporaryDirectory(prefix="mlimg-spark-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        if local:
            python = str(envs.environment_python(model, env_manager, full_mlflow=True))
            session = stack.enter_context(_session(job, model, python, None, report))
            env = envs.prepare_environment(model, env_manager, report, full_mlflow=True)
            _check_environment(env)
        else:
            env = envs.prepare_environment(model, env_manager, report, full_mlflow=True)
            _check_environment(env)
            archive = _packed_environment(env, report)
            python = f"./{_ENV_ARCHIVE}/bin/python"
            session = stack.enter_context(_session(job, model, python, archive, report))
        spark = session()
        spark.sparkContext.addPyFile(str(_runtime_zip(Path(tmp))))
        if not local:
            spark.sparkContext.addArchive(f"{_model_zip(model, Path(tmp))}#{_MODEL_ARCHIVE}")
        model_ref = str(model.path) if local else f"archive:{_MODEL_ARCHIVE}"
        with _workers_loading(spark, model_ref):
            rows = _predict(spark, job, model_ref, output)
    return SparkSummary(rows, time.monotonic() - started, output)


def _predict(spark, job: SparkJob, model_ref: str, output: Path) -> int:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from mlimg_runtime.spark import ROW_ID, output_schema_probe, predict_batches

    fmt = input_format(job)
    if any(urlsplit(path).scheme in OBJECT_STORES for path in job.inputs):
        frame = _object_store_frame(spark, job, fmt)
    else:
        reader = spark.read.option("header", True) if fmt == "csv" else spark.read
        loaded: list = []
        _run_action(lambda: loaded.append(reader.format(fmt).load(list(job.inputs))), None)
        frame = loaded[0]
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(_batch_rows(job, frame)))
    missing = [name for name in job.keep_columns if name not in frame.columns]
    if missing:
        raise InvalidOption(f"--keep-columns: the input has no column {', '.join(missing)}")
    frame = frame.withColumn(ROW_ID, F.monotonically_increasing_id())
    keep = list(job.keep_columns)
    csv = fmt == "csv"
    # The output's columns: those of the predictions for a few rows.
    probe = frame.limit(16).mapInPandas(output_schema_probe(model_ref, keep, csv), "schema binary")
    first = _collect(probe, frame)
    if not first:
        raise InvalidOption("the input holds no rows")
    schema = from_arrow_schema(pa.ipc.read_schema(pa.py_buffer(first[0]["schema"])))
    predictions = frame.mapInPandas(predict_batches(model_ref, keep, csv), schema)
    # Not hidden: Spark would not read a directory whose name starts with "." or "_" back.
    staging = output.parent / f"{output.name}.mlimg-partial-{secrets.token_hex(4)}"
    try:
        writer = predictions.write.mode("error")
        if job.output_format == "csv":
            writer = writer.option("header", True)
        _run_action(lambda: writer.format(job.output_format).save(str(staging)), frame)
        count = _count_rows(spark, staging, job.output_format)
        _publish(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count


@contextlib.contextmanager
def _workers_loading(spark, model_ref: str) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Load the model in Spark's Python workers, one task per core, in a job of its own (in a
    thread) while the driver reads the input's schema and plans the job: loading takes
    seconds, and workers are reused from job to job. Its failure is left to the job proper,
    whose message names the cause."""
    from mlimg_runtime.spark import load_in_worker

    context = spark.sparkContext
    cores = context.defaultParallelism
    # mapInPandas, as the job proper: Spark keeps RDD functions' workers apart from these.
    tasks = spark.range(0, cores, numPartitions=cores)
    loading = tasks.mapInPandas(load_in_worker(model_ref), "id long")

    def load() -> None:
        with contextlib.suppress(Exception):  # py4j's and pyspark's errors share no base
            loading.collect()

    thread = threading.Thread(target=load, name="mlimg-spark-load", daemon=True)
    thread.start()
    try:
        yield
    finally:
        if thread.is_alive():
            context.cancelAllJobs()  # the job proper failed before the loading ended
        thread.join()


def _count_rows(spark, directory: Path, fmt: str) -> int:  # type: ignore[no-untyped-def]
    """The rows written: from the Parquet files' footers, or by reading the CSV back."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(part).metadata.num_rows for part in directory.glob("part-*"))
    return spark.read.format(fmt).option("header", True).load(str(directory)).count()


def _object_store_frame(spark, job: SparkJob, fmt: str):  # type: ignore[no-untyped-def]
    """Objects in a store Spark's Hadoop has no connector for here (s3:// without hadoop-aws):
    listed on the driver, read in the workers with pyarrow's file systems, one task per object,
    reached as MLflow reaches the store (MLFLOW_S3_ENDPOINT_URL, the AWS credentials)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_schema

    from mlimg_runtime.spark import object_store, read_objects

    where = " ".join(job.inputs)
    try:
        uris = sorted(uri for path in job.inputs for uri in _matching_objects(path))
        if not uris:
            raise InvalidOption(f"-i {where}: no object matches")
        filesystem, path = object_store(uris[0])
        csv_columns = None
        if fmt == "csv":
            with filesystem.open_input_stream(path) as source:
                header = source.read(1 << 16).decode("utf-8").splitlines()[0]
            csv_columns = next(csv_module.reader([header]))
            schema = pa.schema([(name, pa.string()) for name in csv_columns])
        else:
            with filesystem.open_input_file(path) as source:
                schema = pq.read_schema(source)
    except (OSError, pa.ArrowException, UnicodeDecodeError, IndexError) as exc:
        raise SparkJobFailed(f"cannot read -i {where}: {_first_line(str(exc))}") from None
    listing = spark.createDataFrame([(uri,) for uri in uris], "uri string").repartition(len(uris))
    columns = from_arrow_schema(schema)
    reader = read_objects(csv_columns, _batch_rows(job, columns))
    return listing.mapInPandas(reader, columns)


def _batch_rows(job: SparkJob, columns) -> int:  # type: ignore[no-untyped-def]
    """--chunk-rows, else as many rows as fit _BATCH_BYTES, by the columns' types (a DataFrame
    or its schema): 8 bytes for a number, a date or a time, 64 for anything of varying size."""
    if job.batch_rows is not None:
        return job.batch_rows
    from pyspark.sql import types

    fixed = (types.NumericType, types.BooleanType, types.DatetimeType)
    fields = columns.schema.fields if hasattr(columns, "schema") else columns.fields
    width = sum(8 if isinstance(f.dataType, fixed) else 64 for f in fields) or 8
    low, high = _BATCH_ROWS
    return max(low, min(high, _BATCH_BYTES // width))


def _matching_objects(uri: str) -> list[str]:
    """The objects a URI names: an object, every object under a prefix, or a glob's matches
    in its last part (names starting with _ or . left out, as Spark leaves them)."""
    from pyarrow import fs

    from mlimg_runtime.spark import object_store

    filesystem, path = object_store(uri)
    prefix = uri[: len(uri) - len(path)]
    if any(char in path for char in "*?["):
        parent, pattern = path.rsplit("/", 1)
        found = filesystem.get_file_info(fs.FileSelector(parent, allow_not_found=True))
        paths = [
            i.path for i in found if i.type == fs.FileType.File and fnmatch(i.base_name, pattern)
        ]
    else:
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.File:
            paths = [path]
        elif info.type == fs.FileType.Directory:
            found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
            paths = [
                i.path
                for i in found
                if i.type == fs.FileType.File and not i.base_name.startswith(("_", "."))
            ]
        else:
            paths = []
    return [prefix + found_path for found_path in paths]


def _collect(probe, frame) -> list:  # type: ignore[no-untyped-def]
    result: list = []
    _run_action(lambda: result.extend(probe.collect()), frame)
    return result


def _run_action(action: Callable[[], object], frame) -> None:  # type: ignore[no-untyped-def]
    """Run a Spark action; a failure becomes one message (the refused row's position in the
    input, when the model refused one), not a Java stack."""
    from mlimg_runtime.spark import ROW_ERROR

    try:
        action()
    except Exception as exc:  # py4j's and pyspark's errors share no useful base
        text = str(exc)
        if ROW_ERROR in text and frame is not None:
            row_id, message = _row_error(text, ROW_ERROR)
            where = _position(frame, row_id) if row_id >= 0 else "a batch"
            raise SparkJobFailed(f"the model refused {where}: {message}") from None
        message = f"the Spark job failed: {_first_line(text)}"
        if "TIMESTAMP(NANOS" in text:
            message += (
                "; Spark reads no nanosecond timestamps: write the Parquet with microseconds "
                "(pandas: to_parquet(..., coerce_timestamps='us'))"
            )
        raise SparkJobFailed(message) from None


def _row_error(text: str, marker: str) -> tuple[int, str]:
    rest = text[text.index(marker) + len(marker) + 1 :]
    row_id, _, message = rest.partition(":")
    message = message.splitlines()[0].strip()
    return int(row_id), message.removeprefix("the model refused the input: ")


def _position(frame, row_id: int) -> str:  # type: ignore[no-untyped-def]
    """Where a row is in the input: its file, and its place in that file (from 0).

    Spark packs files into partitions largest first, so a position across files would mean
    nothing to the user; within one file, rows keep their order in the ids Spark gave them
    (monotonically_increasing_id). One more pass over the input, on failure only."""
    from pyspark.sql import functions as F

    from mlimg_runtime.spark import ROW_ID

    located = frame.select(ROW_ID, F.input_file_name().alias("file"))
    found = located.filter(F.col(ROW_ID) == row_id).select("file").first()
    if found is None or not found["file"]:  # an object read by pyarrow: no file name in Spark
        return "a row of the input"
    before = located.filter((F.col("file") == found["file"]) & (F.col(ROW_ID) < row_id)).count()
    return f"row {before} (from 0) of {found['file']}"


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "at ")):
            return line[:500]
    return "no reason given"


def _check_environment(env: envs.ModelEnvironment) -> None:
    """Spark's Python workers run the model's environment: it must be the driver's Python
    minor version, and hold pyarrow (Spark hands pandas batches over as Arrow)."""
    probe = subprocess.run(
        [
            str(env.python),
            "-c",
            "import sys; print('%d.%d' % sys.version_info[:2]); import pyarrow",
        ],
        capture_output=True,
        text=True,
    )
    found = probe.stdout.strip()
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if found != here:
        raise InvalidOption(
            f"Spark runs the driver and the model on one Python minor version: the model's "
            f"environment has Python {found or 'unknown'}, mlimg runs on {here}; run mlimg "
            f"from a Python {found} installation"
        )
    if probe.returncode != 0:
        raise InvalidOption(
            "the model's environment has no pyarrow, which Spark needs to hand the model its "
            "rows: add pyarrow to the model's requirements"
        )


def _check_output(output: Path) -> None:
    if not output.parent.is_dir():
        raise InvalidOption(f"-o {output}: the directory {output.parent} does not exist")
    if output.exists() and not (output / _SUCCESS).exists():
        raise InvalidOption(
            f"-o {output} exists and is not the output of an earlier job: choose another path"
        )


def _publish(staging: Path, output: Path) -> None:
    """Put the new output in place; an earlier job's output there is replaced."""
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.mlimg-old-{secrets.token_hex(4)}"
        output.rename(old)
    staging.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _session(  # type: ignore[no-untyped-def]
    job: SparkJob, model: LocalModel, python: str, archive: Path | None, report
) -> Iterator[Callable[[], Any]]:
    """Spark's session for the job, its workers running `python` (shipped in `archive` when
    given). It starts in a thread: the function yielded waits for it and returns it."""
    from pyspark.sql import SparkSession

    conf = {
        "spark.app.name": f"mlimg predict {model.display_name}",
        "spark.master": job.master,
        "spark.pyspark.driver.python": sys.executable,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower(),
        # mlimg reports a failure itself, in one line; Spark's own log of it is Java stacks
        # (--conf spark.log.level=WARN brings them back).
        "spark.log.level": "OFF",
    }
    # The workers' interpreter: a session started from Python reads PYSPARK_PYTHON (the
    # spark.pyspark.python setting is spark-submit's).
    variables = {"PYSPARK_PYTHON": python}
    if job.master.startswith("local") or _on_loopback(job.master):
        # Everything on this machine: the driver listens on 127.0.0.1 only.
        variables["SPARK_LOCAL_IP"] = "127.0.0.1"
        conf |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
    if archive is not None:
        conf["spark.archives"] = f"{archive}#{_ENV_ARCHIVE}"
    conf |= dict(job.conf)
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    outcome: dict[str, Any] = {}

    def start() -> None:
        try:
            outcome["spark"] = builder.getOrCreate()
        except Exception as exc:  # py4j's and pyspark's errors share no useful base
            outcome["error"] = exc

    def started() -> Any:
        thread.join()
        if "error" in outcome:
            raise SparkJobFailed(f"Spark did not start: {_first_line(str(outcome['error']))}")
        return outcome["spark"]

    report(f"starting Spark ({job.master})")
    with _environment_variables(variables):
        thread = threading.Thread(target=start, name="mlimg-spark-start", daemon=True)
        thread.start()
        try:
            yield started
        finally:
            thread.join()
            if "spark" in outcome:
                outcome["spark"].stop()


def _on_loopback(master: str) -> bool:
    host = urlsplit(master).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


@contextlib.contextmanager
def _environment_variables(values: dict[str, str]) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _packed_environment(env: envs.ModelEnvironment, report: Callable[[str], None]) -> Path:
    """The model's environment as a tar.gz for executors, packed once and kept beside it."""
    if env.path is None:
        raise InvalidOption(
            "--env-manager local cannot be shipped to a cluster: use uv or virtualenv"
        )
    archive = env.path.with_name(env.path.name + ".venv.tar.gz")
    if not archive.exists():
        report(f"packing the model's environment for the executors into {archive}")
        partial = archive.with_name(f".{archive.name}.{secrets.token_hex(4)}")
        try:
            import venv_pack

            venv_pack.pack(prefix=str(env.path), output=str(partial), format="tar.gz")
            partial.rename(archive)
        finally:
            partial.unlink(missing_ok=True)
    return archive


def _model_zip(model: LocalModel, directory: Path) -> Path:
    """The model directory as a zip, for the executors (unpacked as ./model)."""
    target = directory / "model.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(model.path.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(model.path))
    return target


def _runtime_zip(directory: Path) -> Path:
    """mlimg_runtime as a zip for the executors' Python path."""
    target = directory / "mlimg_runtime.zip"
    with as_file(files("mlimg_runtime")) as source, zipfile.ZipFile(target, "w") as archive:
        for path in sorted(Path(source).rglob("*.py")):
            archive.write(path, Path("mlimg_runtime") / path.relative_to(source))
    return target
