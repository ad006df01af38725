"""Adaptive batching: requests that arrive together are predicted in one call.

A model's `predict` costs nearly the same for one row as for sixty (most of it schema checks
and input validation; ARCHITECTURE.md, "Measurements"), so under concurrent load most of the
work is per call, not per row. Request threads queue their decoded input in the `Batcher`: a
DataFrame, or the `Rows` of a plain `dataframe_split`, which join into one frame at the price
of one. A batch takes what has queued, up to `max_rows` rows (waiting `max_wait` seconds for
more when asked to), predicts the inputs of the same key in one call and gives each request
its own rows back. With `max_wait` 0 nothing is delayed: a batch is whatever queued while the
previous call ran, so a lone request goes straight through.

Only row-wise models may be batched (a row's prediction must not depend on the other rows);
`row_wise` says which are. An output that cannot be split per row turns batching off for good,
and a batch whose call fails is retried request by request so that each gets its own answer.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from mlimg_runtime.codecs import Rows, as_frame
from mlimg_runtime.errors import PredictionFailed

log = logging.getLogger("mlimg_runtime")

_POLL_SECONDS = 0.0002


class _Arrival:
    """One request between its arrival and its queueing (or its leaving without a batch)."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher: Batcher | None = batcher

    def arrived(self) -> None:
        if self._batcher is not None:
            self._batcher._arrived()
            self._batcher = None


