"""/tokenize, /detokenize and /tokenizer_info in vLLM's shapes, so clients (lm-evaluation-harness's
remote tokenizer among them) count and cut text with the served model's own tokenizer.

    POST /tokenize {"prompt": str, "add_special_tokens": true}   the ids /v1/completions reads
    POST /tokenize {"messages": [...], "tools"?, "chat_template_kwargs"?}   the ids /v1/chat/completions reads
        → {"tokens": [...], "count": n, "max_model_len": window, "token_strs"?: [...] (return_token_strs)}
    POST /detokenize {"tokens": [...]} → {"prompt": str}
    GET /tokenizer_info → {"eos_token", "bos_token", "pad_token", "model_max_length", "chat_template": null, …}

Messages are rendered by the run's template, exactly as the chat route renders them. There is no
chat_template: the run's template is lmtune's own, and a Jinja template that might differ from it
would let a client build prompts the model was not trained on. The tokenizer lives with the engine,
so with --replicas (engines in worker processes) these routes answer 501.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from pydantic import Field, model_validator

from lmtune.serve.completions import completion_ids
from lmtune.serve.schemas import ApiError, ChatRequest, _Body, parse


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list | None = None  # checked as a chat request's messages
    add_special_tokens: bool = True  # a string prompt starts with BOS where the tokenizer puts one (Llama)
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: give either prompt (a string) or messages (a chat), not both or neither")
        return self


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int] = Field(max_length=2**20)


def add_token_routes(app: FastAPI, serving) -> None:
    @app.post("/tokenize")
    async def tokenize(request: Request):
        raw = await request.body()
        body = parse(TokenizeRequest, raw)
        _, engine = _engine(serving, body.model)
        if body.prompt is not None:
            ids = completion_ids(engine, body.prompt, body.add_special_tokens) if body.prompt else engine.encoder.bos * body.add_special_tokens
        else:
            from lmtune.serve.requests import prompt_of  # torch: loaded by then, but not before the server listens

            chat = parse(ChatRequest, _with_model(raw))
            ids = prompt_of(engine, {"kind": "chat", "messages": chat.turns(), "thinking": chat.thinking(), "tools": chat.tools})[0]
        answer = {"count": len(ids), "max_model_len": _window(engine), "tokens": ids}
        if body.return_token_strs:
            answer["token_strs"] = engine.tokenizer.convert_ids_to_tokens(ids)
        return _ok(serving, answer)

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = parse(DetokenizeRequest, await request.body())
        _, engine = _engine(serving, body.model)
        if body.tokens:
            completion_ids(engine, body.tokens)  # a 400 for an id outside the vocabulary
        return _ok(serving, {"prompt": engine.tokenizer.decode(body.tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)})

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        _, engine = _engine(serving, None)
        tokenizer = engine.tokenizer
        return _ok(serving, {"tokenizer_class": type(tokenizer).__name__, "eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token,
                             "pad_token": tokenizer.pad_token, "model_max_length": _window(engine), "chat_template": None,
                             "template": engine.template.name})


def _engine(serving, model: str | None):
    backend = serving.ready(model)
    engine = getattr(backend, "engine", None)
    if engine is None:
        raise ApiError(501, "the tokenizer routes are not available with --replicas (the tokenizer lives in the worker processes)",
                       code="not_implemented")
    return backend, engine


def _with_model(raw: bytes) -> bytes:
    """The body as a chat request: the model may be left out here."""
    import json

    data = json.loads(raw)
    return json.dumps({**data, "model": data.get("model") or ""}).encode()


def _window(engine) -> int | None:
    return engine.window


def _ok(serving, answer: dict) -> dict:
    serving.metrics.requests.labels("200").inc()
    return answer
