"""Streams: mlimg's image against MLflow's AgentServer, side by side on one machine, in one run.

    python benchmarks/streams.py                    # 3 rounds
    python benchmarks/streams.py --rounds 5 --update-readme

The agent is a ResponsesAgent (a model from code, saved by mlflow) whose `predict_stream`
yields 50 text deltas, each after about 1 ms (a wait, as a model waits for its next token),
then the finished item. mlimg serves it from the image `mlimg build` makes. AgentServer
(`mlflow.genai.agent_server`, the one MLflow server that streams) serves it from an image built
on that same image, so that base, Python, mlflow-skinny (which brings fastapi and uvicorn) and
model are the same: its `@stream` is the logged agent's `predict_stream`, run by uvicorn with
as many workers as mlimg runs (one per CPU). Neither records traces (no tracking server).

Each round, for each side (the order alternating): time to first chunk (p50, p99) and
streams/s with 1 and with 64 concurrent streams for `--duration` seconds, each stream a new
connection, each checked whole (every event, then `[DONE]`); then 1,000 streams opened at once
and read slowly (4 KiB every 50 ms each), with the container's memory sampled while they are
open. Any stream that fails, or ends short, fails the run. The report compares medians.
Writes results/streams.{md,json} beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from compare import _fmt, publish, verdict  # noqa: E402 (the benchmark beside this one)

SIDES = ("agentserver", "mlimg")
LABELS = {"agentserver": "MLflow AgentServer", "mlimg": "mlimg"}
CHUNKS = 50
EVENTS = CHUNKS + 2  # the deltas, the finished item, [DONE]
SLOW_STREAMS = 1000
PATH = "/responses"  # the route both give a ResponsesAgent
BASE_IMAGE = "python:3.11-slim"  # the base of both images
# What AgentServer imports beyond mlflow-skinny's dependencies (anyio, certifi, idna are there).
HTTPX = ("httpx==0.28.1", "httpcore==1.0.9", "h11==0.16.0")
BODY = json.dumps({"input": [{"role": "user", "content": "go"}], "stream": True}).encode()

AGENT_CODE = f"""
import time

import mlflow
from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import ResponsesAgentResponse, ResponsesAgentStreamEvent


class Tokens(ResponsesAgent):
    def predict(self, request):
        text = " ".join(f"t{{i}}" for i in range({CHUNKS}))
        return ResponsesAgentResponse(output=[self.create_text_output_item(text, "msg-1")])

    def predict_stream(self, request):
        words = []
        for i in range({CHUNKS}):
            time.sleep(0.001)  # the model's wait for its next token
            words.append(f"t{{i}}")
            yield ResponsesAgentStreamEvent(**self.create_text_delta(words[-1] + " ", "msg-1"))
        item = self.create_text_output_item(" ".join(words), "msg-1")
        yield ResponsesAgentStreamEvent(type="response.output_item.done", item=item)


mlflow.models.set_model(Tokens())
"""

AGENT_SERVER_CODE = """
import mlflow
from mlflow.genai.agent_server import AgentServer, invoke, stream

mlflow.tracing.disable()  # as mlimg with no tracking server named
agent = mlflow.pyfunc.load_model(MODEL_PATH)


@invoke()
def answer(request):
    return agent.predict(request.model_dump(exclude_none=True))


@stream()
def chunks(request):
    yield from agent.predict_stream(request.model_dump(exclude_none=True))


app = AgentServer("ResponsesAgent").app
"""


def agent_server_code(model_path: str) -> str:
    """A module serving the logged agent at `model_path` with AgentServer (as `app`): its
    @invoke and @stream the agent's own predict and predict_stream (tests/runtime use it too)."""
    return f"MODEL_PATH = {model_path!r}\n" + AGENT_SERVER_CODE


# (key, label, unit, better, target ratio mlimg/AgentServer or None)
METRICS = (
    ("ttfc_p50_c1_ms", "Time to first chunk p50, 1 stream", "ms", "lower", None),
    ("ttfc_p99_c1_ms", "Time to first chunk p99, 1 stream", "ms", "lower", None),
    ("streams_c1", "Streams/s, 1 at a time", "streams/s", "higher", None),
    ("ttfc_p50_c64_ms", "Time to first chunk p50, 64 streams", "ms", "lower", 0.5),
    ("ttfc_p99_c64_ms", "Time to first chunk p99, 64 streams", "ms", "lower", None),
    ("streams_c64", "Streams/s, 64 at a time", "streams/s", "higher", 2.0),
    ("slow_peak_mb", f"Memory with {SLOW_STREAMS:,} streams read slowly", "MB", "lower", None),
    ("slow_seconds", f"{SLOW_STREAMS:,} slow streams, all done", "s", "lower", None),
)


