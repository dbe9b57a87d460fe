"""The OpenAI request bodies the server accepts, and its one error shape.

Unknown fields are ignored, as OpenAI does; a field lmtune cannot honour but that would change
the answer (best_of, suffix on completions) is refused rather than dropped.

Thinking (templates/reasoning.py): an assistant message's reasoning comes as `reasoning_content`
(llama.cpp, SGLang, older vLLM) or `reasoning` (vLLM >= 0.10, Ollama), or as a think block in its
content; a request turns thinking on or off with vLLM's `chat_template_kwargs.enable_thinking`
(DeepSeek-V3.1's `thinking`) or OpenAI's `reasoning_effort` ("none": off).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.errors import LmtuneError
from lmtune.serve.toolcalls import check_request_tools, tool_conversation, uses_tools
from lmtune.templates.reasoning import CLOSE, OPEN, split_answer


class ApiError(Exception):
    """Answered as {"error": {"message", "type", "param", "code"}} with this HTTP status."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             429: "rate_limit_error", 500: "server_error", 503: "service_unavailable"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        # A message quoting the request may hold a lone surrogate ("\ud800" is valid JSON), which
        # UTF-8 cannot encode: escaped, so the error itself never fails to go out
        message, param = (text.encode("utf-8", "backslashreplace").decode("utf-8") if text else text for text in (message, param))
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def event(self) -> tuple:
        """As an event from a batcher or worker (picklable)."""
        return ("error", self.status, self.message, self.param, self.code)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None
    reasoning_content: str | None = None  # an assistant message's reasoning, as llama.cpp and SGLang name it
    reasoning: str | None = None  # the same, as vLLM >= 0.10 and Ollama name it
    tool_calls: list[dict] | None = None  # an assistant message's calls (serve/toolcalls.py)
    tool_call_id: str | None = None  # a tool message's call; results are shown in the order given

    def fields(self, index: int) -> dict:
        """The message as the backend takes it: role, content and, for an answer, its reasoning
        (the field, else the think block its content holds, which then leaves the content)."""
        content = self.text()
        if self.role != ASSISTANT:
            return {"role": self.role, "content": content}
        if self.tool_calls:
            return {"role": self.role, "content": content, "tool_calls": self.tool_calls, "reasoning": self.reasoning_content or self.reasoning}
        given = {name: value for name, value in (("reasoning_content", self.reasoning_content), ("reasoning", self.reasoning)) if value is not None}
        if len(set(given.values())) > 1:
            raise ApiError(400, f"messages[{index}]: reasoning_content and reasoning differ; give one of them", "messages")
        reasoning = next(iter(given.values()), None)
        if OPEN in content or CLOSE in content:
            try:
                found, content = split_answer(content)
            except ValueError as exc:
                raise ApiError(400, f"messages[{index}].content: {exc}", "messages") from None
            reasoning = found if reasoning is None else reasoning
        return {"role": self.role, "content": content, "reasoning": reasoning}

    def text(self) -> str:
        """Content as text; a list of parts may only hold text parts (this server reads no images)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.get("type") != "text" for part in self.content):
            raise ApiError(400, "only text content parts are supported", "messages")
        return "".join(str(part.get("text", "")) for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # extension
    repetition_penalty: float | None = Field(None, gt=0)  # extension
    ignore_eos: bool = False  # extension, as in vLLM: always write max_tokens tokens (benchmarks, load tests)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=128)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class JsonSchemaFormat(_Body):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")  # "schema" would shadow pydantic's own attribute
    strict: bool | None = None  # enforced either way: the answer is decoded under the schema's grammar
    description: str | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('response_format: type json_schema needs "json_schema": {"name": …, "schema": {…}}')
        return self


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    kb: str | None = None  # extension: ground the answer in this served knowledge base (null: none, absent: the server's --kb)
    kb_k: int | None = Field(None, ge=1)  # extension: passages to retrieve
    kb_threshold: float | None = Field(None, ge=-1, le=1)  # extension: least cosine similarity of a passage
    # Thinking on or off (Conversation.thinking): vLLM's chat_template_kwargs {"enable_thinking": bool}
    # (DeepSeek-V3.1's {"thinking": bool}); its other keys are ignored, as unknown fields are. OpenAI's
    # reasoning_effort: "none" is off, any other level on (lmtune has no budget for the levels).
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # Tools (serve/toolcalls.py): OpenAI's function schemas, shown by the run's template; tool_choice
    # "auto" | "none" | "required" | {"type": "function", "function": {"name": …}}.
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool = True
    # Structured output (serve/constrain.py): {"type": "text" | "json_object"} or {"type": "json_schema", "json_schema": {…}}
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _tools_shape(self) -> ChatRequest:
        check_request_tools(self.tools, self.tool_choice)
        return self

    def reads_calls(self) -> bool:
        """Whether the answer is read for tool calls: the request offers tools and does not say none."""
        return bool(self.tools) and self.tool_choice != "none"

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @model_validator(mode="after")
    def _one_thinking_switch(self) -> ChatRequest:
        switches = {key: value for key, value in (self.chat_template_kwargs or {}).items() if key in THINKING_KEYS}
        for key, value in switches.items():
            if not isinstance(value, bool):
                raise ValueError(f"chat_template_kwargs.{key}: give true or false (got {value!r})")
        said = {f"chat_template_kwargs.{key} is {str(value).lower()}": value for key, value in switches.items()}
        if self.reasoning_effort is not None:
            said[f"reasoning_effort is {self.reasoning_effort!r}"] = self.reasoning_effort != "none"
        if len(set(said.values())) > 1:
            raise ValueError(f"{' and '.join(said)}: thinking cannot be both on and off; give one switch")
        return self

    def thinking(self) -> bool | None:
        """Thinking on (True) or off (False) as the request asks, None when it does not say."""
        kwargs = self.chat_template_kwargs or {}
        switch = next((kwargs[key] for key in THINKING_KEYS if key in kwargs), None)
        if switch is None and self.reasoning_effort is not None:
            switch = self.reasoning_effort != "none"
        return switch

    def turns(self) -> list[dict]:
        """The messages as the backend takes them (Message.fields)."""
        return [message.fields(index) for index, message in enumerate(self.messages)]


THINKING_KEYS = ("enable_thinking", "thinking")  # Qwen3's (and vLLM's) name, DeepSeek-V3.1's


class CompletionRequest(_Sampling):
    # A string, a list of strings, token ids, or a list of token-id lists (serve/completions.py)
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0: with echo, the prompt's logprobs and nothing generated
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)  # the chosen token's and this many likeliest tokens' logprobs
    add_special_tokens: bool = True  # extension, as in vLLM: a string prompt starts with the tokenizer's BOS
    best_of: int | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        for name, unsupported in (("best_of", (self.best_of or 1) > 1), ("suffix", self.suffix)):
            if unsupported:
                raise ValueError(f"{name} is not supported on /v1/completions")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 is only allowed with echo: true (the prompt's logprobs, nothing generated)")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: give a string, a list of strings, token ids or a list of token-id lists (got [])")
        if self.stream and len(self.prompts()) > 1:
            raise ValueError("stream: give one prompt when streaming (or stream: false for several)")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt, a string or token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None

    @model_validator(mode="after")
    def _texts(self) -> EmbeddingRequest:
        if isinstance(self.input, list) and not self.input:
            raise ValueError("input: give a string or a non-empty list of strings")
        return self

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


def parse(model: type[_Body], raw: bytes) -> _Body:
    """The request body, or a 400 naming the first bad field."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if b"\\u" in raw:  # an escaped lone surrogate ("\ud800") is valid JSON but no character: tokenizers fail on it
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "the request body holds a lone UTF-16 surrogate escape (such as \\ud800), which is not a character") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            message = f"missing required parameter '{param}'"
        elif err["type"] != "value_error":
            message = f"{param}: {message} (got {err.get('input')!r})"
        return_param = param or _param_of(message)
        raise ApiError(400, message, return_param) from None


