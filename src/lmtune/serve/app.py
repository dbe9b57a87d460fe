"""The OpenAI-compatible API: routes, answers (whole or as server-sent events), errors, key check.

Generation happens in a backend (the in-process Batcher, or a Pool of worker processes) that
answers each request with events; this module only turns events into HTTP.

A chat answer's reasoning (a think block, templates/reasoning.py) goes apart from its content, under
both names clients read: `reasoning_content` (llama.cpp, SGLang, older vLLM) and `reasoning` (vLLM
>= 0.10, Ollama); streamed, as deltas of those before the content's. An answer without reasoning
has neither field, as before. A request with tools has its answer read for calls with the
template's own syntax (serve/toolcalls.py): `tool_calls` apart from the content, streamed as
OpenAI streams them, with no call syntax ever in a content delta.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
import uuid
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from lmtune.serve.completions import legacy_logprobs, merged
from lmtune.serve.metrics import Metrics
from lmtune.errors import LmtuneError
from lmtune.serve.schemas import ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, conversation, parse
from lmtune.serve.tokens import add_token_routes
from lmtune.serve.toolcalls import StreamedCalls, answer_fields
from lmtune.templates.reasoning import ReasoningStream, parse_output

WEB_PAGE = Path(__file__).parent / "web" / "index.html"
PLACEHOLDER = "<!doctype html><meta charset=utf-8><title>lmtune</title><p>The API is at <code>/v1</code>.</p>"


class Serving:
    """What the routes need: the served model names and, once loaded, the backend."""

    def __init__(self, models: list[str], api_key: str | None):
        self.models, self.api_key = models, api_key
        self.backend = None  # set when loading is done; until then the API answers 503
        self.kbs = None  # the knowledge bases and embedding model (serve/kbs.py), set before the backend
        self.metrics = Metrics(lambda: self.backend.stats() if self.backend else {})

    def ready(self, model: str | None = None):
        if self.backend is None:
            raise ApiError(503, "the model is still loading; retry in a moment", code="loading")
        if model is not None and model not in self.models:
            raise ApiError(404, f"The model '{model}' does not exist; served: {', '.join(self.models)}", "model", "model_not_found")
        return self.backend


def create_app(serving: Serving) -> FastAPI:
    app = FastAPI(title="lmtune", dependencies=[Depends(_key_check(serving))], docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        serving.metrics.requests.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return await api_error(request, ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    @app.get("/health")
    async def health():
        stats = serving.backend.stats() if serving.backend else {}
        body = {"status": "ok" if serving.backend else "loading", **stats}
        return JSONResponse(body, status_code=200 if serving.backend else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(serving.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page():
        return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8") if WEB_PAGE.is_file() else PLACEHOLDER)

    @app.get("/v1/models")
    async def models():
        serving.metrics.requests.labels("200").inc()
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "lmtune"} for m in serving.models]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = parse(ChatRequest, await request.body())
        serving.ready(body.model)
        messages, fields, refusal = await _grounded(serving, body, body.turns())
        max_tokens = body.max_completion_tokens or body.max_tokens
        extra = {"messages": messages, "thinking": body.thinking(), "tools": body.tools, "max_tokens": max_tokens, "logprobs": body.logprobs,
                 "top_logprobs": body.top_logprobs, "tool_choice": body.tool_choice,
                 "response_format": body.response_format.model_dump(by_alias=True) if body.response_format else None}
        return await _answer(serving, "chat", body, extra, fields, refusal)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse(CompletionRequest, await request.body())
        extra = {"max_tokens": body.max_tokens, "echo": body.echo, "logprobs": body.logprobs is not None,
                 "top_logprobs": body.logprobs or 0, "add_special_tokens": body.add_special_tokens}
        prompts = body.prompts()
        if len(prompts) == 1:
            return await _answer(serving, "completion", body, {"prompt": prompts[0], **extra})
        answers = await asyncio.gather(*(_answer(serving, "completion", body, {"prompt": prompt, **extra}) for prompt in prompts))
        return JSONResponse(merged([json.loads(answer.body) for answer in answers], body.n))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = parse(EmbeddingRequest, await request.body())
        serving.ready()
        return await _embeddings(serving, body)

    add_token_routes(app, serving)  # /tokenize, /detokenize, /tokenizer_info (serve/tokens.py)
    return app


def _key_check(serving: Serving):
    async def check(request: Request):
        # /health is for load balancers and / is a static page (its script sends the key itself)
        if serving.api_key is None or request.url.path in ("/health", "/"):
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), serving.api_key.encode())):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    return check


# ---------------------------------------------------------------- answering


async def _grounded(serving: Serving, body: ChatRequest, messages: list[dict]) -> tuple[list[dict], dict, str | None]:
    """With a knowledge base (the request's `kb`, else the server's first --kb): the messages with the
    passages for the latest user message in the system prompt, the response fields naming their
    sources, and the fixed refusal when none passed and the knowledge base refuses then."""
    name = body.kb if "kb" in body.model_fields_set else (serving.kbs.default if serving.kbs else None)
    if name is None:
        return messages, {}, None
    if serving.kbs is None:
        raise ApiError(404, f"The knowledge base '{name}' is not served; served: none", "kb", "kb_not_found")
    from lmtune.kb.ground import sources

    conv = conversation(messages)  # a badly ordered conversation is a 400 before anything is retrieved
    found = await serving.kbs.ground(name, conv.turns[-1].content, conv.system, top_k=body.kb_k, score_threshold=body.kb_threshold)
    turns = [m for m in messages if m["role"] not in ("system", "developer")]
    grounded = ([{"role": "system", "content": found.system}] if found.system else []) + turns
    return grounded, {"sources": sources(found.hits), **({"kb_note": found.note} if found.note else {})}, found.refusal


async def _embeddings(serving: Serving, body: EmbeddingRequest) -> dict:
    kbs = serving.kbs
    if kbs is None or body.model not in kbs.names():
        served = kbs.names()[0] if kbs else "none"
        raise ApiError(404, f"The embedding model '{body.model}' is not served; served: {served}", "model", "model_not_found")
    try:
        vectors, tokens = await kbs.embed(body.texts())
    except LmtuneError as exc:
        raise ApiError(500, str(exc), "model", "embedding_failed") from None
    if body.dimensions not in (None, vectors.shape[1]):
        raise ApiError(400, f"dimensions: {kbs.embedding} writes {vectors.shape[1]}-dimensional vectors (got {body.dimensions})", "dimensions")
    encode = (lambda v: base64.b64encode(v.astype("<f4").tobytes()).decode()) if body.encoding_format == "base64" else (lambda v: v.tolist())
    serving.metrics.requests.labels("200").inc()
    data = [{"object": "embedding", "index": i, "embedding": encode(vector)} for i, vector in enumerate(vectors)]
    return {"object": "list", "data": data, "model": kbs.embedding, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def _answer(serving: Serving, kind: str, body, extra: dict, fields: dict | None = None, refusal: str | None = None):
    backend = serving.ready(body.model)
    request = {"kind": kind, **body.model_dump(include=_SAMPLING), "stop": body.stops(), **extra}
    call = _Call(serving, backend, kind, body, fields or {})
    if refusal is None:
        backend.submit(call.id, request, call.emit)
    else:
        call.refuse(refusal)
    _, prompt_tokens, call.opened, call.template = await call.next_event()  # "start", or an ApiError raised
    if body.stream:
        first = await call.next_event()  # an error before the first token still gets its own status
        return StreamingResponse(call.stream(prompt_tokens, first), media_type="text/event-stream")
    return JSONResponse(await call.whole(prompt_tokens))


_SAMPLING = {"model", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty", "frequency_penalty", "n", "seed", "ignore_eos"}


class _Call:
    """One request's events, turned into an OpenAI answer."""

    def __init__(self, serving: Serving, backend, kind: str, body, fields: dict):
        self.serving, self.backend, self.kind, self.body = serving, backend, kind, body
        self.fields = fields  # extra top-level fields of the answer (a grounded answer's sources)
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created, self.started, self.first_text = int(time.time()), time.perf_counter(), None
        self.events: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.done = False
        self.opened = False  # the prompt opens a think block: the text starts with reasoning
        self.splits: dict[int, _Split] = {}  # each streamed chat choice's reasoning apart from its answer
        self.offsets: dict[int, int] = {}  # each streamed completion choice's text so far (legacy logprobs' text_offset)
        self.template = None  # the run's Template (from the "start" event): its tool syntax reads calls
        self.calls: dict[int, StreamedCalls] = {}  # each streamed chat choice's calls apart from its content

    def refuse(self, text: str) -> None:
        """Answer every choice with a fixed text, as a backend would have: no model involved."""
        self.events.put_nowait(("start", 0, False, None))
        for index in range(self.body.n):
            self.events.put_nowait(("text", index, text, None))
            self.events.put_nowait(("done", index, text, "stop", 0, None))
        self.events.put_nowait(("end",))

    def emit(self, job_id: str, event: tuple) -> None:  # called from the batching thread or a pipe reader
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def next_event(self) -> tuple:
        event = await self.events.get()
        if event[0] == "text" and self.first_text is None:
            self.first_text = time.perf_counter()
            self.serving.metrics.ttft.observe(self.first_text - self.started)
        if event[0] == "error":
            self.done = True
            raise ApiError(*event[1:])
        return event

    async def whole(self, prompt_tokens: int) -> dict:
        choices, completion = [None] * self.body.n, 0
        while (event := await self.next_event())[0] != "end":
            if event[0] == "done":
                _, index, text, reason, tokens, logprobs = event
                choices[index], completion = self._choice(index, text, reason, logprobs), completion + tokens
        self._finished(completion)
        kind = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._head(kind), "choices": choices, "usage": _usage(prompt_tokens, completion), **self.fields}

    async def stream(self, prompt_tokens: int, event: tuple):
        usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        completion = 0
        try:
            if self.kind == "chat":
                for index in range(self.body.n):
                    yield self._chunk(usage, index, {"role": "assistant", "content": ""})
            while event[0] != "end":
                if event[0] == "text" and (event[2] or event[3]):
                    for i, delta in enumerate(self._deltas(event[1], event[2]) or [self._delta("")]):
                        yield self._chunk(usage, event[1], delta, logprobs=event[3] if i == 0 else None)
                elif event[0] == "done":
                    completion += event[4]
                    for delta in self._deltas(event[1], None):  # what the split held back
                        yield self._chunk(usage, event[1], delta)
                    yield self._chunk(usage, event[1], {} if self.kind == "chat" else self._delta(""), reason=self._reason(event[1], event[3]))
                event = await self.next_event()
            self._finished(completion)
            if usage or self.fields:  # the last chunk before [DONE]: usage, and a grounded answer's sources
                last = {"usage": _usage(prompt_tokens, completion)} if usage else {}
                yield _sse({**self._head(self._chunk_kind()), "choices": [], **last, **self.fields})
        except ApiError as exc:  # after the first token the status is sent: the error goes in the stream
            self.serving.metrics.requests.labels(str(exc.status)).inc()
            yield _sse(exc.body())
        finally:
            if not self.done:  # the client went away: free its place in the batch
                self.backend.cancel(self.id)
        yield "data: [DONE]\n\n"

    # ------------------------------------------------------------ shapes

    def _finished(self, completion_tokens: int) -> None:
        self.done = True
        metrics = self.serving.metrics
        metrics.requests.labels("200").inc()
        metrics.tokens.inc(completion_tokens)
        metrics.latency.observe(time.perf_counter() - self.started)

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.body.model}

    def _chunk_kind(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def _delta(self, text: str) -> dict:
        return {"content": text} if self.kind == "chat" else {"text": text}

    def _deltas(self, index: int, text: str | None) -> list[dict]:
        """A choice's new text as deltas: for chat, its reasoning apart from its content (text None:
        the answer has ended, and the split gives out what it held back)."""
        if self.kind != "chat":
            return [self._delta(text)] if text else []
        deltas = self.splits.setdefault(index, _Split(self.opened)).deltas(text)
        if not self._reads_calls():
            return deltas
        calls = self.calls.setdefault(index, StreamedCalls(self.template, self.body.tools, self.body.parallel_tool_calls))
        if text is not None:
            return calls.deltas(deltas)
        deltas = calls.deltas(deltas) + calls.close()
        self.serving.metrics.unparsed_calls.inc(calls.unparsed)
        return deltas

    def _reads_calls(self) -> bool:
        """The answer is read for tool calls: a chat request with tools (not tool_choice none), on a template with a tool syntax."""
        return self.kind == "chat" and self.body.reads_calls() and getattr(self.template, "tool_style", None) is not None

    def _reason(self, index: int, reason: str) -> str:
        called = index in self.calls and self.calls[index].called
        return "tool_calls" if called and reason == "stop" else reason

    def _chunk(self, usage: bool, index: int, delta: dict, reason: str | None = None, logprobs: list | None = None) -> str:
        choice = {"index": index, **({"delta": delta} if self.kind == "chat" else delta), "finish_reason": reason,
                  "logprobs": self._chunk_logprobs(index, delta, logprobs)}
        return _sse({**self._head(self._chunk_kind()), "choices": [choice], **({"usage": None} if usage else {})})

    def _chunk_logprobs(self, index: int, delta: dict, logprobs: list | None) -> dict | None:
        if not logprobs:
            return None
        if self.kind == "chat":
            return {"content": logprobs}
        offset = self.offsets.get(index, 0)
        self.offsets[index] = offset + len(delta.get("text", ""))
        return legacy_logprobs(logprobs, offset)

    def _choice(self, index: int, text: str, reason: str, logprobs: list) -> dict:
        if self.kind == "completion":
            return {"index": index, "text": text, "logprobs": legacy_logprobs(logprobs) if self.body.logprobs is not None else None,
                    "finish_reason": reason}
        parsed = parse_output(text, self.opened)
        message = {"role": "assistant", "content": parsed.answer, **(_reasoning(parsed.reasoning) if parsed.reasoning else {})}
        if self._reads_calls():
            fields, unparsed = answer_fields(parsed.answer, self.template, self.body.tools, self.body.parallel_tool_calls)
            self.serving.metrics.unparsed_calls.inc(unparsed)
            message.update(fields)
            reason = "tool_calls" if fields.get("tool_calls") and reason == "stop" else reason
        return {"index": index, "message": message, "finish_reason": reason, "logprobs": {"content": logprobs} if self.body.logprobs else None}


class _Split:
    """One streamed chat choice's text as deltas, its reasoning apart from its content."""

    def __init__(self, opened: bool):
        self.stream = ReasoningStream(opened)
        # Whitespace before the first word goes out as content as it comes, as it did before
        # reasoning was split: the stream would hold it until it knows whether a think block follows.
        self.leading = not opened

    def deltas(self, text: str | None) -> list[dict]:
        """The deltas for new text (None: the answer has ended; what the stream held back)."""
        if text is None:
            return _deltas("", *self.stream.close())
        lead = ""
        if self.leading:
            word = text.lstrip()
            lead, text, self.leading = text[: len(text) - len(word)], word, not word
        return _deltas(lead, *self.stream.feed(text))


def _deltas(lead: str, reasoning: str, answer: str) -> list[dict]:
    return [delta for delta, given in (({"content": lead}, lead), (_reasoning(reasoning), reasoning), ({"content": answer}, answer)) if given]


def _reasoning(text: str) -> dict:
    """Reasoning under both names clients read (the module docstring)."""
    return {"reasoning_content": text, "reasoning": text}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
