"""Chat models and agents for the streaming tests, saved by mlflow itself as models from code.

One of each kind MLflow 3 defines: a `ChatModel`, a `ChatAgent`, a `ResponsesAgent`, a plain
`PythonModel` with `predict_stream` over a string, and a LangChain chain over langchain_core's
fake chat model. None needs a network or a key. Each takes, beside its input, the controls the
tests need: `delay` (seconds of sleep before each chunk), `fail_after` (raise after that many
chunks), `chunks` (how many to yield instead of the input's words) and `size` (characters in
each), from `custom_inputs` for the chat kinds and from params for the plain model. Each logs
`stream closed after N chunks` when its generator ends, however it ends, so that a test can
see the generator closed.

All but the LangChain chain have the example model's requirements, so their images share one
dependency layer with every other test image.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import Any

from tests.models import example_requirements

_COMMON = '''
import sys
import time
import uuid

import mlflow


def _controls(values):
    values = values or {}
    chunks, size = int(values.get("chunks", 0)), int(values.get("size", 0))
    return float(values.get("delay", 0)), int(values.get("fail_after", -1)), (chunks, size)


def _words(text, count):
    chunks, size = count
    if not chunks:
        return text.split(" ")
    return [f"w{i}".ljust(size, ".") for i in range(chunks)]


def _paced(words, delay, fail_after):
    """The words one at a time, `delay` before each; the generator says how it ended."""
    sent = 0
    try:
        for word in words:
            if sent == fail_after:
                raise RuntimeError(f"the model failed after {sent} chunks")
            if delay:
                time.sleep(delay)
            yield word
            sent += 1
    finally:
        print(f"stream closed after {sent} chunks", file=sys.stderr, flush=True)
'''

CODE = {
    "chat_model": """
from mlflow.pyfunc import ChatModel
from mlflow.types.llm import (
    ChatChoice,
    ChatChoiceDelta,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatMessage,
)


class Echo(ChatModel):
    def predict(self, context, messages, params):
        text = "echo: " + messages[-1].content
        return ChatCompletionResponse(
            id="chatcmpl-echo",
            model="echo",
            choices=[ChatChoice(index=0, message=ChatMessage(role="assistant", content=text))],
        )

    def predict_stream(self, context, messages, params):
        delay, fail_after, count = _controls(params.custom_inputs)
        words = _words("echo: " + messages[-1].content, count)
        for i, word in enumerate(_paced(words, delay, fail_after)):
            yield ChatCompletionChunk(
                id="chatcmpl-echo",
                model="echo",
                choices=[
                    ChatChunkChoice(
                        index=0,
                        delta=ChatChoiceDelta(
                            role="assistant" if i == 0 else None,
                            content=word if i == 0 else " " + word,
                        ),
                        finish_reason="stop" if i == len(words) - 1 else None,
                    )
                ],
            )


mlflow.models.set_model(Echo())
""",
    "chat_agent": """
from mlflow.pyfunc import ChatAgent
from mlflow.types.agent import ChatAgentChunk, ChatAgentMessage, ChatAgentResponse


class EchoAgent(ChatAgent):
    def predict(self, messages, context=None, custom_inputs=None):
        text = "echo: " + messages[-1].content
        return ChatAgentResponse(
            messages=[ChatAgentMessage(role="assistant", content=text, id="msg-1")]
        )

    def predict_stream(self, messages, context=None, custom_inputs=None):
        delay, fail_after, count = _controls(custom_inputs)
        words = _words("echo: " + messages[-1].content, count)
        for i, word in enumerate(_paced(words, delay, fail_after)):
            content = word if i == 0 else " " + word
            yield ChatAgentChunk(
                delta=ChatAgentMessage(role="assistant", content=content, id="msg-1")
            )


mlflow.models.set_model(EchoAgent())
""",
    "responses_agent": """
from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import ResponsesAgentResponse, ResponsesAgentStreamEvent


def _last_text(request):
    last = request.input[-1]
    content = getattr(last, "content", "")
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content)
    return content