def _param_of(message: str) -> str | None:
    """The field a whole-model check complains about: its message starts with the field's name."""
    return message.split(" ", 1)[0].rstrip(":") or None


def conversation(messages: list[dict], thinking: bool | None = None, tools: list[dict] | None = None) -> Conversation:
    """OpenAI messages (as Message.fields gives them) → the Conversation that chat builds: leading
    system messages, then user and assistant alternating, ending with the user's turn the model
    answers; `thinking` is the request's switch (ChatRequest.thinking). With tools, calls or tool
    results: the tool conversation (serve/toolcalls.py)."""
    if uses_tools(messages, tools):
        try:
            return tool_conversation(messages, thinking, tools)
        except LmtuneError as exc:
            raise ApiError(400, f"messages: {exc}", "messages") from None
    systems = []
    while messages and messages[0]["role"] in ("system", "developer"):
        systems.append(messages[0]["content"])
        messages = messages[1:]
    expected = USER
    for i, message in enumerate(messages):
        if message["role"] != expected:
            raise ApiError(400, _order_problem(i, len(systems), message["role"]), "messages")
        expected = ASSISTANT if expected == USER else USER
    if expected == USER:
        raise ApiError(400, "the last message must be the user's: the model answers it", "messages")
    system = "\n".join(systems) if systems else None
    turns = [Turn(m["role"], m["content"], reasoning=m.get("reasoning")) for m in messages]
    return Conversation(turns, system=system, thinking=thinking)


def _order_problem(turn: int, systems: int, role: str) -> str:
    if role in ("system", "developer"):
        problem = "a system message may only come first"
    elif turn == 0:
        problem = "the first message after the system message must be the user's"
    else:
        problem = f"two {role} messages in a row; user and assistant messages must alternate"
    return f"messages[{turn + systems}]: {problem}"
