"""Chat models and agents built into images with `mlimg build`: each passes a smoke test that
asks for its stream, answers as `mlflow models serve` and `mlflow.pyfunc` do, streams what
`predict_stream` yields, and works with the `openai` client, `httpx` and `curl -N`; traces
reach a real tracking server; the MLServer engine refuses streams with 501."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import build, serving
from tests.genai_models import EXAMPLES, GENAI_MODELS, without
from tests.models import load_models
from tests.probes import answering, answers_ping, free_port

TIMEOUT = httpx.Timeout(60.0)
MLFLOW_SERVE = (sys.executable, "-m", "mlflow", "models", "serve", "--env-manager", "local")


def tag_of(name: str) -> str:
    return f"mlimg-test/genai-{name}:e2e"


@pytest.fixture(scope="module")
def models(genai_models: dict, langchain_model: Path) -> dict[str, Path]:
    return {**genai_models, "langchain": langchain_model}


@pytest.fixture(scope="module")
def builds(docker_client, models: dict, ca_cert: Path) -> dict[str, str]:
    """Each model built once; what `mlimg build` printed, by model."""
    printed = {}
    for name in GENAI_MODELS:
        result = build(models[name], tag_of(name), ca_cert)
        assert result.returncode == 0, result.stderr
        printed[name] = result.stderr
    return printed


@pytest.fixture(scope="module")
def loaded(models: dict) -> dict:
    return load_models(models)


def example_payload(models: dict, name: str) -> dict:
    """The example mlflow saved for the model, as /invocations takes it."""
    return json.loads((models[name] / "serving_input_example.json").read_text())


def host_input(payload: dict):
    """What mlflow.pyfunc takes on the host for that payload."""
    return payload.get("inputs", payload)


@pytest.mark.parametrize("name", GENAI_MODELS)
def test_the_smoke_test_checks_the_answer_and_the_stream(builds: dict, name: str) -> None:
    printed = builds[name]
    assert "/invocations answered 200 with" in printed
    streamed = re.search(r"/invocations streamed (\d+) chunk\(s\) and \[DONE\]", printed)
    assert streamed is not None and int(streamed[1]) >= 1, printed


@contextlib.contextmanager
def mlflow_models_serve(model: Path, workdir: Path) -> Iterator[str]:
    """MLflow's own scoring server for `model`, in this Python (`--env-manager local`), in
    `workdir`: with no tracking server named, the agents' traces go to a database it makes
    in its working directory."""
    port = free_port()
    command = [*MLFLOW_SERVE, "-m", str(model), "-p", str(port), "-h", "127.0.0.1"]
    with answering(command, port, cwd=workdir, timeout=120):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("name", GENAI_MODELS)
def test_whole_answers_equal_mlflows_server_and_pyfunc(
    docker_client, builds: dict, models: dict, loaded: dict, name: str, tmp_path: Path
) -> None:
    payload = example_payload(models, name)
    with serving(docker_client, tag_of(name)) as url:
        ours = httpx.post(url + "/invocations", json=payload, timeout=TIMEOUT).json()
    with mlflow_models_serve(models[name], tmp_path) as url:
        theirs = httpx.post(url + "/invocations", json=payload, timeout=TIMEOUT).json()
    expected = loaded[name].predict(host_input(payload))
    assert without(ours, "created") == without(theirs, "created")
    if "predictions" in ours:
        assert ours["predictions"] == list(expected)
    else:
        assert without(ours, "created") == without(expected, "created")


@pytest.mark.parametrize("name", GENAI_MODELS)
def test_streams_equal_predict_stream(
    docker_client, builds: dict, models: dict, loaded: dict, name: str
) -> None:
    payload = example_payload(models, name)
    with (
        serving(docker_client, tag_of(name)) as url,
        httpx.stream(
            "POST", url + "/invocations", json={**payload, "stream": True}, timeout=TIMEOUT
        ) as response,
    ):
        assert response.headers["content-type"] == "text/event-stream"
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    expected = list(loaded[name].predict_stream(host_input(payload)))
    chunks = [json.loads(item) for item in data[:-1]]
    assert without(chunks, "created", "at") == without(expected, "created", "at")


def test_the_openai_client_against_the_images(docker_client, builds: dict) -> None:
    messages = [{"role": "user", "content": "hello image"}]
    for name in ("chat_model", "chat_agent"):
        with serving(docker_client, tag_of(name)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
            whole = client.chat.completions.create(model="any", messages=messages)
            chunks = list(
                client.chat.completions.create(model="any", messages=messages, stream=True)
            )
            listed = [model.id for model in client.models.list()]
        assert whole.choices[0].message.content == "echo: hello image", name
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hello image"
        assert listed == ["model"]
    with serving(docker_client, tag_of("responses_agent")) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        response = client.responses.create(model="any", input="hello image")
        events = list(client.responses.create(model="any", input="hello image", stream=True))
    assert response.output_text == "echo: hello image"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "echo: hello image"
    assert events[-1].type == "response.output_item.done"


def test_curl_n_gets_each_event_as_it_is_made(docker_client, builds: dict) -> None:
    """`curl -N` reads the stream of a model that sleeps a third of a second between chunks:
    the events reach it a third apart, then [DONE]."""
    body = json.dumps({"inputs": "x", "params": {"delay": 0.35, "chunks": 4}, "stream": True})
    with serving(docker_client, tag_of("words")) as url:
        json_type = "Content-Type: application/json"
        curl = subprocess.Popen(
            ["curl", "-sN", "-H", json_type, "-d", body, f"{url}/invocations"],
            stdout=subprocess.PIPE,
        )
        arrivals, lines = [], []
        assert curl.stdout is not None
        for line in curl.stdout:
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic())
                lines.append(line.strip())
        assert curl.wait(30) == 0
    assert len(lines) == 5 and lines[-1] == b"data: [DONE]"
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals[:4])]
    assert min(gaps) > 0.2, gaps


def test_traces_reach_the_tracking_server(
    docker_client, builds: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The ResponsesAgent's image, told a tracking server and an experiment, records its
    traces there; `x-mlflow-return-trace-id: true` returns each one's id, whole and streamed,
    as AgentServer does. The container shares the host's network to reach the server on
    127.0.0.1 (and listens on a free port of it)."""
    import mlflow

    from tests.tracking import tracking_server

    previous = mlflow.get_tracking_uri()
    with tracking_server(tmp_path_factory.mktemp("traces")) as tracking:
        mlflow.set_tracking_uri(tracking)
        experiment = mlflow.create_experiment("mlimg-traces")
        port = free_port()
        container = docker_client.containers.run(
            tag_of("responses_agent"),
            detach=True,
            network_mode="host",
            environment={
                "PORT": str(port),
                "MLIMG_HOST": "127.0.0.1",
                "MLFLOW_TRACKING_URI": tracking,
                "MLFLOW_EXPERIMENT_NAME": "mlimg-traces",
            },
            labels={"mlimg.e2e": "true"},
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while not answers_ping(url):
                assert time.monotonic() < deadline, container.logs().decode()[-2000:]
                time.sleep(0.25)
            headers = {"x-mlflow-return-trace-id": "true"}
            payload = {"input": [{"role": "user", "content": "trace this"}]}
            whole = httpx.post(url + "/responses", json=payload, headers=headers, timeout=TIMEOUT)
            with httpx.stream(
                "POST",
                url + "/responses",
                json={**payload, "stream": True},
                headers=headers,
                timeout=TIMEOUT,
            ) as response:
                data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
            plain = httpx.post(url + "/responses", json=payload, timeout=TIMEOUT).json()
            whole_id = whole.json()["metadata"]["trace_id"]
            stream_id = json.loads(data[-2])["trace_id"]
            found = {}
            deadline = time.monotonic() + 30
            while len(found) < 3 and time.monotonic() < deadline:
                traces = mlflow.search_traces(locations=[experiment], return_type="list")
                found = {trace.info.trace_id: trace for trace in traces}
                time.sleep(0.5)
        finally:
            container.remove(force=True)
            mlflow.set_tracking_uri(previous)
    assert "metadata" not in plain  # only when asked
    assert data[-1] == "[DONE]"
    assert whole_id in found and stream_id in found and whole_id != stream_id
    assert len(found) == 3, sorted(found)
    assert [span.name for span in found[stream_id].data.spans] == ["predict_stream"]
    assert found[whole_id].info.state == "OK"


def test_the_mlserver_engine_builds_a_chat_model_and_answers_streams_501(
    docker_client, models: dict, ca_cert: Path
) -> None:
    tag = "mlimg-test/genai-chat-mlserver:e2e"
    result = build(models["chat_model"], tag, ca_cert, "--engine", "mlserver")
    assert result.returncode == 0, result.stderr
    assert "/invocations answered 200 with a ChatModel's answer" in result.stderr
    assert "streamed" not in result.stderr  # not asked of an engine that does not stream
    payload = {**EXAMPLES["chat_model"], "stream": True}
    with serving(docker_client, tag) as url:
        streamed = httpx.post(url + "/invocations", json=payload, timeout=TIMEOUT)
        whole = httpx.post(url + "/invocations", json=EXAMPLES["chat_model"], timeout=TIMEOUT)
        routed = httpx.post(url + "/v1/chat/completions", json=payload, timeout=TIMEOUT)
        models_list = httpx.get(url + "/v1/models", timeout=TIMEOUT)
    assert streamed.status_code == 501 and "--engine mlimg" in streamed.json()["message"]
    assert whole.status_code == 200 and "choices" in whole.json()
    assert routed.status_code == 501 and routed.json()["error_code"] == "NOT_IMPLEMENTED"
    assert models_list.status_code == 501
