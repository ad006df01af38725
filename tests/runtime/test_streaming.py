"""Streams and OpenAI's routes, from the runtime as a process (two gunicorn workers) on
loopback, with real chat models and agents (tests/genai_models.py) and clients no one here
wrote: `openai`, `httpx`. Whole answers are held to `mlflow.pyfunc`'s `predict`, streamed
chunks to its `predict_stream`, the framing to MLflow's AgentServer on the same agent."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import importlib.util
import itertools
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from mlimg_runtime import openai_compat
from mlimg_runtime.streaming import Stream, first_chunk
from tests.attacks import slow_and_silent
from tests.genai_models import EXAMPLES, without
from tests.models import load_models
from tests.probes import answering, answers_ping, free_port, runtime

TIMEOUT = httpx.Timeout(30.0)
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


# The stream's events without a server.


@dataclasses.dataclass
class Delta:
    text: str


def stream_of(chunks, events: openai_compat.Events = openai_compat.AS_THE_MODEL_ANSWERS, **kw):
    context = contextvars.Context()
    iterator, first = context.run(first_chunk, _Model(chunks), "x", {})
    return Stream(iterator, context, first, events, **kw)


class _Model:
    def __init__(self, chunks) -> None:
        self.chunks = chunks

    def predict_stream(self, data, params=None):
        return self.chunks()


def test_events_are_the_chunks_as_json_then_done() -> None:
    def chunks():
        yield {"a": 1}
        yield Delta("dataclass")
        yield "text"

    frames = list(stream_of(chunks))
    assert frames == [
        b'data: {"a": 1}\n\n',
        b'data: {"text": "dataclass"}\n\n',
        b'data: "text"\n\n',
        b"data: [DONE]\n\n",
    ]


def test_a_model_that_yields_nothing_streams_its_end_alone() -> None:
    assert list(stream_of(lambda: iter(()))) == [b"data: [DONE]\n\n"]


def test_a_failure_after_the_first_chunk_is_the_last_event() -> None:
    closed = []

    def chunks():
        try:
            yield {"n": 1}
            raise KeyError("boom")
        finally:
            closed.append(True)

    frames = list(stream_of(chunks))
    assert frames[0] == b'data: {"n": 1}\n\n' and len(frames) == 2
    error = json.loads(frames[1][len(b"data: ") :])
    assert error == {
        "error": {"error_code": "INTERNAL_ERROR", "message": "the model raised KeyError: 'boom'"}
    }
    assert closed == [True]


def test_a_chunk_with_no_json_form_ends_the_stream_with_an_error() -> None:
    def chunks():
        yield {"n": 1}
        yield object()

    frames = list(stream_of(chunks))
    assert len(frames) == 2 and b"cannot be encoded as JSON" in frames[1]


def test_closing_runs_the_generators_finally_in_its_context() -> None:
    marker = contextvars.ContextVar("marker", default="unset")
    seen = []

    def chunks():
        marker.set("the stream's")
        try:
            while True:
                yield {"n": 1}
        finally:
            seen.append(marker.get())

    stream = stream_of(chunks)
    assert next(stream) == b'data: {"n": 1}\n\n'
    stream.close()
    stream.close()  # once is enough
    assert seen == ["the stream's"] and marker.get() == "unset"


def test_a_timed_out_stream_ends_with_a_deadline_event() -> None:
    stream = stream_of(lambda: iter([{"n": 1}, {"n": 2}]))
    assert next(stream) == b'data: {"n": 1}\n\n'
    event = json.loads(stream.timed_out(2.0)[len(b"data: ") :])
    assert event["error"]["error_code"] == "DEADLINE_EXCEEDED"
    assert "2s (MLIMG_STREAM_TIMEOUT)" in event["error"]["message"]
    assert list(stream) == []


def test_the_trace_id_is_an_event_before_done() -> None:
    stream = stream_of(lambda: iter([{"n": 1}]), trace_id=lambda: "tr-123")
    assert list(stream)[-2:] == [b'data: {"trace_id": "tr-123"}\n\n', b"data: [DONE]\n\n"]


# The runtime as a process.


@dataclass(frozen=True)
class Server:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def closed_after(self, seconds: float = 1.5) -> int | None:
        """How many chunks the model's generator had sent when it closed (its `finally`
        logs it), waiting up to `seconds` for the line; None if it has not closed."""
        deadline = time.monotonic() + seconds
        while True:
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("stream closed after "):
                    return int(line.split()[3])
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def forget_log(self) -> None:
        self.log.write_bytes(b"")


@pytest.fixture(scope="module")
def servers(genai_models: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One server per model, started together, for the whole module."""
    root = tmp_path_factory.mktemp("streaming")
    with contextlib.ExitStack() as stack:
        started = {}
        for name, path in genai_models.items():
            log = root / f"{name}.log"
            started[name] = Server(stack.enter_context(runtime(path, wait=False, log=log)), log)
        deadline = time.monotonic() + 90
        for server in started.values():
            while not answers_ping(server.url):
                assert time.monotonic() < deadline, server.log.read_text()[-3000:]
                time.sleep(0.1)
        yield started