class EchoResponses(ResponsesAgent):
    def predict(self, request):
        text = "echo: " + _last_text(request)
        item = self.create_text_output_item(text=text, id="msg-1")
        return ResponsesAgentResponse(output=[item], custom_outputs=request.custom_inputs)

    def predict_stream(self, request):
        delay, fail_after, count = _controls(request.custom_inputs)
        words = _words("echo: " + _last_text(request), count)
        text = []
        for i, word in enumerate(_paced(words, delay, fail_after)):
            delta = word if i == 0 else " " + word
            text.append(delta)
            yield ResponsesAgentStreamEvent(**self.create_text_delta(delta=delta, item_id="msg-1"))
        yield ResponsesAgentStreamEvent(
            type="response.output_item.done",
            item=self.create_text_output_item(text="".join(text), id="msg-1"),
        )


mlflow.models.set_model(EchoResponses())
""",
    "words": '''
class Words(mlflow.pyfunc.PythonModel):
    """Splits a string into words: whole, or one word a chunk."""

    def predict(self, context, model_input, params=None):
        texts = model_input.iloc[:, 0] if hasattr(model_input, "iloc") else [model_input]
        return [" ".join(str(text).split()) for text in texts]

    def predict_stream(self, context, model_input, params=None):
        delay, fail_after, count = _controls(params)
        for word in _paced(_words(str(model_input), count), delay, fail_after):
            yield {"word": word, "at": time.time()}


mlflow.models.set_model(Words())
''',
}

LANGCHAIN_CODE = """
import mlflow
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
model = FakeListChatModel(responses=["the answer is forty two"])
mlflow.models.set_model(prompt | model | StrOutputParser())
"""
# The chain's packages at the versions the tests install (pyproject's test extra).
LANGCHAIN_REQUIREMENTS = ["langchain==1.5.2", "langchain-core==1.8.3"]

EXAMPLES = {
    "chat_model": {"messages": [{"role": "user", "content": "hello there"}]},
    "chat_agent": {"messages": [{"role": "user", "content": "hello there"}]},
    "responses_agent": {"input": [{"role": "user", "content": "hello there"}]},
    "words": "hello big world",
}
GENAI_MODELS = (*CODE, "langchain")


def make_genai_model(name: str, dest: Path) -> Path:
    """The model `name` (one of GENAI_MODELS) saved at `dest`, with its input example.

    The agents trace every prediction, saving's check of the example included; with no
    tracking server named, MLflow would write the traces into the working directory. The
    tests' own process records none (servers and images under test trace as they are told).
    """
    import mlflow.pyfunc
    import mlflow.tracing

    mlflow.tracing.disable()

    code = dest.parent / f"{dest.name}_code.py"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "langchain":
            import mlflow.langchain

            code.write_text(textwrap.dedent(LANGCHAIN_CODE))
            mlflow.langchain.save_model(
                lc_model=str(code),
                path=dest,
                input_example={"question": "what is six times seven?"},
                pip_requirements=[*example_requirements(), *LANGCHAIN_REQUIREMENTS],
            )
            return dest
        code.write_text(_COMMON + CODE[name])
        mlflow.pyfunc.save_model(
            dest,
            python_model=str(code),
            input_example=EXAMPLES[name],
            signature=_signature(name),
            pip_requirements=example_requirements(),
        )
    return dest


def without(value: Any, *keys: str) -> Any:
    """`value` with `keys` removed at every depth: the times these models stamp on what they
    answer (`created`, `at`), which differ from one call to the next."""
    if isinstance(value, dict):
        return {k: without(v, *keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, *keys) for v in value]
    return value


def _signature(name: str):
    if name != "words":
        return None  # the chat kinds' signatures are MLflow's own
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [
                ParamSpec("delay", "double", 0.0),
                ParamSpec("fail_after", "long", -1),
                ParamSpec("chunks", "long", 0),
                ParamSpec("size", "long", 0),
            ]
        ),
    )
