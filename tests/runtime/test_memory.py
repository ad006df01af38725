"""What one request may cost: limits from the container's memory, the decoded size estimated
before decoding (413 past the budget), large requests taking turns, memory given back."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlimg_runtime.codecs import decoded_size
from mlimg_runtime.config import (
    MAX_DECODED_BYTES,
    MAX_REQUEST_BYTES,
    ServerConfig,
    memory_bounds,
    memory_limit,
)
from mlimg_runtime.memory import LARGE, MemoryGate

MIB = 2**20


def test_limits_follow_the_containers_memory(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("314572800\n")  # docker run --memory 300m, cgroup v2
    assert memory_limit(tmp_path) == 300 * MIB
    assert memory_bounds(300 * MIB, workers=2) == (300 * MIB // 16, 300 * MIB // 8)
    (tmp_path / "memory.max").write_text("max\n")
    assert memory_limit(tmp_path) is None
    assert memory_bounds(None) == (MAX_REQUEST_BYTES, MAX_DECODED_BYTES)
    assert memory_bounds(64 * 2**30, workers=2) == (MAX_REQUEST_BYTES, MAX_DECODED_BYTES)


def test_the_variables_still_decide() -> None:
    config = ServerConfig.from_env(
        {"MLIMG_MAX_REQUEST_BYTES": "1000", "MLIMG_MAX_DECODED_BYTES": "5000"}
    )
    assert (config.max_request_bytes, config.max_decoded_bytes) == (1000, 5000)


def test_a_csv_of_a_million_columns_is_estimated_at_gigabytes() -> None:
    """12 MB that took the C parser 2.3 GiB."""
    body = (",".join(f"c{i}" for i in range(10**6)) + "\n").encode()
    assert decoded_size("text/csv", body) > 2 * 2**30


def test_json_is_estimated_from_its_values() -> None:
    rows = [[5.1, 3.5, 1.4, 0.2]] * 100_000
    body = pd.DataFrame(rows).to_json(orient="split").encode()
    estimate = decoded_size("application/json", body)
    assert 100_000 * 4 * 40 < estimate < 100_000 * 4 * 100
    assert decoded_size("text/plain", body) == 0  # refused as 415 later, never estimated


def test_parquet_is_estimated_from_its_footer_before_it_is_read() -> None:
    """A few kilobytes of zstd can hold gigabytes of zeros: the footer says so."""
    frame = pd.DataFrame({f"c{i}": np.zeros(2_000_000) for i in range(4)})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, compression="zstd")
    body = buffer.getvalue()
    assert len(body) < 100_000
    assert decoded_size("application/vnd.apache.parquet", body) >= frame.memory_usage().sum()


def test_large_requests_take_turns_small_ones_never_wait() -> None:
    gate = MemoryGate(capacity=10 * LARGE)
    order: list[str] = []
    with gate.reserve(8 * LARGE, timeout=1):
        with gate.reserve(10, timeout=0):  # small: no wait, no budget
            order.append("small")

        def second() -> None:
            with gate.reserve(8 * LARGE, timeout=5):
                order.append("2nd")

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.2)
        assert order == ["small"]  # the second large one waits for the first
        order.append("1st done")
    waiter.join(5)
    assert order == ["small", "1st done", "2nd"]


def test_a_large_request_that_never_gets_room_times_out() -> None:
    gate = MemoryGate(capacity=10 * LARGE)
    with gate.reserve(8 * LARGE, timeout=1), pytest.raises(TimeoutError):  # noqa: SIM117
        with gate.reserve(8 * LARGE, timeout=0.1):
            pass
    with gate.reserve(30 * LARGE, timeout=0):  # alone, even an over-large one runs
        assert gate.used == 30 * LARGE
    assert gate.used == 0


def test_past_the_budget_a_request_is_413_before_decoding(loaded_models: dict) -> None:
    from werkzeug.test import Client

    from mlimg_runtime.app import create_app
    from mlimg_runtime.model import ServedModel

    served = ServedModel()
    served.set(loaded_models["sklearn"], "3.17.2")
    client = Client(create_app(served, ServerConfig(max_decoded_bytes=4 * MIB)))
    columns = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    small = pd.DataFrame([[5.1, 3.5, 1.4, 0.2]] * 1000, columns=columns).to_csv(index=False)
    assert client.post("/invocations", data=small, content_type="text/csv").status_code == 200
    large = pd.DataFrame([[5.1, 3.5, 1.4, 0.2]] * 100_000, columns=columns).to_csv(index=False)
    response = client.post("/invocations", data=large, content_type="text/csv")
    assert response.status_code == 413
    assert "MLIMG_MAX_DECODED_BYTES" in response.get_json()["message"]