class BenchmarkFailed(Exception):
    pass


@dataclass
class Load:
    """What one load step saw."""

    first: list[float] = field(default_factory=list)  # seconds to each stream's first event
    done: int = 0
    failures: list[str] = field(default_factory=list)


def _request(port: int) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def one_stream(port: int, load: Load, slow: bool = False) -> None:
    """One stream on a new connection, read to its end (slowly, with `slow`), checked whole."""
    started = time.perf_counter()
    first = None
    received = bytearray()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(port))
        while True:
            chunk = await asyncio.wait_for(reader.read(4096 if slow else 65536), 60)
            if not chunk:
                break
            received += chunk
            if first is None:
                head_end = received.find(b"\r\n\r\n")
                if head_end >= 0 and received.find(b"data: ", head_end) >= 0:
                    first = time.perf_counter() - started
            if slow:
                await asyncio.sleep(0.05)
        writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        load.failures.append(repr(exc))
        return
    if not received.startswith(b"HTTP/1.1 200") or received.count(b"data: ") != EVENTS:
        load.failures.append(f"an incomplete stream: {bytes(received[:300])!r}")
    elif b"data: [DONE]" not in received:
        load.failures.append("a stream without [DONE]")
    else:
        load.done += 1
        load.first.append(first or 0.0)


async def steady(port: int, streams: int, seconds: float) -> tuple[Load, float]:
    """`streams` clients, each opening a stream as soon as its last has ended, for `seconds`."""
    load = Load()
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            await one_stream(port, load)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(streams)))
    return load, time.perf_counter() - started


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Side:
    """One side's container, its port on 127.0.0.1 only."""

    def __init__(self, client, image: str, name: str):
        self.name = name
        self.container = client.containers.run(
            image,
            detach=True,
            ports={"8080/tcp": ("127.0.0.1", None)},
            labels={"mlimg.bench": "1"},
        )
        deadline = time.monotonic() + 120
        self.port = 0
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                raise BenchmarkFailed(f"{name} exited: {self.logs()}")
            bindings = (self.container.ports or {}).get("8080/tcp")
            if bindings:
                self.port = int(bindings[0]["HostPort"])
                if self._answers():
                    return
            time.sleep(0.2)
        raise BenchmarkFailed(f"{name} did not answer: {self.logs()}")

    def _answers(self) -> bool:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{PATH}", data=BODY, method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status == 200 and b"[DONE]" in response.read()
        except OSError:
            return False

    def logs(self) -> str:
        return self.container.logs(tail=30).decode(errors="replace")

    def memory_mb(self) -> float:
        stats = self.container.stats(stream=False).get("memory_stats", {})
        return stats.get("usage", 0) / 1e6

    def remove(self) -> None:
        self.container.remove(force=True)


@contextlib.contextmanager
def sampled_memory(side: Side):
    """The container's memory, sampled about every second while the block runs: the peak."""
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        for stats in side.container.stats(stream=True, decode=True):
            peak[0] = max(peak[0], stats.get("memory_stats", {}).get("usage", 0) / 1e6)
            if stop.is_set():
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(5)


def measure(side: Side, seconds: float) -> dict[str, float]:
    figures: dict[str, float] = {}
    asyncio.run(steady(side.port, 4, 2))  # warm: every worker has served a few
    for streams in (1, 64):
        load, elapsed = asyncio.run(steady(side.port, streams, seconds))
        if load.failures:
            raise BenchmarkFailed(f"{side.name}, {streams} streams: {load.failures[:3]}")
        figures[f"ttfc_p50_c{streams}_ms"] = statistics.median(load.first) * 1000
        figures[f"ttfc_p99_c{streams}_ms"] = quantile(load.first, 0.99) * 1000
        figures[f"streams_c{streams}"] = load.done / elapsed
    with sampled_memory(side) as peak:
        load = Load()
        started = time.perf_counter()

        async def every() -> None:
            await asyncio.gather(
                *(one_stream(side.port, load, slow=True) for _ in range(SLOW_STREAMS))
            )

        asyncio.run(every())
        figures["slow_seconds"] = time.perf_counter() - started
        time.sleep(1.5)  # one more sample
    if load.failures or load.done != SLOW_STREAMS:
        raise BenchmarkFailed(
            f"{side.name}: {SLOW_STREAMS - load.done} of {SLOW_STREAMS} slow streams failed: "
            f"{load.failures[:3]}"
        )
    figures["slow_peak_mb"] = peak[0]
    return figures


