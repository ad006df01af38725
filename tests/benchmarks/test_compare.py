"""The benchmark's own logic: reading wrk, medians, ratios against the targets, the report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "compare.py"
_SPEC = importlib.util.spec_from_file_location("compare", _PATH)
compare = importlib.util.module_from_spec(_SPEC)
sys.modules["compare"] = compare  # dataclasses look their module up there
_SPEC.loader.exec_module(compare)

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:5103/invocations
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    15.74ms   20.10ms 300.00ms   95.00%
    Req/Sec   480.00     60.00   600.00     70.00%
  Latency Distribution
     50%  850.00us
     75%   20.00ms
     90%   30.00ms
     99%    1.20s
  9605 requests in 10.00s, 1.50MB read
Requests/sec:    960.51
Transfer/sec:    150.00KB
"""


def test_parse_wrk_reads_rate_percentiles_in_any_unit_and_counts() -> None:
    result = compare.parse_wrk(WRK_OUTPUT)
    assert result.requests_per_s == 960.51
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p99_ms == pytest.approx(1200.0)
    assert (result.requests, result.errors) == (9605, 0)


def test_parse_wrk_counts_non_2xx_answers_and_socket_errors() -> None:
    output = WRK_OUTPUT.replace(
        "Requests/sec:",
        "  Socket errors: connect 0, read 2, write 0, timeout 3\n"
        "  Non-2xx or 3xx responses: 7\nRequests/sec:",
    )
    assert compare.parse_wrk(output).errors == 12


def test_parse_wrk_refuses_output_it_cannot_read() -> None:
    with pytest.raises(compare.BenchmarkFailed, match="could not read"):
        compare.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def rounds_of(values: dict[str, list[tuple[float, float]]]) -> list[dict]:
    count = len(next(iter(values.values())))
    return [
        {
            "mlflow": {key: pairs[i][0] for key, pairs in values.items()},
            "mlimg": {key: pairs[i][1] for key, pairs in values.items()},
        }
        for i in range(count)
    ]


def test_summary_takes_medians_and_ratios_judge_each_target_its_way() -> None:
    rounds = rounds_of(
        {
            "rps_c16": [(400, 2000), (500, 1500), (450, 1900)],  # higher is better, >= 4x
            "cold_build_s": [(60, 40), (70, 20), (65, 30)],  # lower is better, <= 0.5x
            "peak_memory_mb": [(500, 300), (520, 310), (510, 305)],  # no target
        }
    )
    summary = compare.summarize(rounds)
    assert summary["mlflow"]["rps_c16"] == 450 and summary["mlimg"]["rps_c16"] == 1900
    assert compare.ratio_row("rps_c16", summary) == (pytest.approx(1900 / 450), "≥ 4x: met")
    assert compare.ratio_row("cold_build_s", summary) == (pytest.approx(30 / 65), "≤ 0.5x: met")
    ratio, verdict = compare.ratio_row("peak_memory_mb", summary)
    assert ratio == pytest.approx(305 / 510) and verdict == ""
    summary["mlimg"]["cold_build_s"] = 40
    assert compare.ratio_row("cold_build_s", summary)[1] == "≤ 0.5x: MISSED"


def test_markdown_table_lists_measured_figures_only() -> None:
    summary = compare.summarize(rounds_of({"rps_c1": [(200, 400)], "p50_c1_ms": [(5.0, 2.5)]}))
    table = compare.markdown_table(summary, 1, "a note")
    assert table.startswith("Medians of 1 rounds, a note.")
    assert "| Throughput, 1 connection | 200 req/s | 400 req/s | 2.00x |  |" in table
    assert "| p50 latency, 1 connection | 5.00 ms | 2.50 ms | 0.50x | ≤ 0.4x: MISSED |" in table
    assert "Cold build" not in table


def test_startup_note_splits_first_prediction_into_the_floor_and_the_rest() -> None:
    summary = compare.summarize(
        rounds_of({"first_prediction_s": [(5.0, 4.0)], "load_floor_s": [(3.5, 3.0)]})
    )
    note = compare.startup_note(summary)
    assert "MLflow's server added 1.50 s" in note and "mlimg's 1.00 s" in note
    assert "would reach 0.60x" in note  # a floor of 3.0 s against MLflow's 5.0 s
    assert compare.startup_note(compare.summarize(rounds_of({"rps_c1": [(1, 2)]}))) == ""


def test_replace_section_swaps_only_what_lies_between_the_markers() -> None:
    text = "intro\n<!-- b -->\nold table\n<!-- e -->\nrest\n"
    assert compare.replace_section(text, "new\n", "<!-- b -->", "<!-- e -->") == (
        "intro\n<!-- b -->\nnew\n<!-- e -->\nrest\n"
    )
    with pytest.raises(compare.BenchmarkFailed, match="markers"):
        compare.replace_section("no markers", "x", "<!-- b -->", "<!-- e -->")


def test_payloads_make_a_one_row_request_and_check_requests(tmp_path: Path) -> None:
    model = Path(__file__).resolve().parents[2] / "examples" / "iris" / "model"
    one_row, checks = compare.payloads(model)
    assert b'"data": [[' in one_row and one_row.count(b"], [") == 0
    assert len(checks) == 3