@pytest.fixture(scope="module")
def loaded(genai_models: dict) -> dict:
    return load_models(genai_models)


def events(url: str, payload: dict, path: str = "/invocations") -> list[str]:
    """The data of every server-sent event the answer to `payload` holds, in order."""
    with httpx.stream("POST", url + path, json=payload, timeout=TIMEOUT) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream"
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def invocations_payload(name: str, **extra) -> dict:
    example = EXAMPLES[name]
    payload = dict(example) if isinstance(example, dict) else {"inputs": example}
    return {**payload, **extra}


MODELS = ("chat_model", "chat_agent", "responses_agent", "words")


@pytest.mark.parametrize("name", MODELS)
def test_whole_answers_equal_pyfunc_predict(servers: dict, loaded: dict, name: str) -> None:
    answer = httpx.post(
        servers[name].url + "/invocations", json=invocations_payload(name), timeout=TIMEOUT
    ).json()
    expected = loaded[name].predict(EXAMPLES[name])
    if name == "words":
        assert answer == {"predictions": list(expected)}
    else:  # chat and agent answers come unwrapped
        assert without(answer, "created") == without(expected, "created")


@pytest.mark.parametrize("name", MODELS)
def test_streamed_chunks_equal_predict_stream(servers: dict, loaded: dict, name: str) -> None:
    data = events(servers[name].url, invocations_payload(name, stream=True))
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    expected = list(loaded[name].predict_stream(EXAMPLES[name]))
    assert len(chunks) == len(expected) >= 3
    assert without(chunks, "created", "at") == without(expected, "created", "at")


def test_the_framing_is_agent_servers_on_the_same_agent(
    servers: dict, genai_models: dict, tmp_path: Path
) -> None:
    """MLflow's AgentServer (the one MLflow server that streams) serving the same
    ResponsesAgent gives the same bytes, event by event, as mlimg's /responses."""
    payload = {"input": [{"role": "user", "content": "the same words"}], "stream": True}
    with agent_server(genai_models["responses_agent"], tmp_path) as url:
        theirs = raw_stream(url + "/responses", payload)
    ours = raw_stream(servers["responses_agent"].url + "/responses", payload)
    assert ours == theirs
    assert (
        ours.endswith(b"data: [DONE]\n\n") and ours.count(b"\n\ndata: ") == 5
    )  # four deltas, the item, [DONE]


