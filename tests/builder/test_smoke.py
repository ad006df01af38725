"""The smoke test's report from a container's log, without an engine."""

from __future__ import annotations

from mlimg.smoke import _log_report, load_failure

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
