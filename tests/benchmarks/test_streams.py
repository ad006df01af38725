"""The streaming benchmark's own logic: medians, the report against its targets, the
AgentServer module it serves the agent with."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "streams.py"
_SPEC = importlib.util.spec_from_file_location("streams", _PATH)
streams = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("streams", streams)  # dataclasses look their module up there
_SPEC.loader.exec_module(streams)


def test_the_report_takes_medians_and_judges_each_target_its_way() -> None:
    rounds = [
        {
            "agentserver": {"streams_c64": theirs, "ttfc_p50_c64_ms": 1500.0},
            "mlimg": {"streams_c64": ours, "ttfc_p50_c64_ms": ttfc},
        }
        for theirs, ours, ttfc in ((30.0, 100.0, 70.0), (28.0, 40.0, 900.0), (29.0, 90.0, 80.0))
    ]
    summary = streams.summarize(rounds)
    assert summary["mlimg"] == {"streams_c64": 90.0, "ttfc_p50_c64_ms": 80.0}
    table = streams.markdown_table(summary, 3, 2)
    assert "| Streams/s, 64 at a time | 29.0 streams/s | 90.0 streams/s | 3.10x | ≥ 2x: met |" in (
        table
    )
    assert "| 1,500 ms | 80.0 ms | 0.05x | ≤ 0.5x: met |" in table
    missed = streams.markdown_table(
        {"agentserver": {"streams_c64": 50.0}, "mlimg": {"streams_c64": 60.0}}, 1, 2
    )
    assert "1.20x | ≥ 2x: MISSED |" in missed


def test_the_agent_server_module_serves_the_model_it_is_given() -> None:
    code = streams.agent_server_code("/srv/models/agent")
    assert code.startswith("MODEL_PATH = '/srv/models/agent'\n")
    compile(code, "agent_server.py", "exec")  # a module Python reads
    assert 'AgentServer("ResponsesAgent").app' in code
