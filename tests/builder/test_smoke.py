"""The smoke test without an engine: its report from a container's log, and its requests
against the runtime served on loopback."""

from __future__ import annotations

import pytest

from mlimg.errors import SmokeTestFailed
from mlimg.model import load_local_model
from mlimg.smoke import _invoke, _log_report, _stream, load_failure
from mlimg.uris import resolve_model_uri
from mlimg_runtime import contract
from tests.probes import runtime

LOG = """\
2026-11-30 12:17:04,494 [1] [INFO] mlimg_runtime: serving /opt/ml/model on 0.0.0.0:8080
172.17.0.1 "GET /ping HTTP/1.1" 503 82 3ms
2026-11-30 12:17:05,202 [1] [ERROR] mlimg_runtime: could not load the model at /opt/ml/model: \
ModuleNotFoundError: No module named 'skops'
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ModuleNotFoundError: No module named 'skops'
2026-11-30 12:17:05,203 [1] [ERROR] mlimg_runtime: hint: the module skops is missing
172.17.0.1 "GET /ping HTTP/1.1" 503 82 0ms
[2026-11-30 12:17:05 +0000] [1] [INFO] Shutting down: Master"""


def test_the_load_failure_and_its_hint_head_the_report() -> None:
    assert load_failure(LOG) == (
        "could not load the model at /opt/ml/model: ModuleNotFoundError: No module named "
        "'skops'\nhint: the module skops is missing"
    )
    assert load_failure("[INFO] Shutting down: Master") is None
    assert load_failure(None) is None


def test_the_report_keeps_the_traceback_and_drops_the_smoke_tests_probes() -> None:
    report = _log_report(LOG)
    assert "GET /ping" not in report
    assert "  Traceback (most recent call last):" in report
    assert report.count("\n") == LOG.count("\n") - 1  # the header line in, two probes out
    assert _log_report(None) == "(the container's log could not be read)"


def test_the_answer_and_the_stream_are_checked_by_the_models_kind(genai_models: dict) -> None:
    """The smoke test's requests against the runtime on loopback (no engine): a ChatModel's
    unwrapped answer passes as a ChatModel's and fails as a ResponsesAgent's; its stream
    counts its chunks; a stream that fails or a model that cannot stream fails the test."""
    chat = load_local_model(resolve_model_uri(str(genai_models["chat_model"])))
    assert (chat.kind.name, chat.streams) == ("ChatModel", True)
    example = chat.serving_example
    with runtime(genai_models["chat_model"]) as port:
        url = f"http://127.0.0.1:{port}"
        answer = _invoke(url, example, chat.kind)
        assert answer["choices"][0]["message"]["content"] == "echo: hello there"
        assert _stream(url, example) == 3
        with pytest.raises(SmokeTestFailed, match="without 'output', which every answer of a"):
            _invoke(url, example, contract.MODEL_KINDS[2])
    with runtime(genai_models["words"]) as port:
        url = f"http://127.0.0.1:{port}"
        assert _invoke(url, {"inputs": "a  b"}, contract.PYFUNC_KIND) == ["a b"]
        failing = {"inputs": "a b c", "params": {"fail_after": 1}}
        with pytest.raises(SmokeTestFailed, match="stream failed after 1 chunk"):
            _stream(url, failing)
        with pytest.raises(SmokeTestFailed, match="answered 500"):
            _stream(url, {"inputs": "a", "params": {"fail_after": 0}})
