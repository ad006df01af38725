"""`mlimg serve` and `mlimg predict` on the host: environments mlimg makes and caches, a
registered model from a real tracking server, signals, files, memory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
from filelock import FileLock

from tests.models import PYFUNC_MLMODEL, write_fake_model
from tests.probes import answers_ping, free_port, post


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One environment cache for the module: the first test creates, the others reuse."""
    return tmp_path_factory.mktemp("mlimg-cache")


def mlimg(*args: str, cache: Path, registry=None, **popen) -> subprocess.Popen:
    env = {**os.environ, "MLIMG_CACHE_DIR": str(cache)}
    if registry is not None:
        env["MLFLOW_TRACKING_URI"] = registry.url
    return subprocess.Popen([sys.executable, "-m", "mlimg", *args], env=env, **popen)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        if answers_ping(url):
            return
        time.sleep(0.5)
    raise AssertionError("the server did not become ready")


def post_csv(url: str, frame: pd.DataFrame) -> dict:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=frame.to_csv(index=False).encode(),
        headers={"Content-Type": "text/csv"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def iris(rows: int = 150) -> pd.DataFrame:
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True).data
    return pd.concat([data] * (rows // len(data) + 1), ignore_index=True).head(rows)


def start_serve(uri: str, port: int, cache: Path, registry, *extra: str) -> subprocess.Popen:
    """`mlimg serve` in the background, its output collected for the test to read."""
    return mlimg(
        "serve",
        "-m",
        uri,
        "-p",
        str(port),
        *extra,
        cache=cache,
        registry=registry,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def serve_once(uri: str, cache: Path, registry, *extra: str) -> str:
    """Start `mlimg serve`, check a prediction, stop it with SIGTERM; returns its log."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_serve(uri, port, cache, registry, *extra)
    try:
        wait_ready(url, process)
        frame = iris(20)
        expected = mlflow.pyfunc.load_model(uri).predict(frame).tolist()
        assert post_csv(url, frame) == {"predictions": expected}
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    return output


def test_serve_a_registered_model_in_an_environment_it_made(registry, cache_dir: Path) -> None:
    uri = f"models:/{registry.name}@champion"
    first = serve_once(uri, cache_dir, registry)
    assert "creating a uv environment with Python 3.11" in first  # uv is the default
    second = serve_once(uri, cache_dir, registry)
    assert "reusing the environment" in second and "creating" not in second


def test_serve_waits_for_a_creation_under_way(registry, cache_dir: Path) -> None:
    uri = f"models:/{registry.name}/1"
    serve_once(uri, cache_dir, registry)  # the environment exists (made above or now)
    (lock_path,) = (cache_dir / "envs").glob("*.lock")
    lock = FileLock(str(lock_path))
    lock.acquire()
    port = free_port()
    process = start_serve(uri, port, cache_dir, registry)
    try:
        time.sleep(8)
        assert process.poll() is None
        assert not answers_ping(f"http://127.0.0.1:{port}")  # nothing listens yet
        lock.release()
        wait_ready(f"http://127.0.0.1:{port}", process)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if lock.is_locked:
            lock.release()
        if process.poll() is None:
            process.kill()
    assert "waiting for another mlimg" in output and "reusing the environment" in output


def run_predict(*args: str, cache: Path, registry=None, stdin: bytes | None = None):
    process = mlimg(
        "predict",
        *args,
        cache=cache,
        registry=registry,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = process.communicate(stdin, timeout=900)
    return process.returncode, out, err.decode()


def test_predict_files_with_awkward_names(registry, cache_dir: Path, tmp_path: Path) -> None:
    uri = f"models:/{registry.name}/1"
    frame = iris(150)
    source = tmp_path / 'my "input" file.csv'
    frame.to_csv(source, index=False)
    expected = mlflow.pyfunc.load_model(uri).predict(frame).tolist()
    target = tmp_path / "out $(id) 'x'.csv"
    code, _, err = run_predict(
        "-m", uri, "-i", str(source), "-o", str(target), cache=cache_dir, registry=registry
    )
    assert code == 0, err
    assert pd.read_csv(target)["prediction"].tolist() == expected
    json_target = tmp_path / "out.json"
    code, _, err = run_predict(
        "-m", uri, "-i", str(source), "-o", str(json_target), cache=cache_dir, registry=registry
    )
    assert code == 0, err
    assert json.loads(json_target.read_text()) == {"predictions": expected}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [source.name, target.name, json_target.name]
    )


def test_predict_stdin_to_stdout(registry, cache_dir: Path) -> None:
    uri = f"models:/{registry.name}/1"
    frame = iris(10)
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))}).encode()
    code, out, err = run_predict("-m", uri, cache=cache_dir, registry=registry, stdin=body)
    assert code == 0, err
    expected = mlflow.pyfunc.load_model(uri).predict(frame).tolist()
    assert json.loads(out) == {"predictions": expected}
    code, out, err = run_predict(
        "-m",
        uri,
        "-t",
        "csv",
        cache=cache_dir,
        registry=registry,
        stdin=frame.to_csv(index=False).encode(),
    )
    assert code == 0, err
    assert json.loads(out) == {"predictions": expected}  # stdout has no .csv name: JSON


def test_predict_bad_input_fails_cleanly(registry, cache_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("x,y\n1,2\n")
    target = tmp_path / "out.csv"
    code, _, err = run_predict(
        "-m",
        f"models:/{registry.name}/1",
        "-i",
        str(source),
        "-o",
        str(target),
        cache=cache_dir,
        registry=registry,
    )
    assert code == 1 and "mlimg: error:" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [source]


def peak_rss_of_predict(uri: str, rows: int, cache: Path, registry, tmp_path: Path) -> int:
    """The largest resident set of any process `mlimg predict` ran, in KiB."""
    source = tmp_path / f"in-{rows}.csv"
    iris(rows).to_csv(source, index=False)
    script = (
        "import resource, subprocess, sys; "
        "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    env = {**os.environ, "MLIMG_CACHE_DIR": str(cache), "MLFLOW_TRACKING_URI": registry.url}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            sys.executable,
            "-m",
            "mlimg",
            "predict",
            "-m",
            uri,
            "-i",
            str(source),
            "-o",
            str(tmp_path / f"out-{rows}.csv"),
            "--chunk-rows",
            "5000",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    code, peak = result.stdout.split()
    assert code == "0", result.stderr
    return int(peak)


def test_predict_memory_stays_bounded_on_large_csv(registry, cache_dir: Path, tmp_path: Path):
    uri = f"models:/{registry.name}/1"
    small = peak_rss_of_predict(uri, 50_000, cache_dir, registry, tmp_path)
    large = peak_rss_of_predict(uri, 1_000_000, cache_dir, registry, tmp_path)
    large_csv_mib = (tmp_path / "in-1000000.csv").stat().st_size / 2**20
    # The large input is 20x the small one and far larger than a chunk; memory must not follow.
    assert large - small < 40 * 1024, (small, large, large_csv_mib)
    assert len(pd.read_csv(tmp_path / "out-1000000.csv")) == 1_000_000


def test_local_env_manager_uses_this_python(sklearn_model: Path, cache_dir: Path) -> None:
    output = serve_once(str(sklearn_model), cache_dir, None, "--env-manager", "local")
    assert "creating" not in output
    assert not (cache_dir / "envs").exists() or not any(
        p.name.startswith("local") for p in (cache_dir / "envs").iterdir()
    )


def test_missing_python_version_is_named(tmp_path: Path, cache_dir: Path) -> None:
    model = write_fake_model(
        tmp_path / "old",
        PYFUNC_MLMODEL,
        **{"python_env.yaml": "python: 3.5.10\ndependencies: [numpy]\n"},
    )
    code, _, err = run_predict(
        "-m", str(model), "-i", str(model / "MLmodel"), "-t", "json", cache=cache_dir
    )
    assert code == 1 and "Traceback" not in err
    assert "needs Python 3.5" in err and "none was found" in err


def test_port_in_use_is_named(sklearn_model: Path, cache_dir: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        process = mlimg(
            "serve",
            "-m",
            str(sklearn_model),
            "-p",
            str(port),
            "--env-manager",
            "local",
            cache=cache_dir,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in err


def test_serve_with_virtualenv(sklearn_model: Path, cache_dir: Path) -> None:
    output = serve_once(str(sklearn_model), cache_dir, None, "--env-manager", "virtualenv")
    assert "creating a virtualenv environment with Python 3.11" in output


def test_serve_with_the_mlserver_engine(sklearn_model: Path, cache_dir: Path) -> None:
    """The same command, the other engine: an environment of its own (MLServer beside the
    model's requirements), the same answers on /invocations."""
    output = serve_once(str(sklearn_model), cache_dir, None, "--engine", "mlserver")
    assert "creating a uv environment with Python 3.11" in output
    assert "with mlserver on http://127.0.0.1:" in output
    assert "serving" in output and "with MLServer" in output


def test_serve_streams_a_chat_model_to_the_openai_client(genai_models: dict, cache_dir: Path):
    """`mlimg serve` is the image's server: a ChatModel streams to the openai client."""
    import openai

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_serve(str(genai_models["chat_model"]), port, cache_dir, None)
    try:
        wait_ready(url, process)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        messages = [{"role": "user", "content": "hello host"}]
        chunks = list(client.chat.completions.create(model="m", messages=messages, stream=True))
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "echo: hello host"
    assert process.returncode == 0, output
    assert 'POST /v1/chat/completions HTTP/1.1" 200' in output


def test_conda_without_a_conda_tool_is_named(sklearn_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MLIMG_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlimg",
            "predict",
            "-m",
            str(sklearn_model),
            "-i",
            str(sklearn_model / "serving_input_example.json"),
            "--env-manager",
            "conda",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "needs micromamba, mamba or conda on PATH" in result.stderr
    assert not any((tmp_path / "envs").glob("conda-*/bin"))


def start_predict(uri: str, source: Path, target: Path, cache: Path, registry):
    return mlimg(
        "predict",
        "-m",
        uri,
        "-i",
        str(source),
        "-o",
        str(target),
        "--chunk-rows",
        "2000",
        cache=cache,
        registry=registry,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def batch_children(parent: int) -> list[int]:
    """The pids of `mlimg_runtime.batch` processes whose parent is `parent` (or was)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if b"mlimg_runtime.batch" in cmdline and ppid in (parent, 1):
                found.append(int(entry.name))
    return found


def test_two_predict_runs_on_one_output_leave_one_whole_file(
    registry, cache_dir: Path, tmp_path: Path
) -> None:
    uri = f"models:/{registry.name}/1"
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    iris(3_000).to_csv(small, index=False)
    iris(60_000).to_csv(large, index=False)
    target = tmp_path / "out.csv"
    runs = [start_predict(uri, source, target, cache_dir, registry) for source in (large, small)]
    for run in runs:
        _, err = run.communicate(timeout=900)
        assert run.returncode == 0, err.decode()
    assert len(pd.read_csv(target)) in (3_000, 60_000)  # one run's whole output, never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.csv", "out.csv", "small.csv"]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_predict_exits_128_plus_the_signal_leaving_nothing(
    registry, cache_dir: Path, tmp_path: Path, signum: int, status: int
) -> None:
    uri = f"models:/{registry.name}/1"
    source = tmp_path / "in.csv"
    iris(1_000_000).to_csv(source, index=False)
    run = start_predict(uri, source, tmp_path / "out.csv", cache_dir, registry)
    deadline = time.monotonic() + 300
    while not batch_children(run.pid):  # stop it while the model's child predicts
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == status, err.decode()
    assert "Traceback" not in err.decode()
    assert [p.name for p in tmp_path.iterdir()] == ["in.csv"]


def test_a_killed_predict_takes_its_child_along_and_leaves_no_file(
    registry, cache_dir: Path, tmp_path: Path
) -> None:
    uri = f"models:/{registry.name}/1"
    source = tmp_path / "in.csv"
    iris(1_000_000).to_csv(source, index=False)
    run = start_predict(uri, source, tmp_path / "out.csv", cache_dir, registry)
    deadline = time.monotonic() + 300
    while not (children := batch_children(run.pid)):
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)
    run.kill()
    run.wait(30)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in children):
        assert time.monotonic() < deadline, "the model's child outlived a killed mlimg predict"
        time.sleep(0.1)
    assert [p.name for p in tmp_path.iterdir()] == ["in.csv"]


def test_a_damaged_cached_environment_is_made_again(registry, cache_dir: Path) -> None:
    uri = f"models:/{registry.name}/1"
    first = serve_once(uri, cache_dir, registry)  # the environment exists
    # its path, as mlimg names it (other tests' environments share the cache)
    env = re.search(r"(?:reusing the environment|requirements in) (\S+)", first).group(1)
    [module] = Path(env).glob("lib/python3.*/site-packages/gunicorn/arbiter.py")
    module.unlink()  # a file lost from site-packages
    output = serve_once(uri, cache_dir, registry)
    assert "is broken" in output and "gunicorn.arbiter" in output, output
    assert "creating a uv environment" in output
    assert module.is_file()


def test_serve_has_the_images_environment_rules(sklearn_model: Path, tmp_path: Path) -> None:
    """The image installs mlflow-skinny, without pyarrow: Parquet is 415 there, and so here;
    --full-mlflow gives both the full mlflow the model pins, and pyarrow with it."""
    swapped = "installing mlflow-skinny in place of the full mlflow the model pins"
    for extra, status in (((), 415), (("--full-mlflow",), 200)):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_serve(str(sklearn_model), port, tmp_path, None, *extra)
        try:
            wait_ready(url, process)
            code, answer = post(url, iris(5).to_parquet(), "application/vnd.apache.parquet")
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        assert code == status, answer
        assert "creating a uv environment" in output  # one environment for each
        assert (swapped in output) == (not extra), output
        if status == 415:
            assert "--full-mlflow" in answer["message"]
        else:
            assert len(answer["predictions"]) == 5


def test_predict_to_stdout_writes_nothing_when_a_later_chunk_fails(
    sklearn_model: Path, tmp_path: Path
) -> None:
    """Not a '{"predictions": [' cut short: the answer whole, or nothing and exit 1."""
    source = tmp_path / "in.csv"
    frame = iris(20).astype(object)
    frame.iloc[15, 3] = "abc"  # read with the third chunk of five rows
    frame.to_csv(source, index=False)
    for output in ((), ("--chunk-rows", "5")):
        code, out, err = run_predict(
            "-m", str(sklearn_model), "-i", str(source), "--env-manager", "local", *output,
            cache=tmp_path,
        )  # fmt: skip
        assert code == 1 and "mlimg: error: the CSV input could not be read" in err, err
        assert out == b""


def test_predict_writes_a_column_per_output_of_a_two_dimensional_prediction(
    tmp_path: Path,
) -> None:
    """predict_proba's rows as prediction_0..2, loaded back into pandas as numbers."""
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    features = iris(150)
    target = [i % 3 for i in range(150)]
    fitted = LogisticRegression(max_iter=500).fit(features, target)
    model = tmp_path / "proba"
    mlflow.sklearn.save_model(
        fitted, model, serialization_format="skops", pyfunc_predict_fn="predict_proba"
    )
    source, target_csv = tmp_path / "in.csv", tmp_path / "out.csv"
    features.head(7).to_csv(source, index=False)
    code, _, err = run_predict(
        "-m", str(model), "-i", str(source), "-o", str(target_csv), "--env-manager", "local",
        cache=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    written = pd.read_csv(target_csv)
    assert list(written.columns) == ["prediction_0", "prediction_1", "prediction_2"]
    pd.testing.assert_frame_equal(
        written,
        pd.DataFrame(fitted.predict_proba(features.head(7)), columns=written.columns),
        check_exact=False,
    )