def test_baseline_table_holds_the_new_runtime_to_ten_percent() -> None:
    summary = {
        "mlflow": {"rps_c16": 300.0},
        "mlimg": {"rps_c16": 1850.0, "p50_c1_ms": 2.5, "first_prediction_s": 3.0},
        "baseline": {"rps_c16": 2000.0, "p50_c1_ms": 2.0, "first_prediction_s": 3.2},
    }
    table = compare.baseline_table(summary, "e34b083")
    assert "| runtime at e34b083 | this runtime |" in table
    assert (
        "| Throughput, 16 connections | 2,000 req/s | 1,850 req/s | 0.93x | ≥ 0.9x: met |" in table
    )
    assert "| p50 latency, 1 connection | 2.00 ms | 2.50 ms | 1.25x | ≤ 1.1x: MISSED |" in table
    assert "docker run to first prediction" in table
    assert compare.baseline_table({"mlflow": {}, "mlimg": {}}, "x") == ""


def test_summarize_keeps_the_baseline_side() -> None:
    rounds = [
        {"mlflow": {"rps_c1": 1.0}, "mlimg": {"rps_c1": 2.0}, "baseline": {"rps_c1": v}}
        for v in (3.0, 5.0, 4.0)
    ]
    assert compare.summarize(rounds)["baseline"]["rps_c1"] == 4.0


def test_v2_payload_has_one_input_per_column() -> None:
    body = b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1.5, 2], [3.0, 4]]}}'
    v2 = json.loads(compare.v2_payload(body))
    assert v2 == {
        "inputs": [
            {"name": "a", "datatype": "FP64", "shape": [2, 1], "data": [1.5, 3.0]},
            {"name": "b", "datatype": "INT64", "shape": [2, 1], "data": [2, 4]},
        ]
    }


def test_engines_table_judges_each_goal_against_upstream_mlserver() -> None:
    summary = {
        "mlimg": {"rps_c16": 3000.0, "p50_c16_ms": 4.0, "rps_c1": 600.0, "p50_c1_ms": 1.5},
        compare.UPSTREAM_MLSERVER: {"rps_c16": 500.0, "p50_c16_ms": 30.0, "rps_c1": 200.0,
                                    "p50_c1_ms": 4.0, "rps_v2_c1": 300.0, "size_added_mb": 900.0},
        compare.MLIMG_MLSERVER: {"rps_c16": 800.0, "rps_c1": 250.0, "rps_v2_c1": 280.0,
                                 "size_added_mb": 480.0},
    }  # fmt: skip
    table = compare.engines_table(summary)
    assert "| MLServer (upstream) | mlimg --engine mlserver | mlimg |" in table
    assert "V2 infer throughput, 1 connection: mlimg --engine mlserver / MLServer" in table
    verdicts = [line.rsplit("|", 2)[-2].strip() for line in table.splitlines() if "x |" in line]
    assert verdicts.count("MISSED") == 1  # V2 at 1 connection: 280 against 300
    assert compare.engines_table({"mlimg": {}, "mlflow": {}}) == ""


def test_same_predictions_compares_every_side_and_the_v2_outputs() -> None:
    ok = [(200, b'{"predictions": [0]}')]
    v2 = (200, b'{"outputs": [{"name": "o", "data": [0]}]}')
    answers = {"mlflow": ok, "mlimg": ok, compare.UPSTREAM_MLSERVER: [*ok, v2],
               compare.MLIMG_MLSERVER: [*ok, v2]}  # fmt: skip
    compare.same_predictions(answers)
    answers[compare.MLIMG_MLSERVER] = [*ok, (200, b'{"outputs": [{"name": "o", "data": [1]}]}')]
    with pytest.raises(compare.BenchmarkFailed, match="V2 outputs differ"):
        compare.same_predictions(answers)
    answers["mlimg"] = [(200, b'{"predictions": [1]}')]
    with pytest.raises(compare.BenchmarkFailed, match="mlimg's predictions differ"):
        compare.same_predictions(answers)


def test_build_phases_last_until_the_next_line() -> None:
    lines = [
        (0.0, "locking the model's environment for Python 3.11 on linux/amd64\n"),
        (1.8, "building mlimg-bench/mlimg:latest from ...\n"),
        (2.0, "[14/27] RUN /opt/venv/bin/python -m compileall -q /opt/mlimg\n"),
        (3.0, "[15/27] RUN python -m venv /tmp/mlimg/sbom-tool  && /tmp/mlimg/sbom-tool/...\n"),
        (9.5, "[16/27] FROM python:3.11-slim\n"),
    ]
    assert compare.build_phases(lines) == {"lock": pytest.approx(1.8), "sbom": pytest.approx(6.5)}
    assert compare.build_phases(lines[2:3]) == {}


def test_supply_table_compares_the_offline_build_with_the_online_one() -> None:
    figures = {"cold_build_s": 50.0, "rebuild_s": 6.0, "offline_cold_build_s": 45.0,
               "wheels_s": 9.0, "wheelhouse_mb": 128.0, "lock_cold_s": 2.0, "sbom_cold_s": 8.0,
               "lock_rebuild_s": 2.0, "sbom_rebuild_s": 0.0}  # fmt: skip
    summary = compare.summarize([{"mlimg": figures}])
    table = compare.supply_table(summary)
    assert "| Cold build offline, from a wheelhouse (no network) | 45.0 s |" in table
    assert "| Wheelhouse size | 128 MB |" in table
    assert "An offline cold build took 0.90x the online one." in table
    assert "Locking and the SBOM were 10.0 s of the cold build (20%) and 2.0 s of the " in table
    assert compare.supply_table(compare.summarize([{"mlimg": {"cold_build_s": 1.0}}])) == ""