def raw_stream(url: str, payload: dict) -> bytes:
    with httpx.stream("POST", url, json=payload, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        return response.read()


@contextlib.contextmanager
def agent_server(model: Path, root: Path) -> Iterator[str]:
    """MLflow's AgentServer on 127.0.0.1, its @invoke and @stream the logged agent's own (the
    module the benchmark serves it with, benchmarks/streams.py)."""
    spec = importlib.util.spec_from_file_location("streams", BENCHMARKS / "streams.py")
    streams = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("streams", streams)  # dataclasses look their module up there
    spec.loader.exec_module(streams)
    port = free_port()
    script = root / "agent_server.py"
    script.write_text(
        streams.agent_server_code(str(model))
        + f"\nimport uvicorn\nuvicorn.run(app, host='127.0.0.1', port={port})\n"
    )
    command = [sys.executable, str(script)]
    with answering(command, port, cwd=root, log=root / "agent_server.log", ready="/health"):
        yield f"http://127.0.0.1:{port}"


def test_chunks_arrive_as_the_model_yields_them(servers: dict) -> None:
    """Five chunks a quarter of a second apart reach the client a quarter apart, not at once."""
    payload = {"inputs": "x", "params": {"delay": 0.25, "chunks": 5}, "stream": True}
    arrivals = []
    with httpx.stream(
        "POST", servers["words"].url + "/invocations", json=payload, timeout=TIMEOUT
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 6  # five chunks and [DONE]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals[:5])]
    assert min(gaps) > 0.15, gaps


def test_openai_chat_completions(servers: dict, loaded: dict) -> None:
    messages = [{"role": "user", "content": "hello from openai"}]
    for name in ("chat_model", "chat_agent"):
        client = openai.OpenAI(base_url=servers[name].url + "/v1", api_key="unused")
        completion = client.chat.completions.create(model="anything", messages=messages)
        assert completion.choices[0].message.content == "echo: hello from openai", name
        assert completion.choices[0].message.role == "assistant"
        stream = client.chat.completions.create(model="gpt-x", messages=messages, stream=True)
        chunks = list(stream)
        assert all(chunk.object == "chat.completion.chunk" for chunk in chunks), name
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
        assert text == "echo: hello from openai", name
        assert chunks[-1].choices[0].finish_reason == "stop", name
    # The ChatModel's chunks are its own, as predict_stream gives them.
    client = openai.OpenAI(base_url=servers["chat_model"].url + "/v1", api_key="unused")
    stream = client.chat.completions.create(model="m", messages=messages, stream=True)
    expected = list(loaded["chat_model"].predict_stream({"messages": messages}))
    assert without([c.model_dump(exclude_none=True) for c in stream], "created") == without(
        expected, "created"
    )


def test_openai_responses(servers: dict, loaded: dict) -> None:
    client = openai.OpenAI(base_url=servers["responses_agent"].url + "/v1", api_key="unused")
    response = client.responses.create(model="anything", input="hello responses")
    assert response.output_text == "echo: hello responses"
    stream = client.responses.create(model="anything", input="hello responses", stream=True)
    kinds = [event.type for event in stream]
    assert kinds == ["response.output_text.delta"] * 3 + ["response.output_item.done"]
    # /responses, as AgentServer routes it, is the same route.
    data = events(
        servers["responses_agent"].url,
        {"input": [{"role": "user", "content": "a b"}], "stream": True},
        path="/responses",
    )
    expected = list(
        loaded["responses_agent"].predict_stream({"input": [{"role": "user", "content": "a b"}]})
    )
    assert [json.loads(item) for item in data[:-1]] == expected


def test_models_lists_the_one_model(servers: dict) -> None:
    client = openai.OpenAI(base_url=servers["words"].url + "/v1", api_key="unused")
    assert [model.id for model in client.models.list()] == ["model"]


def test_a_route_the_kind_cannot_answer_names_the_routes_it_can(servers: dict) -> None:
    answer = httpx.post(
        servers["words"].url + "/v1/chat/completions",
        json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 404
    assert answer.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert "/invocations, /v1/models" in answer.json()["message"]
    answer = httpx.post(
        servers["chat_model"].url + "/v1/responses", json={"input": "hi"}, timeout=TIMEOUT
    )
    assert answer.status_code == 404
    assert "/v1/chat/completions" in answer.json()["message"]
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=servers["chat_model"].url + "/v1", api_key="x").responses.create(
            model="m", input="hi"
        )


def test_an_error_mid_stream_is_one_event_and_the_stream_ends(servers: dict) -> None:
    payload = {"inputs": "a b c d", "params": {"fail_after": 2}, "stream": True}
    data = events(servers["words"].url, payload)
    assert len(data) == 3 and "[DONE]" not in data
    error = json.loads(data[-1])
    assert error["error"]["error_code"] == "INTERNAL_ERROR"
    assert "the model failed after 2 chunks" in error["error"]["message"]
    client = openai.OpenAI(base_url=servers["chat_model"].url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "a b c"}],
        stream=True,
        extra_body={"custom_inputs": {"fail_after": 1}},
    )
    got = []
    with pytest.raises(openai.APIError, match="the model failed after 1 chunks"):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 1


