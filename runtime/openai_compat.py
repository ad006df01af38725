"""The OpenAI-compatible routes, apart from any HTTP server: what each hands the model, and
what it answers, so that the `openai` client works unchanged with `base_url=.../v1`.

    POST /v1/chat/completions   ChatModel (its answers and chunks are OpenAI's already) and
                                ChatAgent (its messages and deltas made chat completions)
    POST /v1/responses          ResponsesAgent (its answers and events are the Responses API's);
         /responses             also, as MLflow's AgentServer routes it
    GET  /v1/models             the one model, by MLIMG_MODEL_NAME

A route is answered only for the kinds `contract.MODEL_KINDS` gives it; for any other model it
is a 404 naming the routes the model has. The request's `model` field is accepted whatever it
says: fields the model's signature does not name are dropped, as mlflow.pyfunc would drop them
(with a warning for every request).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from mlimg_runtime.contract import CHAT_COMPLETIONS, MODELS, ModelKind
from mlimg_runtime.errors import BadRequest
from mlimg_runtime.model import Signature


def unanswered(kind: ModelKind, route: str) -> str | None:
    """Why `route` is not answered for a model of `kind`; None when it is."""
    if route in kind.routes:
        return None
    routes = ", ".join(["/invocations", *kind.routes, MODELS])
    return f"{route} is not a route of this model (a {kind.name}); its routes are {routes}"


def model_payload(kind: ModelKind, payload: Any, signature: Signature) -> dict[str, Any]:
    """The request to a route, as the model's payload on /invocations would be."""
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object")
    if kind.name == "ResponsesAgent" and isinstance(payload.get("input"), str):
        # The Responses API's shorthand: a string input is one message from the user.
        payload = {**payload, "input": [{"role": "user", "content": payload["input"]}]}
    names = signature.input_names | signature.param_names
    if names:
        payload = {key: value for key, value in payload.items() if key in names or key == "stream"}
    else:
        payload = {key: value for key, value in payload.items() if key != "model"}
    return payload


class Events:
    """How a model's output reaches a client of one route: whole, and chunk by chunk."""

    def whole(self, answer: Any) -> Any:
        return answer

    def chunk(self, chunk: Any) -> Iterable[Any]:
        """The events one chunk of the model's stream makes (none, one or several)."""
        return (chunk,)

    def end(self) -> Iterable[Any]:
        """The events after the model's last chunk, before the end marker."""
        return ()


AS_THE_MODEL_ANSWERS = Events()


class ChatAgentCompletions(Events):
    """A ChatAgent on /v1/chat/completions: its last assistant message is the completion's
    message, and its assistant deltas are the chunks' (`chat.completion.chunk`), ended by an
    empty delta with `finish_reason: stop`, as OpenAI ends a stream."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.started = False

    def whole(self, answer: Any) -> Any:
        messages = answer.get("messages") if isinstance(answer, dict) else None
        final = next(
            (
                message
                for message in reversed(messages or [])
                if isinstance(message, dict)
                and message.get("role") == "assistant"
                and message.get("content")
            ),
            {},
        )
        completion = self._frame("chat.completion")
        completion["choices"] = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": final.get("content", "")},
                "finish_reason": "stop",
            }
        ]
        if isinstance(answer, dict) and answer.get("custom_outputs") is not None:
            completion["custom_outputs"] = answer["custom_outputs"]
        return completion

    def chunk(self, chunk: Any) -> Iterable[Any]:
        delta = chunk.get("delta") if isinstance(chunk, dict) else None
        if not isinstance(delta, dict) or delta.get("role", "assistant") != "assistant":
            return ()  # tool calls and their results are the agent's own business
        content = delta.get("content")
        if not content:
            return ()
        out: dict[str, Any] = {"content": content}
        if not self.started:
            out = {"role": "assistant", **out}
            self.started = True
        return (self._chunk(out, None),)

    def end(self) -> Iterable[Any]:
        return (self._chunk({}, "stop"),)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        frame = self._frame("chat.completion.chunk")
        frame["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        return frame

    def _frame(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_name}


def events(kind: ModelKind, route: str, model_name: str) -> Events:
    """How the answers of a model of `kind` on `route` are given."""
    if kind.name == "ChatAgent" and route == CHAT_COMPLETIONS:
        return ChatAgentCompletions(model_name)
    return AS_THE_MODEL_ANSWERS


def model_list(model_name: str, created: int) -> dict[str, Any]:
    """GET /v1/models: the one model this server serves."""
    model = {"id": model_name, "object": "model", "created": created, "owned_by": "mlimg"}
    return {"object": "list", "data": [model]}
