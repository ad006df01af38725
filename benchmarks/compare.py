"""mlimg against `mlflow models build-docker`, side by side on one machine, in one run.

    python benchmarks/compare.py                    # 3 rounds, the iris example model
    python benchmarks/compare.py --rounds 5 --duration 15 --update-readme

For each side, each round: a cold build (no layer cache), a rebuild after a model-only change,
the size added over the base image, the time from `docker run` to the first successful
/invocations, throughput and latency at 1 and 16 connections (wrk) and the container's peak
memory. Rounds alternate which side goes first; the report compares medians. Any non-2xx
answer or socket error under load, or predictions that differ between the two images, fails
the run. Writes results/latest.{md,json,png} beside this file.

With the serving engines (on unless --no-engines), two more sides are measured in the same
rounds: MLServer 1.7.1 as its documentation shows for an MLflow model (`pip install mlserver
mlserver-mlflow`, a model-settings.json naming `mlserver_mlflow.MLflowRuntime`, `mlserver
start`; uvloop held below 0.22, without which its workers die), and `mlimg build --engine
mlserver`; both are also loaded on the V2 infer path.

For mlimg, each round also times the lock and the SBOM step inside its cold build and its
model-only rebuild (from the time each line of its output arrives), fills a wheelhouse with
`mlimg wheels` (timed, sized) and makes a cold build from it with no network.

MLflow's image cannot be told to trust a proxy's CA, so its base is the same base image plus
the CA bundle and PIP_CERT (built here, tagged python:<tag>-mlimg-bench-ca); mlimg gets the
bundle through --ca-cert. MLflow's build has no --no-cache, so each round makes that base anew
(with a label of its own): nothing above it can come from the cache. Both builds are timed as
the whole command; mlimg's smoke test is skipped so that both do the same work, and timed
apart.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIDES = ("mlflow", "mlimg")
UPSTREAM_MLSERVER = "mlserver"  # MLServer as its documentation builds an MLflow model
MLIMG_MLSERVER = "mlimg-mlserver"  # mlimg build --engine mlserver
ENGINE_SIDES = (UPSTREAM_MLSERVER, MLIMG_MLSERVER)
V2_PATH = "/v2/models/model/infer"
MLSERVER_VERSION = "1.7.1"
MARKER_FILE = "benchmark-revision.txt"  # written into the model copy: a model-only change

# (key, label, unit, better, target ratio mlimg/MLflow or None)
METRICS = (
    ("cold_build_s", "Cold build (no cache)", "s", "lower", 0.5),
    ("rebuild_s", "Rebuild after a model-only change", "s", "lower", 0.3),
    ("size_added_mb", "Size added over the base image", "MB", "lower", 0.5),
    ("first_prediction_s", "docker run to first prediction", "s", "lower", 0.5),
    ("load_floor_s", "Floor: docker run to the model loaded, no server", "s", "lower", None),
    ("rps_c16", "Throughput, 16 connections", "req/s", "higher", 4.0),
    ("p50_c16_ms", "p50 latency, 16 connections", "ms", "lower", None),
    ("p99_c16_ms", "p99 latency, 16 connections", "ms", "lower", None),
    ("rps_c1", "Throughput, 1 connection", "req/s", "higher", None),
    ("p50_c1_ms", "p50 latency, 1 connection", "ms", "lower", 0.4),
    ("p99_c1_ms", "p99 latency, 1 connection", "ms", "lower", None),
    ("peak_memory_mb", "Container peak memory", "MB", "lower", None),
)
# The V2 infer path, for the MLServer sides.
V2_METRICS = (
    ("rps_v2_c16", "V2 infer throughput, 16 connections", "req/s", "higher", None),
    ("p50_v2_c16_ms", "V2 infer p50, 16 connections", "ms", "lower", None),
    ("p99_v2_c16_ms", "V2 infer p99, 16 connections", "ms", "lower", None),
    ("rps_v2_c1", "V2 infer throughput, 1 connection", "req/s", "higher", None),
    ("p50_v2_c1_ms", "V2 infer p50, 1 connection", "ms", "lower", None),
    ("p99_v2_c1_ms", "V2 infer p99, 1 connection", "ms", "lower", None),
)
ALL_METRICS = METRICS + V2_METRICS
# The supply chain, mlimg's side only: locks, the SBOM and builds from a wheelhouse.
# (key, label, unit)
SUPPLY_METRICS = (
    ("offline_cold_build_s", "Cold build offline, from a wheelhouse (no network)", "s"),
    ("wheels_s", "Filling the wheelhouse (`mlimg wheels`)", "s"),
    ("wheelhouse_mb", "Wheelhouse size", "MB"),
    ("lock_cold_s", "Locking, in the cold build", "s"),
    ("sbom_cold_s", "SBOM step, in the cold build", "s"),
    ("lock_rebuild_s", "Locking, in the model-only rebuild", "s"),
    ("sbom_rebuild_s", "SBOM step, in the model-only rebuild", "s"),
)
OFFLINE = "mlimg-offline"  # the image built from the wheelhouse (its tag)
# The engines table: (key, the side held to a goal, the side it is held against, goal ratio).
ENGINE_GOALS = (
    ("rps_c16", "mlimg", UPSTREAM_MLSERVER, 1.0),
    ("p50_c16_ms", "mlimg", UPSTREAM_MLSERVER, 1.0),
    ("rps_c1", "mlimg", UPSTREAM_MLSERVER, 1.0),
    ("p50_c1_ms", "mlimg", UPSTREAM_MLSERVER, 1.0),
    ("rps_c16", MLIMG_MLSERVER, UPSTREAM_MLSERVER, 1.0),
    ("rps_c1", MLIMG_MLSERVER, UPSTREAM_MLSERVER, 1.0),
    ("rps_v2_c16", MLIMG_MLSERVER, UPSTREAM_MLSERVER, 1.0),
    ("rps_v2_c1", MLIMG_MLSERVER, UPSTREAM_MLSERVER, 1.0),
    ("size_added_mb", MLIMG_MLSERVER, UPSTREAM_MLSERVER, 1.0),
)
SIDE_NAMES = {
    "mlflow": "MLflow build-docker",
    "mlimg": "mlimg",
    UPSTREAM_MLSERVER: "MLServer (upstream)",
    MLIMG_MLSERVER: "mlimg --engine mlserver",
    "baseline": "baseline runtime",
}


# The serving figures measured for a baseline runtime too (--baseline-runtime REV): the same
# image with only mlimg_runtime replaced by the one at REV. (key, target ratio new/baseline)
BASELINE_METRICS = (
    ("first_prediction_s", None),
    ("rps_c16", 0.9),
    ("p50_c16_ms", 1.1),
    ("p99_c16_ms", None),
    ("rps_c1", 0.9),
    ("p50_c1_ms", 1.1),
    ("p99_c1_ms", None),
    ("peak_memory_mb", None),
)
BASELINE = "baseline"


class BenchmarkFailed(Exception):
    """The run cannot give a fair comparison: a build failed, an answer was wrong, ..."""


class ContainerExited(BenchmarkFailed):
    """A container stopped before its first prediction (MLflow's nginx sometimes does)."""


# ---- pure parts: parsing wrk, summarizing, reporting --------------------------------------


@dataclass(frozen=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers plus socket errors


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> LoadResult:
    """The figures of `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    if not (rps and p50 and p99 and total):
        raise BenchmarkFailed(f"could not read wrk's output:\n{output}")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    return LoadResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=float(p50.group(1)) * _UNITS_MS[p50.group(2)],
        p99_ms=float(p99.group(1)) * _UNITS_MS[p99.group(2)],
        requests=int(total.group(1)),
        errors=errors,
    )


def summarize(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per side and metric, the median over the rounds."""
    sides = [side for side in (*SIDES, *ENGINE_SIDES, BASELINE) if any(side in r for r in rounds)]
    summary: dict[str, dict[str, float]] = {side: {} for side in sides}
    for side in sides:
        for key, *_ in (*ALL_METRICS, *SUPPLY_METRICS):
            values = [r[side][key] for r in rounds if key in r.get(side, {})]
            if values:
                summary[side][key] = statistics.median(values)
    return summary


def ratio_row(key: str, summary: dict[str, dict[str, float]]) -> tuple[float | None, str]:
    """mlimg/MLflow for one metric, and whether it meets its target."""
    _, _, _, better, target = next(m for m in METRICS if m[0] == key)
    theirs, ours = summary["mlflow"].get(key), summary["mlimg"].get(key)
    if not theirs or ours is None:
        return None, "n/a"
    ratio = ours / theirs
    return ratio, verdict(ratio, better, target)


def verdict(ratio: float, better: str, target: float | None) -> str:
    """Whether `ratio` meets its `target` ("" when there is none), `better` "higher" or not."""
    if target is None:
        return ""
    met = ratio >= target if better == "higher" else ratio <= target
    sign = "≥" if better == "higher" else "≤"
    return f"{sign} {target:g}x: {'met' if met else 'MISSED'}"


def markdown_table(summary: dict[str, dict[str, float]], rounds: int, note: str) -> str:
    lines = [
        f"Medians of {rounds} rounds, {note}.",
        "",
        "| Measure | MLflow build-docker | mlimg | mlimg / MLflow | Target |",
        "|---|---:|---:|---:|---|",
    ]
    for key, label, unit, _, _ in METRICS:
        theirs, ours = summary["mlflow"].get(key), summary["mlimg"].get(key)
        if theirs is None or ours is None:
            continue
        ratio, verdict = ratio_row(key, summary)
        ratio_text = f"{ratio:.2f}x" if ratio is not None else "n/a"
        lines.append(
            f"| {label} | {_fmt(theirs)} {unit} | {_fmt(ours)} {unit} | {ratio_text} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def baseline_table(summary: dict[str, dict[str, float]], revision: str) -> str:
    """mlimg's serving figures against the same image with the runtime of `revision`."""
    if BASELINE not in summary:
        return ""
    lines = [
        f"\nThe same mlimg image with the runtime of `{revision}` swapped in, measured in the same "
        "rounds (a change may cost at most 10 % of throughput or p50):",
        "",
        f"| Measure | runtime at {revision} | this runtime | ratio | Target |",
        "|---|---:|---:|---:|---|",
    ]
    labels = {key: (label, unit, better) for key, label, unit, better, _ in METRICS}
    for key, target in BASELINE_METRICS:
        before, after = summary[BASELINE].get(key), summary["mlimg"].get(key)
        if not before or after is None:
            continue
        label, unit, better = labels[key]
        ratio = after / before
        verdict = ""
        if target is not None:
            met = ratio >= target if better == "higher" else ratio <= target
            verdict = (
                f"{'≥' if better == 'higher' else '≤'} {target:g}x: {'met' if met else 'MISSED'}"
            )
        lines.append(
            f"| {label} | {_fmt(before)} {unit} | {_fmt(after)} {unit} | {ratio:.2f}x | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def engines_table(summary: dict[str, dict[str, float]]) -> str:
    """The serving engines side by side: MLServer as upstream builds it, mlimg's MLServer
    engine and mlimg's own, on /invocations and on V2 infer, with the goals judged."""
    sides = [side for side in (UPSTREAM_MLSERVER, MLIMG_MLSERVER, "mlimg") if side in summary]
    if UPSTREAM_MLSERVER not in sides:
        return ""
    lines = [
        "\nServing engines, same model, same base, same rounds (`/invocations` unless the row "
        "says V2):",
        "",
        "| Measure | " + " | ".join(SIDE_NAMES[side] for side in sides) + " |",
        "|---|" + "---:|" * len(sides),
    ]
    for key, label, unit, _, _ in ALL_METRICS:
        values = [summary[side].get(key) for side in sides]
        if key == "load_floor_s" or all(value is None for value in values):
            continue
        cells = [f"{_fmt(value)} {unit}" if value is not None else "n/a" for value in values]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| Goal | ratio | verdict |", "|---|---:|---|"]
    better = {key: way for key, _, _, way, _ in ALL_METRICS}
    labels = {key: label for key, label, *_ in ALL_METRICS}
    for key, side, against, goal in ENGINE_GOALS:
        ours, theirs = summary.get(side, {}).get(key), summary.get(against, {}).get(key)
        if ours is None or not theirs:
            continue
        ratio = ours / theirs
        higher = better[key] == "higher"
        met = ratio >= goal if higher else ratio <= goal
        sign = "≥" if higher else "≤"
        lines.append(
            f"| {labels[key]}: {SIDE_NAMES[side]} / {SIDE_NAMES[against]} {sign} {goal:g}x "
            f"| {ratio:.2f}x | {'met' if met else 'MISSED'} |"
        )
    return "\n".join(lines) + "\n"


def supply_table(summary: dict[str, dict[str, float]]) -> str:
    """What locking, the SBOM and an offline build cost mlimg, in the same rounds."""
    ours = summary.get("mlimg", {})
    if "offline_cold_build_s" not in ours or "cold_build_s" not in ours:
        return ""
    lines = [
        "\nLocks, the SBOM and offline builds (mlimg, same rounds; the lock and the SBOM are "
        "in every build above):",
        "",
        "| Measure | mlimg |",
        "|---|---:|",
        f"| Cold build online (from the table above) | {_fmt(ours['cold_build_s'])} s |",
    ]
    for key, label, unit in SUPPLY_METRICS:
        if key in ours:
            lines.append(f"| {label} | {_fmt(ours[key])} {unit} |")
    offline = ours["offline_cold_build_s"] / ours["cold_build_s"]
    lines += ["", f"An offline cold build took {offline:.2f}x the online one."]
    added = ours.get("lock_cold_s", 0) + ours.get("sbom_cold_s", 0)
    lines.append(
        f"Locking and the SBOM were {added:.1f} s of the cold build "
        f"({added / ours['cold_build_s']:.0%})"
        + (
            f" and {ours['lock_rebuild_s'] + ours['sbom_rebuild_s']:.1f} s of the model-only "
            f"rebuild ({_fmt(ours['rebuild_s'])} s)."
            if {"lock_rebuild_s", "sbom_rebuild_s", "rebuild_s"} <= ours.keys()
            else "."
        )
    )
    return "\n".join(lines) + "\n"


def build_phases(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds of the lock and of the SBOM step in one `mlimg build`, from its output lines
    with the time each was read: each phase lasts until the next line."""
    found: dict[str, float] = {}
    starts = {"lock": "locking the model's environment", "sbom": "/tmp/mlimg/sbom-tool"}
    for index, (at, line) in enumerate(lines[:-1]):
        for phase, sign in starts.items():
            if sign in line and phase not in found:
                found[phase] = lines[index + 1][0] - at
    return found


def startup_note(summary: dict[str, dict[str, float]]) -> str:
    """How far each side's first prediction lies above the floor (docker run to the model
    loaded, no server), and the ratio a server that added nothing to the floor would reach."""
    try:
        first = {side: summary[side]["first_prediction_s"] for side in SIDES}
        floor = {side: summary[side]["load_floor_s"] for side in SIDES}
    except KeyError:
        return ""
    return (
        f"\nThe floor is `docker run` of the image's Python doing nothing but import mlflow and "
        f"load the model, with the collector off. Above it, MLflow's server added "
        f"{first['mlflow'] - floor['mlflow']:.2f} s to the first prediction and mlimg's "
        f"{first['mlimg'] - floor['mlimg']:.2f} s. A server that added nothing to mlimg's floor "
        f"would reach {floor['mlimg'] / first['mlflow']:.2f}x.\n"
    )


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def replace_section(text: str, section: str, begin: str, end: str) -> str:
    """`text` with what lies between the markers `begin` and `end` replaced by `section`."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise BenchmarkFailed(f"the markers {begin!r} and {end!r} are not in the README")
    return text[: start + len(begin)] + "\n" + section + text[stop:]


# ---- the engine side ----------------------------------------------------------------------


@dataclass
class Setup:
    client: object
    model: Path
    base_image: str
    mlflow_base: str
    ca_cert: Path
    work: Path
    duration: int
    log: io.TextIOBase
    payload: bytes  # the one-row request of the load
    check_payloads: list[bytes]  # requests whose answers must match between the sides
    wrk_script: Path  # wrk's script, posting `payload`
    v2_payload: bytes  # the same row as a V2 infer request
    v2_script: Path  # wrk's script, posting `v2_payload`
    sides: tuple[str, ...]  # the sides measured, in the first round's order


def tag(side: str) -> str:
    return f"mlimg-bench/{side}:latest"


def prepare(args: argparse.Namespace, work: Path, log: io.TextIOBase) -> Setup:
    import docker
    from docker.errors import DockerException, ImageNotFound

    if shutil.which("wrk") is None:
        raise BenchmarkFailed("wrk is not on PATH: apt-get install wrk")
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        raise BenchmarkFailed(f"no Docker engine: {exc}") from None
    try:
        client.images.get(args.base_image)
    except ImageNotFound:
        raise BenchmarkFailed(f"the base image {args.base_image} is not present") from None
    payload, check_payloads = payloads(Path(args.model))
    v2 = v2_payload(payload)
    sides = SIDES if args.no_engines else (*SIDES, *ENGINE_SIDES)
    return Setup(client, Path(args.model), args.base_image, f"{args.base_image}-mlimg-bench-ca",
                 Path(args.ca_cert), work, args.duration, log, payload, check_payloads,
                 wrk_script(work / "post.lua", payload), v2, wrk_script(work / "v2.lua", v2),
                 sides)  # fmt: skip


def wrk_script(path: Path, body: bytes) -> Path:
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    return path


def v2_payload(payload: bytes) -> bytes:
    """The rows of a `dataframe_split` request as a V2 infer request: one input per column."""
    split = json.loads(payload)["dataframe_split"]
    kinds = {float: "FP64", int: "INT64", str: "BYTES", bool: "BOOL"}
    inputs = []
    for index, name in enumerate(split["columns"]):
        column = [row[index] for row in split["data"]]
        kind = kinds[type(column[0])]
        inputs.append({"name": name, "datatype": kind, "shape": [len(column), 1], "data": column})
    return json.dumps({"inputs": inputs}).encode()


def fresh_mlflow_base(setup: Setup) -> None:
    """The base image plus the CA, with a new label: a build on it starts with no cache."""
    context = setup.work / "mlflow-base"
    context.mkdir(exist_ok=True)
    shutil.copyfile(setup.ca_cert, context / "ca.pem")
    (context / "Dockerfile").write_text(
        f"FROM {setup.base_image}\n"
        "COPY ca.pem /etc/mlimg-bench/ca.pem\n"
        "ENV PIP_CERT=/etc/mlimg-bench/ca.pem\n"
        f"LABEL mlimg.bench.cold={uuid.uuid4().hex}\n"
    )
    setup.client.images.build(path=str(context), tag=setup.mlflow_base, rm=True)


def payloads(model: Path) -> tuple[bytes, list[bytes]]:
    """A one-row request for the load, and requests whose answers must match between sides."""
    example = json.loads((model / "serving_input_example.json").read_text())
    checks = [json.dumps(example).encode()]
    split = example.get("dataframe_split")
    if not split:
        return checks[0], checks
    one_row = {"dataframe_split": {"columns": split["columns"], "data": split["data"][:1]}}
    many = {"dataframe_split": {"columns": split["columns"], "data": split["data"] * 200}}
    records = [dict(zip(split["columns"], row, strict=True)) for row in split["data"]]
    checks += [json.dumps(many).encode(), json.dumps({"dataframe_records": records}).encode()]
    return json.dumps(one_row).encode(), checks


def model_copy(setup: Setup, revision: str) -> Path:
    """The model with one file changed: what retraining does to a build context."""
    dest = setup.work / "model"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(setup.model, dest)
    (dest / MARKER_FILE).write_text(revision + "\n")
    return dest


def remove_image(setup: Setup, image: str) -> None:
    """Remove an image by tag or id, and the layers only it used."""
    from docker.errors import APIError, ImageNotFound

    with contextlib.suppress(ImageNotFound, APIError):
        setup.client.images.remove(image, force=True)


def image_id(setup: Setup, side: str) -> str:
    return setup.client.images.get(tag(side)).id


def upstream_mlserver_context(setup: Setup, model: Path) -> Path:
    """A build context for MLServer serving the model as its documentation shows: mlserver and
    mlserver-mlflow (with its full-mlflow dependency) and the model's requirements installed
    with pip, a model-settings.json naming the MLflow runtime, `mlserver start`."""
    context = setup.work / "upstream-mlserver"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    shutil.copytree(model, context / "model")
    shutil.copyfile(model / "requirements.txt", context / "requirements.txt")
    settings = {"name": "model", "implementation": "mlserver_mlflow.MLflowRuntime",
                "parameters": {"uri": "/opt/ml/model"}}  # fmt: skip
    (context / "model-settings.json").write_text(json.dumps(settings))
    (context / "Dockerfile").write_text(
        f"FROM {setup.mlflow_base}\n"
        f"RUN pip install --no-cache-dir mlserver=={MLSERVER_VERSION} "
        f"mlserver-mlflow=={MLSERVER_VERSION} 'uvloop<0.22'\n"
        "COPY requirements.txt /tmp/requirements.txt\n"
        "RUN pip install --no-cache-dir -r /tmp/requirements.txt\n"
        "COPY model-settings.json /opt/mlserver/model-settings.json\n"
        "COPY model /opt/ml/model\n"
        "EXPOSE 8080\n"
        'CMD ["mlserver", "start", "/opt/mlserver"]\n'
    )
    return context


def build_upstream_mlserver(setup: Setup, model: Path, no_cache: bool) -> None:
    from docker.errors import BuildError

    context = upstream_mlserver_context(setup, model)
    try:
        setup.client.images.build(path=str(context), tag=tag(UPSTREAM_MLSERVER), rm=True,
                                  nocache=no_cache, pull=False)  # fmt: skip
    except BuildError as exc:
        for line in exc.build_log:
            setup.log.write(str(line.get("stream", line)))
        raise BenchmarkFailed(f"the upstream MLServer build failed; see {setup.log.name}") from None


def build(
    setup: Setup,
    side: str,
    model: Path,
    no_cache: bool,
    smoke_test: bool = False,
    phases: dict[str, float] | None = None,
    wheelhouse: Path | None = None,
) -> float:
    """Seconds for the side's whole build command; mlimg's smoke test only when asked (it is
    timed apart: MLflow tests nothing). For mlimg, `phases` gets the lock's and the SBOM
    step's seconds (build_phases); `wheelhouse` builds offline from it."""
    if side == UPSTREAM_MLSERVER:
        started = time.monotonic()
        build_upstream_mlserver(setup, model, no_cache)
        return time.monotonic() - started
    if side == "mlflow":
        # MLflow builds from whatever cache the engine has; a cold build follows remove_image.
        code = (
            "import sys, mlflow.models; mlflow.models.build_docker(model_uri=sys.argv[1], "
            "name=sys.argv[2], env_manager='local', base_image=sys.argv[3])"
        )
        command = [sys.executable, "-c", code, str(model), tag(side), setup.mlflow_base]
    else:
        built = tag(side if wheelhouse is None else OFFLINE)
        command = ["mlimg", "build", "-m", str(model), "-t", built, "--base-image",
                   setup.base_image]  # fmt: skip
        if wheelhouse is None:
            command += ["--ca-cert", str(setup.ca_cert)]
        else:  # nothing is downloaded: no CA, no index, no network
            command += ["--wheelhouse", str(wheelhouse)]
        if side == MLIMG_MLSERVER:
            command += ["--engine", "mlserver"]
        if not smoke_test:
            command.append("--no-smoke-test")
        if no_cache:
            command.append("--no-cache")
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=setup.work, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append((time.monotonic(), line))
            setup.log.write(line)
    seconds = time.monotonic() - started
    if phases is not None:
        phases.update(build_phases(lines))
    if process.returncode != 0:
        what = f"{side} build with its smoke test" if smoke_test else f"{side} build"
        raise BenchmarkFailed(f"the {what} failed; see {setup.log.name}")
    return seconds


def size_added_mb(setup: Setup, side: str) -> float:
    base = setup.mlflow_base if side in ("mlflow", UPSTREAM_MLSERVER) else setup.base_image
    size = setup.client.images.get(tag(side)).attrs["Size"]
    return (size - setup.client.images.get(base).attrs["Size"]) / 1e6


def post(url: str, body: bytes, timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        # Not answering yet; a port proxy that accepted before the server listens may even
        # hand back garbage as a status line.
        return 0, b""


# How the benchmark's containers run: port published on 127.0.0.1 only, labelled for removal.
RUN_OPTIONS = {"ports": {"8080/tcp": ("127.0.0.1", None)}, "labels": {"mlimg.bench": "1"}}


class Container:
    """One container of a side's image, its port published on 127.0.0.1 only."""

    def __init__(self, setup: Setup, image: str):
        self.setup = setup
        self.started = time.monotonic()
        self.container = setup.client.containers.run(image, detach=True, **RUN_OPTIONS)
        self.url = ""
        self.first = 0.0  # seconds from docker run to the first prediction

    def first_prediction(self, timeout: float = 120) -> float:
        """Seconds from `docker run` to the first 200 from /invocations."""
        while time.monotonic() - self.started < timeout:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                raise ContainerExited(f"the container exited; logs:\n{self.logs()}")
            if not self.url:
                bindings = self.container.ports.get("8080/tcp")
                if bindings:
                    self.url = f"http://127.0.0.1:{bindings[0]['HostPort']}"
            if self.url and post(f"{self.url}/invocations", self.setup.payload, 2)[0] == 200:
                return time.monotonic() - self.started
            time.sleep(0.02)
        raise BenchmarkFailed(f"no prediction within {timeout:.0f}s; logs:\n{self.logs()}")

    def logs(self) -> str:
        return self.container.logs(tail=30).decode(errors="replace")

    def peak_memory_mb(self) -> float | None:
        stats = self.container.stats(stream=False).get("memory_stats", {})
        peak = stats.get("max_usage") or stats.get("usage")  # cgroup v2 keeps no maximum
        return peak / 1e6 if peak else None

    def remove(self) -> None:
        self.container.remove(force=True)


def load(
    url: str, script: Path, connections: int, seconds: int, path: str = "/invocations"
) -> LoadResult:
    threads = str(min(connections, 2))
    command = ["wrk", "-t", threads, "-c", str(connections), "-d", f"{seconds}s", "--latency",
               "-s", str(script), f"{url}{path}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise BenchmarkFailed(f"wrk failed: {result.stderr}")
    return parse_wrk(result.stdout)


LOAD_CODE = (
    "import gc, time; gc.disable(); import mlflow.pyfunc; "
    "mlflow.pyfunc.load_model('/opt/ml/model'); print(time.time())"
)


def load_floor_s(setup: Setup, side: str) -> float:
    """Seconds from `docker run` to the model loaded, by the image's own Python with nothing
    else to do (and the collector off): what any server that loads the model through
    mlflow.pyfunc spends before it can predict. The container is started as for the first
    prediction (port published); its clock is the host's."""
    started = time.time()
    container = setup.client.containers.run(
        tag(side), ["-c", LOAD_CODE], entrypoint="python", detach=True, **RUN_OPTIONS
    )
    try:
        exit_code = container.wait(timeout=120)["StatusCode"]
        output = container.logs(stdout=True, stderr=False).decode().split()
    finally:
        container.remove(force=True)
    if exit_code != 0 or not output:
        raise BenchmarkFailed(f"{side}: loading the model alone failed (exit {exit_code})")
    return float(output[-1]) - started


def measure_side(
    setup: Setup,
    side: str,
    starts: int,
    baseline: str | None = None,
    baseline_first: bool = False,
) -> tuple[dict, list, dict | None]:
    """A side's figures, its answers to the check requests and, for mlimg with a `baseline`
    revision, the figures of its image with that revision's runtime (served in turn)."""
    figures: dict[str, float] = {}
    if side == "mlflow":
        fresh_mlflow_base(setup)  # first, so that the old base goes with the old image
    remove_image(setup, tag(side))
    run = uuid.uuid4().hex[:8]  # no revision of the model is ever in the cache already
    cold_phases: dict[str, float] = {}
    figures["cold_build_s"] = build(
        setup, side, model_copy(setup, f"{run}-cold"), True, phases=cold_phases
    )
    cold = image_id(setup, side)
    rebuilt_phases: dict[str, float] = {}
    figures["rebuild_s"] = build(
        setup, side, model_copy(setup, f"{run}-rebuild"), False, phases=rebuilt_phases
    )
    remove_image(setup, cold)  # superseded: only its own layers go, the cache stays
    if side == "mlimg":
        figures["lock_cold_s"] = cold_phases.get("lock", 0.0)
        figures["sbom_cold_s"] = cold_phases.get("sbom", 0.0)
        figures["lock_rebuild_s"] = rebuilt_phases.get("lock", 0.0)
        figures["sbom_rebuild_s"] = rebuilt_phases.get("sbom", 0.0)
        rebuilt = image_id(setup, side)
        smoked = model_copy(setup, f"{run}-smoke")
        figures["smoke_rebuild_s"] = build(setup, side, smoked, False, smoke_test=True)
        remove_image(setup, rebuilt)
        figures.update(offline_figures(setup, model_copy(setup, f"{run}-offline")))
    figures["size_added_mb"] = size_added_mb(setup, side)
    figures["load_floor_s"] = statistics.median(load_floor_s(setup, side) for _ in range(starts))
    if side == "mlimg" and baseline is not None:
        build_baseline(setup, baseline)
        order = [tag(BASELINE), tag(side)] if baseline_first else [tag(side), tag(BASELINE)]
        served = {image: serving_figures(setup, image, starts) for image in order}
        figures.update(served[tag(side)][0])
        return figures, served[tag(side)][1], served[tag(BASELINE)][0]
    serving, answers = serving_figures(setup, tag(side), starts, v2=side in ENGINE_SIDES)
    figures.update(serving)
    return figures, answers, None


def offline_figures(setup: Setup, model: Path) -> dict[str, float]:
    """`mlimg wheels` for the model (timed, sized), then a cold build from it with no network;
    the offline image is removed after (its layers with it: nothing else shares them)."""
    wheelhouse = setup.work / "wheelhouse"
    shutil.rmtree(wheelhouse, ignore_errors=True)
    command = ["mlimg", "wheels", "-m", str(model), "-d", str(wheelhouse), "--ca-cert",
               str(setup.ca_cert)]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, stdout=setup.log, stderr=subprocess.STDOUT, cwd=setup.work)
    figures = {"wheels_s": time.monotonic() - started}
    if result.returncode != 0:
        raise BenchmarkFailed(f"mlimg wheels failed; see {setup.log.name}")
    figures["wheelhouse_mb"] = sum(p.stat().st_size for p in wheelhouse.iterdir()) / 1e6
    figures["offline_cold_build_s"] = build(setup, "mlimg", model, True, wheelhouse=wheelhouse)
    remove_image(setup, tag(OFFLINE))
    return figures


def serving_figures(setup: Setup, image: str, starts: int, v2: bool = False) -> tuple[dict, list]:
    """First prediction (median of `starts`), load at 1 and 16 connections (and on V2 infer,
    with `v2`), peak memory, and the answers to the check requests (the V2 one last)."""
    figures: dict[str, float] = {}
    firsts = []
    for _ in range(starts):
        container = started(setup, image)
        firsts.append(container.first)
        container.remove()
    figures["first_prediction_s"] = statistics.median(firsts)
    container = started(setup, image)
    try:
        answers = [post(f"{container.url}/invocations", body) for body in setup.check_payloads]
        paths = [("", "/invocations", setup.wrk_script)]
        if v2:
            answers.append(post(f"{container.url}{V2_PATH}", setup.v2_payload))
            paths.append(("v2_", V2_PATH, setup.v2_script))
        for prefix, path, script in paths:
            load(container.url, script, 16, 2, path)  # warm-up, not counted
            for connections in (1, 16):
                result = load(container.url, script, connections, setup.duration, path)
                if result.errors:
                    raise BenchmarkFailed(
                        f"{image}: {result.errors} errors under load on {path} at "
                        f"{connections} connection(s)"
                    )
                figures[f"rps_{prefix}c{connections}"] = result.requests_per_s
                figures[f"p50_{prefix}c{connections}_ms"] = result.p50_ms
                figures[f"p99_{prefix}c{connections}_ms"] = result.p99_ms
        memory = container.peak_memory_mb()
        if memory is not None:
            figures["peak_memory_mb"] = memory
    finally:
        container.remove()
    return figures, answers


def started(setup: Setup, image: str, attempts: int = 3) -> Container:
    """A container of `image` that has predicted once (its time in `.first`); a start whose
    container exits first is tried again, and said so."""
    for attempt in range(1, attempts + 1):
        container = Container(setup, image)
        try:
            container.first = container.first_prediction()
            return container
        except ContainerExited as exc:
            container.remove()
            print(f"  {image}: start {attempt} of {attempts} failed: {exc}", flush=True)
            if attempt == attempts:
                raise
        except BaseException:
            container.remove()
            raise
    raise AssertionError("unreachable")


def build_baseline(setup: Setup, revision: str) -> None:
    """mlimg's image of this round with mlimg_runtime replaced by the one at `revision`."""
    remove_image(setup, tag(BASELINE))  # last round's
    context = setup.work / "baseline"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, "runtime"],
        capture_output=True,
    )
    if archive.returncode != 0:
        raise BenchmarkFailed(f"git archive {revision}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(context)], input=archive.stdout, check=True)
    (context / "Dockerfile").write_text(
        f"FROM {tag('mlimg')}\n"
        "USER 0\n"
        "RUN rm -rf /opt/mlimg/mlimg_runtime\n"
        "COPY runtime /opt/mlimg/mlimg_runtime\n"
        "RUN python -m compileall -q /opt/mlimg\n"
        "USER 10001:10001\n"
    )
    setup.client.images.build(path=str(context), tag=tag(BASELINE), rm=True)


def same_predictions(answers: dict[str, list[tuple[int, bytes]]]) -> None:
    """Every side's answers to the check requests equal MLflow's; the MLServer sides' V2
    answers (their last) carry the same output data."""
    reference = answers["mlflow"]
    for side, answered in answers.items():
        v2 = answered[len(reference) :]
        for index, (theirs, ours) in enumerate(zip(reference, answered, strict=False)):
            if theirs[0] != 200 or ours[0] != 200:
                raise BenchmarkFailed(
                    f"check request {index}: status {theirs[0]} vs {side} {ours[0]}"
                )
            if json.loads(theirs[1]) != json.loads(ours[1]):
                raise BenchmarkFailed(
                    f"check request {index}: {side}'s predictions differ:\n{theirs[1][:300]!r}\n"
                    f"{ours[1][:300]!r}"
                )
        for status, body in v2:
            if status != 200:
                raise BenchmarkFailed(f"{side}: V2 infer answered {status}: {body[:300]!r}")
    outputs = [
        [output["data"] for output in json.loads(answered[-1][1])["outputs"]]
        for side, answered in answers.items()
        if side in ENGINE_SIDES
    ]
    if any(output != outputs[0] for output in outputs):
        raise BenchmarkFailed(f"the V2 outputs differ between the MLServer sides: {outputs}")


def chart(summary: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [side for side in (*SIDES, *ENGINE_SIDES) if side in summary]
    keys = [m for m in ALL_METRICS if any(m[0] in summary[side] for side in sides)]
    columns = 4
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    colours = {"mlflow": "#8c8c8c", "mlimg": "#1f77b4", UPSTREAM_MLSERVER: "#d8b365",
               MLIMG_MLSERVER: "#5ab4ac"}  # fmt: skip
    short = {"mlflow": "MLflow", "mlimg": "mlimg", UPSTREAM_MLSERVER: "MLServer",
             MLIMG_MLSERVER: "mlimg\n+MLServer"}  # fmt: skip
    for axis in axes.flat[len(keys) :]:
        axis.set_visible(False)
    for axis, (key, label, unit, better, target) in zip(axes.flat, keys, strict=False):
        shown = [side for side in sides if key in summary[side]]
        axis.bar(
            [short[side] for side in shown],
            [summary[side][key] for side in shown],
            color=[colours[side] for side in shown],
        )
        title = f"{label}\n{unit}, {better} is better"
        if key in summary["mlflow"] and key in summary["mlimg"]:
            goal = f", target {'≥' if better == 'higher' else '≤'} {target:g}x" if target else ""
            title += f": mlimg {summary['mlimg'][key] / summary['mlflow'][key]:.2f}x{goal}"
        axis.set_title(title, fontsize=7)
        axis.tick_params(labelsize=7)
    fig.suptitle(
        "mlimg vs mlflow models build-docker and MLServer (medians of alternating rounds)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "examples" / "iris" / "model"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    parser.add_argument("--starts", type=int, default=2, help="container starts per round")
    parser.add_argument("--base-image", default="python:3.11-slim")
    parser.add_argument(
        "--ca-cert", default=os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument(
        "--no-engines",
        action="store_true",
        help="measure MLflow and mlimg only, not the two MLServer sides",
    )
    parser.add_argument(
        "--baseline-runtime",
        metavar="REV",
        help="also serve mlimg's image with the runtime of git revision REV swapped in",
    )
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds: list[dict] = []
    with (
        tempfile.TemporaryDirectory(prefix="mlimg-bench-") as tmp,
        open(out / "build.log", "w") as log,
    ):
        try:
            setup = prepare(args, Path(tmp), log)
            for round_no in range(args.rounds):
                order = setup.sides if round_no % 2 == 0 else tuple(reversed(setup.sides))
                figures, answers = {}, {}
                for side in order:
                    print(f"round {round_no + 1}/{args.rounds}: {side}", flush=True)
                    figures[side], answers[side], baseline = measure_side(
                        setup, side, args.starts, args.baseline_runtime, round_no % 2 == 1
                    )
                    print(f"  {json.dumps(figures[side])}", flush=True)
                    if baseline is not None:
                        figures[BASELINE] = baseline
                        print(f"  baseline: {json.dumps(baseline)}", flush=True)
                same_predictions(answers)
                rounds.append(figures)
        except BenchmarkFailed as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        finally:
            remove_containers()
    summary = summarize(rounds)
    note = (
        f"one run on one {os.cpu_count()}-CPU machine, {time.strftime('%Y-%m-%d')}; "
        "predictions identical on every check request"
    )
    table = markdown_table(summary, len(rounds), note)
    smoke = statistics.median(r["mlimg"]["smoke_rebuild_s"] for r in rounds)
    table += (
        f"\nmlimg's rebuild is timed with `--no-smoke-test`, as MLflow tests nothing; "
        f"`mlimg build` with its smoke test took {smoke:.1f} s (median).\n"
    ) + startup_note(summary)
    table += supply_table(summary)
    table += engines_table(summary)
    table += baseline_table(summary, args.baseline_runtime or "")
    chart(summary, out / "latest.png")
    publish(out / "latest", table, rounds, summary, "benchmark" if args.update_readme else None)
    return 0


def publish(
    stem: Path, table: str, rounds: list, summary: dict, section: str | None = None
) -> None:
    """The report as STEM.md, the figures as STEM.json, the table printed; with `section`, also
    the README's part between `<!-- SECTION:begin -->` and `<!-- SECTION:end -->`."""
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(
        json.dumps({"rounds": rounds, "median": summary}, indent=2)
    )
    print(table)
    if section is not None:
        readme = REPO / "README.md"
        begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
        readme.write_text(replace_section(readme.read_text(), table, begin, end))


def remove_containers() -> None:
    """The benchmark's containers go; its images stay for inspection (fixed tags)."""
    import docker
    from docker.errors import DockerException

    with contextlib.suppress(DockerException):  # cleanup must not hide the run's own outcome
        client = docker.from_env()
        for container in client.containers.list(all=True, filters={"label": "mlimg.bench"}):
            container.remove(force=True)


if __name__ == "__main__":
    sys.exit(main())