def build_images(client, work: Path, ca_cert: str) -> dict[str, str]:
    import mlflow.pyfunc

    code = work / "agent_code.py"
    code.write_text(AGENT_CODE)
    model = work / "agent"
    requirements = (REPO / "examples" / "iris" / "model" / "requirements.txt").read_text()
    mlflow.pyfunc.save_model(
        model,
        python_model=str(code),
        input_example={"input": [{"role": "user", "content": "go"}]},
        pip_requirements=[line for line in requirements.splitlines() if line.strip()],
    )
    images = {
        "mlimg": "mlimg-bench/stream-agent:mlimg",
        "agentserver": "mlimg-bench/stream-agent:agentserver",
    }
    result = subprocess.run(
        [sys.executable, "-m", "mlimg", "build", "-m", str(model), "-t", images["mlimg"],
         "--ca-cert", ca_cert],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if result.returncode != 0:
        raise BenchmarkFailed(f"mlimg build failed:\n{result.stderr[-3000:]}")
    context = work / "agentserver"
    context.mkdir()
    (context / "agent_server.py").write_text(agent_server_code("/opt/ml/model"))
    shutil.copyfile(ca_cert, context / "ca.crt")
    workers = os.cpu_count() or 1
    # AgentServer imports httpx, which mlflow-skinny does not bring: installed beside it from
    # a build stage (the CA bundle stays there).
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE} AS httpx\n"
        "COPY ca.crt /tmp/ca.crt\n"
        f"RUN PIP_CERT=/tmp/ca.crt pip install --no-deps --target /deps {' '.join(HTTPX)}\n"
        f"FROM {images['mlimg']}\n"
        "COPY --from=httpx /deps /opt/bench/deps\n"
        "COPY agent_server.py /opt/bench/agent_server.py\n"
        "ENV PYTHONPATH=/opt/bench:/opt/bench/deps\n"
        'ENTRYPOINT ["python", "-m", "uvicorn", "agent_server:app", "--host", "0.0.0.0", '
        f'"--port", "8080", "--workers", "{workers}"]\n'
    )
    client.images.build(path=str(context), tag=images["agentserver"], rm=True)
    return images


def summarize(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        side: {
            key: statistics.median(r[side][key] for r in rounds)
            for key, *_ in METRICS
            if all(key in r[side] for r in rounds)
        }
        for side in SIDES
    }


def markdown_table(summary: dict[str, dict[str, float]], rounds: int, workers: int) -> str:
    lines = [
        f"Medians of {rounds} rounds, one run on one {os.cpu_count()}-CPU machine, "
        f"{time.strftime('%Y-%m-%d')}: an agent yielding {CHUNKS} chunks about 1 ms apart, "
        f"{workers} worker(s) on each side, every stream a new connection and checked whole.",
        "",
        "| Measure | MLflow AgentServer | mlimg | mlimg / AgentServer | Target |",
        "|---|---:|---:|---:|---|",
    ]
    for key, label, unit, better, target in METRICS:
        theirs, ours = summary["agentserver"].get(key), summary["mlimg"].get(key)
        if not theirs or ours is None:
            continue
        ratio = ours / theirs
        lines.append(
            f"| {label} | {_fmt(theirs)} {unit} | {_fmt(ours)} {unit} | {ratio:.2f}x "
            f"| {verdict(ratio, better, target)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10, help="seconds of each load step")
    parser.add_argument(
        "--ca-cert", default=os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()

    import docker

    client = docker.from_env()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mlimg-streams-") as tmp:
            images = build_images(client, Path(tmp), args.ca_cert)
        for round_no in range(args.rounds):
            order = SIDES if round_no % 2 == 0 else tuple(reversed(SIDES))
            figures = {}
            for name in order:
                print(f"round {round_no + 1}/{args.rounds}: {name}", flush=True)
                side = Side(client, images[name], name)
                try:
                    figures[name] = measure(side, args.duration)
                finally:
                    side.remove()
                print(f"  {json.dumps(figures[name])}", flush=True)
            rounds.append(figures)
    except BenchmarkFailed as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    summary = summarize(rounds)
    table = markdown_table(summary, len(rounds), os.cpu_count() or 1)
    publish(out / "streams", table, rounds, summary, "streams" if args.update_readme else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
