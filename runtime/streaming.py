"""Streamed answers: a model's `predict_stream` as server-sent events, apart from any server.

    data: <chunk as JSON>\\n\\n     one event per chunk, sent as soon as the model yields it
    data: [DONE]\\n\\n              the end of a stream that ended well

the framing of MLflow's AgentServer. Chunks are serialised as MLflow serialises
`predict_stream`'s outputs (pydantic models and dataclasses as their dicts). A failure before
the first chunk is answered as any other request's (a JSON error and its status: the scorer
computes the first chunk before anything is sent); a failure after it is one event,
`data: {"error": {"error_code": ..., "message": ...}}`, and the stream ends there, without
`[DONE]`, so that a client can tell a stream cut short from one that ended.

The model's generator runs inside one `contextvars.Context` of its own, whichever request
thread advances it: what MLflow's tracing and prediction context keep in context variables
stays the stream's from chunk to chunk, as it would in a single thread.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from mlimg_runtime.codecs import json_default, jsonable
from mlimg_runtime.contract import STREAM_END
from mlimg_runtime.errors import PredictionFailed, RequestTimeout, ScoringError
from mlimg_runtime.model import sorted_failure
from mlimg_runtime.openai_compat import Events

log = logging.getLogger("mlimg_runtime")
CONTENT_TYPE = "text/event-stream"
END = object()  # what next() gives at the end of the model's generator
DONE_FRAME = f"data: {STREAM_END}\n\n".encode()


def frame(event: Any) -> bytes:
    """One server-sent event holding `event` as JSON."""
    return b"data: " + json.dumps(jsonable(event), default=json_default).encode() + b"\n\n"


def error_frame(error: ScoringError) -> bytes:
    return frame({"error": {"error_code": error.error_code, "message": error.message}})


def first_chunk(model: Any, data: Any, params: dict[str, Any]) -> tuple[Iterator[Any], Any]:
    """The model's stream of `data`, and its first chunk (END if it yields none)."""
    chunks = model.predict_stream(data, params or None)
    return chunks, next(chunks, END)


def close_chunks(context: contextvars.Context, chunks: Any) -> None:
    """Close the model's generator in its context (its `finally` runs); never while it runs."""
    close = getattr(chunks, "close", None)
    if close is None:  # an iterator that is not a generator: nothing to close
        return
    try:
        context.run(close)
    except Exception:
        log.exception("the model's stream failed while closing")


class Stream:
    """The events of one streamed answer, pulled one at a time by the server: a WSGI body
    (iterable, with `close`), whose every `next()` computes at most one of the model's chunks
    (the server runs each in a request thread, so that a thread is held only meanwhile).

    `first` is the model's first chunk (or END), computed by the scorer under the request's
    deadline; `trace_id`, when given, is asked for the id of the trace the stream recorded,
    sent as an event of its own before `[DONE]`, as AgentServer sends it.
    """

    def __init__(
        self,
        chunks: Iterator[Any],
        context: contextvars.Context,
        first: Any,
        events: Events,
        trace_id: Callable[[], str | None] | None = None,
        tracebacks: bool = False,
    ) -> None:
        self._chunks = chunks
        self._context = context
        self._events = events
        self._trace_id = trace_id
        self._tracebacks = tracebacks
        self._pending: list[bytes] = []
        self._finished = False  # the model's generator has ended (or failed)
        self._closed = False
        self.chunks = 0  # the model's chunks so far
        self.started = time.monotonic()
        self._take(first)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> bytes:
        while not self._pending:
            if self._finished:
                raise StopIteration
            try:
                chunk = self._context.run(next, self._chunks, END)
            except Exception as exc:
                self.fail(sorted_failure(exc, self._tracebacks))
            else:
                self._take(chunk)
        return self._pending.pop(0)

    def _take(self, chunk: Any) -> None:
        """A chunk of the model's as events; at its end, what closes the stream."""
        if chunk is END:
            self._finished = True
            self._pending += [frame(event) for event in self._events.end()]
            if self._trace_id is not None:
                trace_id = self._context.run(self._trace_id)
                if trace_id:
                    self._pending.append(frame({"trace_id": trace_id}))
            self._pending.append(DONE_FRAME)
            return
        self.chunks += 1
        try:
            self._pending += [frame(event) for event in self._events.chunk(chunk)]
        except (TypeError, ValueError) as exc:
            message = f"the model's chunk cannot be encoded as JSON: {exc}"
            log.error("%s", message)
            self.fail(PredictionFailed(message))

    def fail(self, error: ScoringError) -> bytes:
        """End the stream with `error`'s event (after what is pending); that event."""
        self._finished = True
        event = error_frame(error)
        self._pending.append(event)
        return event

    def timed_out(self, seconds: float) -> bytes:
        """The event that ends a stream whose model gave no chunk for `seconds` (asked by the
        server while a `next()` still runs: nothing of the stream's state is touched but
        `_finished`, which stops it)."""
        log.error("a stream's model gave no chunk for %ss; the stream ends", seconds)
        self._finished = True
        return error_frame(
            RequestTimeout(
                f"the model gave no chunk for {seconds:g}s (MLIMG_STREAM_TIMEOUT); "
                "the stream ends here"
            )
        )

    def close(self) -> None:
        """Close the model's generator (its `finally` runs); never while a `next()` runs."""
        if not self._closed:
            self._closed = True
            close_chunks(self._context, self._chunks)