def test_an_error_before_the_first_chunk_is_an_ordinary_answer(servers: dict) -> None:
    url = servers["words"].url + "/invocations"
    failing = {"inputs": "a b", "params": {"fail_after": 0}, "stream": True}
    answer = httpx.post(url, json=failing, timeout=TIMEOUT)
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    assert "the model failed after 0 chunks" in answer.json()["message"]
    answer = httpx.post(url, json={"inputs": "a", "stream": "yes"}, timeout=TIMEOUT)
    assert answer.status_code == 400 and "'stream' must be true or false" in answer.text
    answer = httpx.post(
        servers["chat_model"].url + "/invocations",
        json={"messages": "not a list", "stream": True},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 400, answer.text


def test_a_model_that_cannot_stream_says_so(sklearn_model: Path) -> None:
    example = json.loads((sklearn_model / "serving_input_example.json").read_text())
    with runtime(sklearn_model) as port:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/invocations", json={**example, "stream": True}
        )
        whole = httpx.post(
            f"http://127.0.0.1:{port}/invocations", json={**example, "stream": False}
        )
    assert answer.status_code == 400
    assert "cannot stream: it has no predict_stream" in answer.json()["message"]
    assert whole.status_code == 200 and "predictions" in whole.json()


def test_a_client_that_leaves_closes_the_generator(servers: dict) -> None:
    server = servers["words"]
    server.forget_log()
    payload = {"inputs": "x", "params": {"delay": 0.1, "chunks": 200}, "stream": True}
    with httpx.stream("POST", server.url + "/invocations", json=payload, timeout=TIMEOUT) as r:
        lines = r.iter_lines()
        seen = list(itertools.islice(filter(None, lines), 3))
    left = time.monotonic()
    assert len(seen) == 3
    sent = server.closed_after(seconds=1.0)
    assert sent is not None, "the generator was not closed within a second"
    assert time.monotonic() - left < 1.5
    assert sent < 20  # of 200: it stopped when the client left


def test_a_reader_that_does_not_read_holds_the_generator_back(servers: dict) -> None:
    """Back-pressure: 5,000 chunks of 10 kB ready at once, and a client that reads nothing
    for two seconds; the generator is not advanced past what the buffers hold."""
    server = servers["words"]
    server.forget_log()
    body = json.dumps(
        {"inputs": "x", "params": {"chunks": 5000, "size": 10_000}, "stream": True}
    ).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    assert sock.recv(256).startswith(b"HTTP/1.1 200 OK")
    time.sleep(2)
    sock.close()
    sent = server.closed_after(seconds=2)
    assert sent is not None
    assert sent < 1000, sent  # unbounded, all 5,000 (50 MB) would have been made by now


