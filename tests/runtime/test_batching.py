"""Adaptive batching: concurrent frames are predicted together, and each request still gets
exactly its own answer (or its own error)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from mlimg_runtime.batching import Batcher, _Request, split_rows
from mlimg_runtime.codecs import Rows
from mlimg_runtime.model import row_wise


class RowWiseModel:
    """Doubles column x; refuses negative values; can be held inside a call by a test."""

    def __init__(self, output: str = "array") -> None:
        self.calls: list[int] = []  # rows per call
        self.hold = threading.Event()
        self.hold.set()
        self.inside = threading.Event()
        self.output = output

    def predict(self, frame: pd.DataFrame):
        self.calls.append(len(frame))
        self.inside.set()
        self.hold.wait(10)
        if (frame["x"] < 0).any():
            raise ValueError("negative x")
        doubled = frame["x"].to_numpy() * 2
        if self.output == "dict":
            return {"sum": float(doubled.sum())}
        return doubled


def frame(*values: float, column: str = "x") -> pd.DataFrame:
    return pd.DataFrame({column: list(values)})


def wait_until(condition, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def hold_first_call(model: RowWiseModel, batcher: Batcher, pool: ThreadPoolExecutor):
    """Start one request and keep it inside predict, so that the next ones queue."""
    model.hold.clear()
    first = pool.submit(batcher.predict, frame(0.5), 10)
    assert model.inside.wait(5)
    return first


def test_requests_queued_during_a_call_are_predicted_together() -> None:
    model = RowWiseModel()
    batcher = Batcher(model.predict, max_rows=64, max_wait=0)
    with ThreadPoolExecutor(8) as pool:
        first = hold_first_call(model, batcher, pool)
        later = [pool.submit(batcher.predict, frame(i, i + 0.5), 10) for i in range(5)]
        wait_until(lambda: batcher.queued == 5)
        model.hold.set()
        assert first.result(5).tolist() == [1.0]
        answers = [future.result(5).tolist() for future in later]
    assert answers == [[2 * i, 2 * i + 1] for i in range(5)]
    assert model.calls == [1, 10]


def test_a_lone_request_never_waits_for_company() -> None:
    model = RowWiseModel()
    batcher = Batcher(model.predict, max_rows=64, max_wait=5)
    started = time.monotonic()
    assert batcher.predict(frame(1, 2), 10).tolist() == [2, 4]
    assert time.monotonic() - started < 1
    assert model.calls == [2]


def test_a_batch_is_bounded_by_max_rows() -> None:
    model = RowWiseModel()
    batcher = Batcher(model.predict, max_rows=4, max_wait=0)
    with ThreadPoolExecutor(8) as pool:
        first = hold_first_call(model, batcher, pool)
        later = [pool.submit(batcher.predict, frame(i, i), 10) for i in range(5)]
        wait_until(lambda: batcher.queued == 5)
        model.hold.set()
        first.result(5)
        assert [f.result(5).tolist() for f in later] == [[2 * i, 2 * i] for i in range(5)]
    assert model.calls[0] == 1 and max(model.calls[1:]) <= 4 and sum(model.calls) == 11


def test_a_failing_batch_is_retried_one_by_one_so_only_the_bad_request_fails() -> None:
    model = RowWiseModel()
    batcher = Batcher(model.predict, max_rows=64, max_wait=0)
    with ThreadPoolExecutor(8) as pool:
        first = hold_first_call(model, batcher, pool)
        good = pool.submit(batcher.predict, frame(1), 10)
        bad = pool.submit(batcher.predict, frame(-1), 10)
        wait_until(lambda: batcher.queued == 2)
        model.hold.set()
        first.result(5)
        assert good.result(5).tolist() == [2]
        with pytest.raises(ValueError, match="negative x"):
            bad.result(5)


def rows(*values, column: str = "x") -> Rows:
    return Rows((column,), [[value] for value in values], (type(values[0]),))


def test_plain_rows_of_one_key_join_into_one_call_and_get_their_own_rows() -> None:
    model = RowWiseModel()
    batcher = Batcher(model.predict, max_rows=64, max_wait=0)
    inputs = [rows(1.0, 2.0), rows(3.0), rows(4, 5), frame(6.0)]
    with ThreadPoolExecutor(8) as pool:
        first = hold_first_call(model, batcher, pool)
        later = [pool.submit(batcher.predict, data, 10) for data in inputs]
        wait_until(lambda: batcher.queued == 4)
        model.hold.set()
        first.result(5)
        answers = [future.result(5).tolist() for future in later]
    assert answers == [[2.0, 4.0], [6.0], [8, 10], [12.0]]
    # the float rows in one call; the int rows, and the DataFrame, each in calls of their own
    assert sorted(model.calls[1:]) == [1, 2, 3]


def test_frames_of_different_columns_are_never_mixed() -> None:
    calls: list[tuple[list[str], int]] = []
    model = RowWiseModel()

    def predict(data: pd.DataFrame):
        calls.append((list(data.columns), len(data)))
        return model.predict(data.rename(columns={"y": "x"}))

    batcher = Batcher(predict, max_rows=64, max_wait=0)
    with ThreadPoolExecutor(4) as pool:
        first = hold_first_call(model, batcher, pool)
        answers = [
            pool.submit(batcher.predict, data, 10) for data in (frame(1), frame(2, column="y"))
        ]
        wait_until(lambda: batcher.queued == 2)
        answers.append(pool.submit(batcher.predict, frame(3), 10))
        wait_until(lambda: batcher.queued == 3)
        model.hold.set()
        first.result(5)
        assert [future.result(5).tolist() for future in answers] == [[2], [4], [6]]
    assert sorted(calls[1:]) == [(["x"], 2), (["y"], 1)]


def test_an_output_that_cannot_be_split_turns_batching_off() -> None:
    model = RowWiseModel(output="dict")
    batcher = Batcher(model.predict, max_rows=64, max_wait=0)
    with ThreadPoolExecutor(8) as pool:
        first = hold_first_call(model, batcher, pool)
        later = [pool.submit(batcher.predict, frame(i), 10) for i in (1, 2)]
        wait_until(lambda: batcher.queued == 2)
        model.hold.set()
        first.result(5)
        assert [f.result(5) for f in later] == [{"sum": 2.0}, {"sum": 4.0}]
    assert not batcher.enabled
    assert not batcher.accepts(frame(1))


def test_a_queued_request_times_out_while_another_call_runs() -> None:
    model = RowWiseModel()
    batcher = Batcher(model.predict, max_rows=64, max_wait=0)
    with ThreadPoolExecutor(4) as pool:
        first = hold_first_call(model, batcher, pool)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            batcher.predict(frame(1), 0.2)
        assert 0.15 < time.monotonic() - started < 3
        model.hold.set()
        first.result(5)


def test_a_request_that_timed_out_does_not_keep_the_next_one_waiting() -> None:
    model = RowWiseModel()
    batcher = Batcher(model.predict, max_rows=64, max_wait=0)
    with ThreadPoolExecutor(4) as pool:
        first = hold_first_call(model, batcher, pool)
        given_up = pool.submit(batcher.predict, frame(1), 0.2)
        wait_until(lambda: batcher.queued == 1)
        patient = pool.submit(batcher.predict, frame(2), 30)
        with pytest.raises(TimeoutError):
            given_up.result(5)
        assert batcher.queued == 1  # the one that gave up left the queue
        model.hold.set()
        first.result(5)
        assert patient.result(5).tolist() == [4]  # long before its own 30 s deadline
    assert model.calls == [1, 1]


def test_many_threads_get_exactly_their_own_rows() -> None:
    model = RowWiseModel()
    batcher = Batcher(model.predict, max_rows=16, max_wait=0.002)
    inputs = [frame(*range(i % 5 + 1)) + i for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda data: batcher.predict(data, 10), inputs))
    for data, answer in zip(inputs, answers, strict=True):
        assert answer.tolist() == (data["x"] * 2).tolist()
    assert sum(model.calls) == sum(len(data) for data in inputs)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (np.arange(5), [[0, 1], [2, 3, 4]]),
        (np.arange(10).reshape(5, 2), [[[0, 1], [2, 3]], [[4, 5], [6, 7], [8, 9]]]),
        (pd.Series(range(5)), [[0, 1], [2, 3, 4]]),
        (list("abcde"), [["a", "b"], ["c", "d", "e"]]),
    ],
)
def test_split_rows_cuts_outputs_with_one_row_per_input_row(output, expected) -> None:
    parts = split_rows(output, [2, 3])
    assert [list(p.tolist() if hasattr(p, "tolist") else p) for p in parts] == expected


def test_split_rows_cuts_frames_keeping_columns() -> None:
    output = pd.DataFrame({"a": range(3), "b": list("xyz")})
    first, second = split_rows(output, [1, 2])
    assert first.to_dict(orient="records") == [{"a": 0, "b": "x"}]
    assert second.to_dict(orient="records") == [{"a": 1, "b": "y"}, {"a": 2, "b": "z"}]


@pytest.mark.parametrize("output", [{"a": [1, 2, 3]}, "text", 3.0, np.arange(4), np.float64(1)])
def test_split_rows_refuses_outputs_without_one_row_per_input_row(output) -> None:
    assert split_rows(output, [2, 3]) is None


def test_row_wise_flavors() -> None:
    assert row_wise({"python_function": {}, "sklearn": {}})
    assert not row_wise({"python_function": {}})
    assert not row_wise(None)


class Fault(Exception):
    """Injected by a test."""


# Every step of the batch path a fault can be injected into, as (object, attribute).
FAULT_POINTS = [
    ("batcher", "_take"),
    ("batcher", "_next_batch"),
    ("batcher", "predict_batch"),
    ("batcher", "_predict_group"),
    ("module", "_joined"),
    ("module", "split_rows"),
    ("module", "as_frame"),
    ("model", "predict"),
]


@pytest.mark.parametrize(("where", "name"), FAULT_POINTS)
def test_a_fault_anywhere_in_a_batch_answers_every_request_in_time(
    where: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests under concurrency, a fault raised at one step (every other call): each request
    ends with its predictions, an error or TimeoutError by its deadline plus a second, and no
    thread spins (the number of batches led stays small)."""
    import mlimg_runtime.batching as batching

    model = RowWiseModel()
    batcher = Batcher(model.predict, max_rows=64, max_wait=0.002)
    target = {"batcher": batcher, "module": batching, "model": model}[where]
    original = getattr(target, name)
    calls = {"n": 0}

    def faulty(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 2:
            raise Fault(f"injected into {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, faulty)
    led = {"n": 0}

    class CountedLock:  # counts the turns taken to lead a batch
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def acquire(self, blocking: bool = True) -> bool:
            taken = self.lock.acquire(blocking)
            led["n"] += taken
            return taken

        def release(self) -> None:
            self.lock.release()

    batcher._leading = CountedLock()
    timeout = 1.0

    def one(i: int) -> tuple[str, float]:
        started = time.monotonic()
        try:
            batcher.predict(frame(i), timeout)
            outcome = "answer"
        except TimeoutError:
            outcome = "timeout"
        except Exception as exc:
            outcome = type(exc).__name__
        return outcome, time.monotonic() - started

    pool = ThreadPoolExecutor(16)
    futures = [pool.submit(one, i) for i in range(48)]
    done, _ = concurrent.futures.wait(futures, timeout=timeout + 5)
    pool.shutdown(wait=False)
    assert len(done) == 48, f"{48 - len(done)} requests never answered; {led['n']} batches led"
    results = [future.result() for future in futures]
    assert all(seconds < timeout + 1 for _, seconds in results), results
    assert {outcome for outcome, _ in results} <= {"answer", "timeout", "Fault", "PredictionFailed"}
    assert led["n"] < 200, f"{led['n']} batches led for 48 requests: a thread spins"


def test_a_leader_does_not_predict_a_request_past_its_deadline() -> None:
    model = RowWiseModel()
    batcher = Batcher(model.predict, max_rows=64, max_wait=0)
    expired = _Request(frame(7.0), time.monotonic() - 0.1)
    live = _Request(frame(1.0), time.monotonic() + 5)
    batcher.predict_batch([expired, live])
    assert model.calls == [1]
    with pytest.raises(TimeoutError):
        expired.outcome()
    assert live.outcome().tolist() == [2.0]
