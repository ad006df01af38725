"""What one request may cost in memory, and memory given back after large ones.

A request's decoded input is estimated before it is decoded (`codecs.decoded_size`): past
MLIMG_MAX_DECODED_BYTES it is 413. Below it, a large request (over 1 MiB decoded) takes its
estimate from the worker's budget (the same number) for as long as it is decoded and
predicted, so that a worker never holds more than one budget's worth of large inputs at once;
small requests pass freely. When a large request ends, the C allocator is asked to give back
what it freed: glibc keeps freed memory otherwise (ARCHITECTURE.md, "Measurements").
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
import time
from collections.abc import Iterator
from typing import Any

LARGE = 1024 * 1024  # a request estimated above this takes from the worker's budget


class MemoryGate:
    """A per-worker budget of bytes that large requests hold while they run."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, cost: int, timeout: float) -> Iterator[None]:
        """Hold `cost` bytes of the budget (waiting at most `timeout` seconds for them, then
        TimeoutError); a cost under LARGE holds nothing. One request alone always fits."""
        if cost < LARGE:
            yield
            return
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.used and self.used + cost > self.capacity:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self._changed.wait(remaining)
            self.used += cost
        try:
            yield
        finally:
            with self._changed:
                self.used -= cost
                self._changed.notify_all()
            release_memory()


def release_memory() -> None:
    """Return freed heap memory to the system (glibc's malloc_trim); nothing elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