def test_the_stream_timeout_ends_a_stalled_model_and_the_deadline_bounds_the_first(
    genai_models: dict, tmp_path: Path
) -> None:
    words = genai_models["words"]
    with runtime(words, MLIMG_STREAM_TIMEOUT="1") as port:
        started = time.monotonic()
        payload = {"inputs": "x", "params": {"delay": 2.5, "chunks": 3}, "stream": True}
        data = events(f"http://127.0.0.1:{port}", payload)
        seconds = time.monotonic() - started
    assert len(data) == 2, data  # the first chunk, then the timeout's event
    assert json.loads(data[1])["error"]["error_code"] == "DEADLINE_EXCEEDED"
    assert "MLIMG_STREAM_TIMEOUT" in json.loads(data[1])["error"]["message"]
    assert 2.5 + 1 <= seconds < 2.5 + 2.5, seconds
    with runtime(words, MLIMG_TIMEOUT="1") as port:
        started = time.monotonic()
        answer = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"inputs": "x", "params": {"delay": 3}, "stream": True},
            timeout=TIMEOUT,
        )
        seconds = time.monotonic() - started
    assert answer.status_code == 504 and answer.json()["error_code"] == "DEADLINE_EXCEEDED"
    assert seconds < 2.5, seconds


def test_sigterm_lets_open_streams_finish(genai_models: dict, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with runtime(genai_models["words"], log=log, MLIMG_WORKERS="1") as port:
        master = int(re.search(r"\[(\d+)\] \[INFO\] mlimg_runtime: serving", log.read_text())[1])
        payload = {"inputs": "x", "params": {"delay": 0.2, "chunks": 10}, "stream": True}
        data = []
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/invocations", json=payload, timeout=TIMEOUT
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data.append(line[6:])
                    if len(data) == 1:
                        os.kill(master, signal.SIGTERM)
    assert len(data) == 11 and data[-1] == "[DONE]"


def test_ping_stays_fast_while_every_thread_streams(servers: dict) -> None:
    """24 streams whose every chunk sleeps half a second keep the threads of both workers
    busy; /ping is answered from the event loop meanwhile."""
    url = servers["words"].url
    payload = {"inputs": "x", "params": {"delay": 0.5, "chunks": 6}, "stream": True}
    results: list[int] = []

    def one() -> None:
        results.append(len(events(url, payload)))

    threads = [threading.Thread(target=one) for _ in range(24)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    pings = []
    with httpx.Client(timeout=5) as client:
        for _ in range(20):
            started = time.monotonic()
            assert client.get(url + "/ping").status_code == 200
            pings.append(time.monotonic() - started)
            time.sleep(0.05)
    for thread in threads:
        thread.join(30)
    assert results == [7] * 24
    assert max(pings) < 0.25, pings


def test_many_streams_at_once(servers: dict) -> None:
    """300 streams of 20 chunks at once, on two workers: every one whole."""
    port = servers["words"].port
    body = json.dumps(
        {"inputs": "x", "params": {"chunks": 20, "delay": 0.01}, "stream": True}
    ).encode()
    request = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(-1), 60)
        writer.close()
        return answer

    async def every() -> list:
        return await asyncio.gather(*(one() for _ in range(300)), return_exceptions=True)

    answers = asyncio.run(every())
    failures = [a for a in answers if not isinstance(a, bytes)]
    assert failures == []
    assert all(
        a.count(b"data: ") == 21 and a.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n") for a in answers
    )


def test_hostile_clients_do_not_deny_streams(servers: dict, tmp_path: Path) -> None:
    """The front end's defences hold on the streaming path: 200 slowloris and 1,000 silent
    connections while a client keeps asking for streams, each answered 200 in time."""
    body = tmp_path / "stream.json"
    body.write_text(json.dumps({"inputs": "a b c", "stream": True}))
    seen = slow_and_silent(servers["words"].port, body, 6, 200, 1000)
    assert seen.errors == []
    assert set(seen.statuses) == {200}
    assert len(seen.latencies) > 20
    assert seen.quantile(0.5) < 0.1, seen.latencies