class _Request:
    """One request's input in the queue, and what predicting it gave."""

    __slots__ = ("_turn", "data", "deadline", "done", "error", "key", "result", "taken")

    def __init__(self, data: pd.DataFrame | Rows, deadline: float) -> None:
        self.data = data
        self.deadline = deadline
        self.taken = False  # taken from the queue into a batch
        # Inputs join a batch only when their columns and types are the same.
        if isinstance(data, Rows):
            self.key: tuple = data.key
        else:
            self.key = ("frame", tuple(data.columns), tuple(data.dtypes.tolist()))
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        # Released when the result is in, or when the thread that waits for it may lead the
        # next batch: each waiter is woken for itself alone. A bare lock, as handing it over
        # costs a fraction of an Event's.
        self._turn = threading.Lock()
        self._turn.acquire()

    def answer(self, result: Any) -> None:
        self.result = result
        self.done = True
        self.wake()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.done = True
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # already woken and not yet waited for
            self._turn.release()

    def wait(self, timeout: float) -> None:
        self._turn.acquire(timeout=timeout)

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class Batcher:
    """Predicts frames from many request threads in as few calls as it can.

    There is no batching thread: the first request thread that finds no batch running becomes
    the leader, predicts what has queued and wakes the others; a thread whose frame is still
    queued when a batch ends may lead the next. A lone request thus predicts in its own
    thread, with no hand-off to another, and under load a batch is what queued meanwhile.
    """

    def __init__(
        self, predict: Callable[[pd.DataFrame], Any], max_rows: int, max_wait: float
    ) -> None:
        self._predict = predict
        self.max_rows = max_rows
        self.max_wait = max_wait
        self.enabled = True  # turned off if the model's output cannot be split per row
        self._queue: collections.deque[_Request] = collections.deque()
        self._leading = threading.Lock()
        self._arriving = 0  # requests being decoded that may join the next batch
        self._expected = 1  # requests in the last batch: how many to wait for in the next
        self._count_lock = threading.Lock()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def accepts(self, data: Any) -> bool:
        batchable = isinstance(data, (pd.DataFrame, Rows))
        return self.enabled and batchable and len(data) <= self.max_rows

    @contextlib.contextmanager
    def arrival(self) -> Iterator[_Arrival]:
        """Marks a request that is being decoded: a batch about to start waits for it (at most
        `max_wait`) rather than leave it for the next call. A lone request makes nothing wait."""
        arrival = _Arrival(self)
        with self._count_lock:
            self._arriving += 1
        try:
            yield arrival
        finally:
            arrival.arrived()

    def _arrived(self) -> None:
        with self._count_lock:
            self._arriving -= 1

    def predict(
        self, data: pd.DataFrame | Rows, timeout: float, arrival: _Arrival | None = None
    ) -> Any:
        """The predictions for `data` (or what predicting it raised), within `timeout` seconds
        unless this thread is itself predicting; TimeoutError when they do not come in time.

        Whatever raises anywhere in a batch, every request taken into it is answered: with
        its predictions, with the error, or with TimeoutError once its deadline has passed.
        """
        request = _Request(data, time.monotonic() + timeout)
        self._queue.append(request)
        if arrival is not None:
            arrival.arrived()
        while not request.done:
            if self._leading.acquire(blocking=False):
                try:
                    self._lead()
                finally:
                    self._leading.release()
                # Whoever queued first and is still waiting may lead next. A request queued
                # after this look finds the lock free itself: no request is left behind.
                self._wake_first()
                if request.taken and not request.done:  # a batch ended without answering it
                    request.fail(PredictionFailed("internal error: the batch lost a request"))
                continue
            remaining = request.deadline - time.monotonic()
            if remaining <= 0:
                # Not predicted for nobody, and not holding the next turn to lead: a request
                # queued behind it would otherwise wait for its own deadline too.
                with contextlib.suppress(ValueError):  # already taken into a batch
                    self._queue.remove(request)
                self._wake_first()
                raise TimeoutError
            request.wait(remaining)
        return request.outcome()

    def _lead(self) -> None:
        """Take a batch and predict it; never raises, and answers every request it took."""
        batch: list[_Request] = []
        try:
            self._next_batch(batch)
            self.predict_batch(batch)
        except BaseException as exc:
            log.error("a batch of %d request(s) failed: %r", len(batch), exc)
            failure = PredictionFailed(f"internal error while predicting: {type(exc).__name__}")
            for request in batch:
                if not request.done:
                    request.fail(failure)

    def _wake_first(self) -> None:
        if self._queue:
            with contextlib.suppress(IndexError):
                self._queue[0].wake()

    def _next_batch(self, batch: list[_Request]) -> None:
        """What has queued, into `batch`; then, while requests are being decoded or fewer have
        come than in the last batch, what queues within `max_wait` (so a lone client never
        waits). `batch` holds what was taken even if this raises."""
        batch += self._take()
        if not batch:  # this thread's request was predicted by the leader that just finished
            return
        rows = sum(len(request.data) for request in batch)
        deadline = time.monotonic() + self.max_wait
        while (
            rows < self.max_rows
            and (self._arriving > 0 or len(batch) < self._expected)
            and time.monotonic() < deadline
        ):
            # Sleeping releases the GIL, so that the threads decoding requests can queue them.
            time.sleep(_POLL_SECONDS)
            more = self._take(self.max_rows - rows)
            batch += more
            rows += sum(len(request.data) for request in more)
        self._expected = len(batch)

    def _take(self, room: int | None = None) -> list[_Request]:
        """Queued requests, oldest first, up to `room` rows (the oldest one always, when `room`
        is not given)."""
        first = room is None
        room = self.max_rows if room is None else room
        taken: list[_Request] = []
        while self._queue:
            size = len(self._queue[0].data)
            if size > room and (taken or not first):
                break
            request = self._queue.popleft()
            request.taken = True
            taken.append(request)
            room -= size
        return taken

    def predict_batch(self, batch: list[_Request]) -> None:
        """Predict each group of same-keyed inputs in one call. A request whose deadline has
        passed is not predicted: its thread has answered 504, or is about to."""
        groups: dict[tuple, list[_Request]] = {}
        now = time.monotonic()
        for request in batch:
            if request.deadline <= now:
                request.fail(TimeoutError())
            else:
                groups.setdefault(request.key, []).append(request)
        for group in groups.values():
            if len(group) == 1 or not self.enabled:
                for request in group:
                    self._predict_one(request)
            else:
                self._predict_group(group)

    def _predict_group(self, group: list[_Request]) -> None:
        lengths = [len(request.data) for request in group]
        try:
            output = self._predict(_joined([request.data for request in group]))
        except Exception:  # retried one by one, so that each request gets its own error
            for request in group:
                self._predict_one(request)
            return
        parts = split_rows(output, lengths)
        if parts is None:
            log.warning(
                "the model's output (%s) cannot be split per row; batching is off",
                type(output).__name__,
            )
            self.enabled = False
            for request in group:
                self._predict_one(request)
            return
        for request, part in zip(group, parts):  # as many parts as lengths
            request.answer(part)

    def _predict_one(self, request: _Request) -> None:
        try:
            result = self._predict(as_frame(request.data))
        except BaseException as exc:  # handed to the request thread that waits for it
            request.fail(exc)
        else:
            request.answer(result)


def _joined(inputs: list[Any]) -> pd.DataFrame:
    """One frame of same-keyed inputs end to end."""
    if isinstance(inputs[0], Rows):
        return Rows.joined(inputs)
    return pd.concat(inputs, ignore_index=True)


def split_rows(output: Any, lengths: list[int]) -> list[Any] | None:
    """`output` cut into consecutive parts of `lengths` rows, or None if it has no rows."""
    total = sum(lengths)
    if isinstance(output, (pd.DataFrame, pd.Series)) and len(output) == total:
        cut = output.iloc
    elif _rows(output) == total:
        cut = output
    else:
        return None
    parts, start = [], 0
    for length in lengths:
        parts.append(cut[start : start + length])
        start += length
    return parts


def _rows(output: Any) -> int | None:
    if isinstance(output, np.ndarray) and output.ndim >= 1:
        return output.shape[0]
    return len(output) if isinstance(output, list) else None
