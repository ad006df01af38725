"""`mlimg predict --runner spark` against single-process `mlimg predict` and MLflow's
`mlflow.pyfunc.spark_udf(env_manager="local")`, on the same rows, in one run.

    python benchmarks/spark_predict.py --rows 1000000 10000000 --rounds 3

For each ROWS, makes that many iris rows (Parquet for the Spark sides, CSV for single-process
`mlimg predict`) and scores them with the repository's example model. Each round runs the
three sides, in an order that rotates between rounds, and records each one's wall time
(Spark's start-up included), rows/s, and the peak memory of its Python driver, of Spark's JVM
and of the whole process tree; two sizes show whether the driver's memory grows with the
input. The model's environment is made before the first round, so no side pays for it.
Writes results/spark.{md,json} beside this file; the report compares medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "examples" / "iris" / "model"
SIDES = ("mlimg-spark", "mlimg-single", "mlflow-spark_udf")

SPARK_UDF_JOB = textwrap.dedent(
    """
    import sys
    import mlflow.pyfunc
    from pyspark.sql import SparkSession

    model, source, target = sys.argv[1:4]
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.log.level", "OFF")
        .getOrCreate()
    )
    predict = mlflow.pyfunc.spark_udf(spark, model, env_manager="local", result_type="long")
    frame = spark.read.parquet(source)
    columns = [c for c in frame.columns if c != "id"]
    frame.select("id", predict(*columns).alias("prediction")).write.parquet(target)
    spark.stop()
    """
)


def make_rows(rows: int, directory: Path) -> tuple[Path, Path]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_iris

    features = load_iris(as_frame=True).data
    parquet, csv = directory / "rows.parquet", directory / "rows.csv"
    writer = None
    chunk = 1_000_000
    with csv.open("w") as text:
        for start in range(0, rows, chunk):
            count = min(chunk, rows - start)
            part = features.sample(count, replace=True, random_state=start).reset_index(drop=True)
            part.insert(0, "id", range(start, start + count))
            table = pa.Table.from_pandas(part, preserve_index=False)
            writer = writer or pq.ParquetWriter(parquet, table.schema)
            writer.write_table(table)
            part.to_csv(text, index=False, header=start == 0)
    if writer is not None:
        writer.close()
    assert pd.read_parquet(parquet, columns=["id"]).shape[0] == rows
    return parquet, csv


class PeakMemory:
    """Peak resident memory of a process tree, sampled every 0.1 s from /proc: all of it, the
    Python driver (the process started) and Spark's JVM (in local mode it runs the tasks too).
    The rest is the model's processes: Spark's Python workers, or mlimg predict's runtime."""

    def __init__(self, pid: int) -> None:
        self.pid, self.total, self.driver, self.jvm = pid, 0, 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.is_set():
            total = jvm = 0
            for pid in _tree(self.pid):
                rss = _rss(pid)
                total += rss
                if _command(pid).split(" ", 1)[0].endswith("java"):
                    jvm += rss
            self.total, self.jvm = max(self.total, total), max(self.jvm, jvm)
            self.driver = max(self.driver, _rss(self.pid))
            time.sleep(0.1)


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def run_side(side: str, parquet: Path, csv: Path, out: Path, cache: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.with_suffix(".csv").unlink(missing_ok=True)
    mlimg = [sys.executable, "-m", "mlimg", "predict", "-m", str(MODEL)]
    if side == "mlimg-spark":
        command = [*mlimg, "-i", str(parquet), "-o", str(out), "--runner", "spark"]
        command += ["--master", "local[2]", "--keep-columns", "id"]
    elif side == "mlimg-single":
        command = [*mlimg, "-i", str(csv), "-o", str(out.with_suffix(".csv"))]
    else:
        command = [sys.executable, "-c", SPARK_UDF_JOB, str(MODEL), str(parquet), str(out)]
    env = {**os.environ, "MLIMG_CACHE_DIR": str(cache)}
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    memory = PeakMemory(process.pid)
    _, stderr = process.communicate()
    seconds = time.monotonic() - started
    memory.stop()
    if process.returncode != 0:
        raise SystemExit(f"{side} failed:\n{stderr.decode()[-3000:]}")
    return {
        "seconds": seconds,
        "peak_total": memory.total,
        "peak_driver": memory.driver,
        "peak_jvm": memory.jvm,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sections = []
    with tempfile.TemporaryDirectory(prefix="mlimg-spark-bench-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        for rows in args.rows:
            print(f"making {rows:,} rows", file=sys.stderr)
            parquet, csv = make_rows(rows, work)
            run_side("mlimg-single", parquet, csv, work / "warm-up", cache)  # the environment
            results: dict[str, list[dict]] = {side: [] for side in SIDES}
            for round_number in range(args.rounds):
                order = SIDES[round_number % 3 :] + SIDES[: round_number % 3]
                for side in order:
                    result = run_side(side, parquet, csv, work / f"out-{side}", cache)
                    results[side].append(result)
                    print(f"{rows:,} rows, round {round_number + 1}, {side}: "
                          f"{result['seconds']:.1f}s, peak {_mib(result['peak_total'])} "
                          f"(driver {_mib(result['peak_driver'])}, "
                          f"JVM {_mib(result['peak_jvm'])})", file=sys.stderr)  # fmt: skip
            sections.append((rows, results))
    report(sections, args.rounds)


def _mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB"


def report(sections: list[tuple[int, dict[str, list[dict]]]], rounds: int) -> None:
    lines = [
        f"`mlimg predict --runner spark` on local[2], single-process `mlimg predict`, and "
        f'`mlflow.pyfunc.spark_udf(env_manager="local")` on local[2]; medians of {rounds} '
        "rounds. Driver: the Python process started; JVM: Spark's (in local mode it runs the "
        "tasks too); tree: everything, the model's processes included.",
    ]
    saved = []
    for rows, results in sections:
        medians = {
            side: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            for side, runs in results.items()
        }
        spark = medians["mlimg-spark"]["seconds"]
        lines += [
            "",
            f"{rows:,} rows:",
            "",
            "| side | wall time | rows/s | vs mlimg-spark | peak memory: driver | JVM | tree |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for side, median in medians.items():
            lines.append(
                f"| {side} | {median['seconds']:.1f} s | {rows / median['seconds']:,.0f} | "
                f"{median['seconds'] / spark:.2f}x | {_mib(median['peak_driver'])} | "
                f"{_mib(median['peak_jvm']) if median['peak_jvm'] else '-'} | "
                f"{_mib(median['peak_total'])} |"
            )
        saved.append({"rows": rows, "results": results, "medians": medians})
    text = "\n".join(lines) + "\n"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "spark.md").write_text(text)
    (HERE / "results" / "spark.json").write_text(json.dumps(saved, indent=2))
    print(text)


if __name__ == "__main__":
    main()
