"""OpenAI's routes without a server: which kind answers which route, the request as the
model's payload, a ChatAgent's answers and deltas as chat completions; the model kinds."""

from __future__ import annotations

import pytest

from mlimg_runtime import contract
from mlimg_runtime.errors import BadRequest
from mlimg_runtime.model import Signature
from mlimg_runtime.openai_compat import (
    AS_THE_MODEL_ANSWERS,
    ChatAgentCompletions,
    events,
    model_list,
    model_payload,
    unanswered,
)

CHAT_MODEL, CHAT_AGENT, RESPONSES_AGENT = contract.MODEL_KINDS


def test_the_kind_is_mlflows_task_and_streaming_its_pyfunc_flavor() -> None:
    assert contract.model_kind({"task": "agent/v1/chat"}) is CHAT_MODEL
    assert contract.model_kind({"task": "agent/v2/chat"}) is CHAT_AGENT
    assert contract.model_kind({"task": "agent/v1/responses"}) is RESPONSES_AGENT
    for metadata in (None, {}, {"task": "llm/v1/embeddings"}, "nonsense"):
        assert contract.model_kind(metadata) is contract.PYFUNC_KIND
    assert contract.streams({"python_function": {"streamable": True}})
    assert not contract.streams({"python_function": {"loader_module": "mlflow.sklearn"}})
    assert not contract.streams({"sklearn": {"streamable": True}})
    assert not contract.streams(None)


def test_only_raw_chat_payloads_are_answered_unwrapped() -> None:
    assert contract.answered_unwrapped({"messages": []})
    assert contract.answered_unwrapped({"input": [], "stream": True})
    assert not contract.answered_unwrapped({"inputs": "x"})
    assert not contract.answered_unwrapped({"messages": [], "inputs": "x"})
    assert not contract.answered_unwrapped([{"messages": []}])


def test_a_route_of_another_kind_is_refused_with_the_routes_the_model_has() -> None:
    assert unanswered(CHAT_MODEL, contract.CHAT_COMPLETIONS) is None
    assert unanswered(RESPONSES_AGENT, "/responses") is None
    message = unanswered(CHAT_MODEL, contract.RESPONSES)
    assert message == (
        "/v1/responses is not a route of this model (a ChatModel); its routes are "
        "/invocations, /v1/chat/completions, /v1/models"
    )
    assert "its routes are /invocations, /v1/models" in unanswered(
        contract.PYFUNC_KIND, contract.CHAT_COMPLETIONS
    )


def test_fields_the_signature_does_not_name_are_dropped() -> None:
    signature = Signature(input_names=frozenset({"messages", "temperature"}))
    payload = {"model": "gpt-x", "messages": [], "temperature": 0.2, "stream": True, "n": 1}
    assert model_payload(CHAT_MODEL, payload, signature) == {
        "messages": [],
        "temperature": 0.2,
        "stream": True,
    }
    # without named inputs, only `model` goes
    assert model_payload(CHAT_MODEL, {"model": "x", "messages": []}, Signature()) == {
        "messages": []
    }
    with pytest.raises(BadRequest, match="must be a JSON object"):
        model_payload(CHAT_MODEL, [1, 2], signature)


def test_a_string_input_to_the_responses_api_is_one_user_message() -> None:
    payload = model_payload(RESPONSES_AGENT, {"model": "x", "input": "hi"}, Signature())
    assert payload == {"input": [{"role": "user", "content": "hi"}]}
    listed = [{"role": "user", "content": "hi"}]
    assert model_payload(RESPONSES_AGENT, {"input": listed}, Signature()) == {"input": listed}


def test_a_chat_agent_answers_chat_completions() -> None:
    translate = events(CHAT_AGENT, contract.CHAT_COMPLETIONS, "my-agent")
    assert isinstance(translate, ChatAgentCompletions)
    answer = {
        "messages": [
            {"role": "assistant", "content": "let me look", "id": "1"},
            {"role": "tool", "content": "42", "id": "2"},
            {"role": "assistant", "content": "it is 42", "id": "3"},
        ],
        "custom_outputs": {"k": 1},
    }
    completion = translate.whole(answer)
    assert completion["object"] == "chat.completion" and completion["model"] == "my-agent"
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "it is 42"},
            "finish_reason": "stop",
        }
    ]
    assert completion["custom_outputs"] == {"k": 1}


def test_a_chat_agents_assistant_deltas_are_chunks_and_the_end_says_stop() -> None:
    translate = events(CHAT_AGENT, contract.CHAT_COMPLETIONS, "m")
    chunks = [
        *translate.chunk({"delta": {"role": "assistant", "content": "it", "id": "1"}}),
        *translate.chunk({"delta": {"role": "tool", "content": "ignored", "id": "2"}}),
        *translate.chunk({"delta": {"role": "assistant", "content": "", "id": "1"}}),
        *translate.chunk({"delta": {"role": "assistant", "content": " is", "id": "1"}}),
        *translate.end(),
    ]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas == [{"role": "assistant", "content": "it"}, {"content": " is"}, {}]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None, None, "stop"]
    assert {chunk["id"] for chunk in chunks} == {translate.id}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)


def test_other_routes_answer_as_the_model_does() -> None:
    for kind, route in (
        (CHAT_MODEL, contract.CHAT_COMPLETIONS),
        (RESPONSES_AGENT, contract.RESPONSES),
        (CHAT_AGENT, "/invocations"),
        (contract.PYFUNC_KIND, "/invocations"),
    ):
        assert events(kind, route, "m") is AS_THE_MODEL_ANSWERS


def test_the_model_list_names_the_one_model() -> None:
    assert model_list("churn", 1700000000) == {
        "object": "list",
        "data": [{"id": "churn", "object": "model", "created": 1700000000, "owned_by": "mlimg"}],
    }
