"""The OpenAI-compatible API: routes, answers (whole or as server-sent events), errors, key check.

Generation happens in a backend (the in-process Batcher, or a Pool of worker processes) that
answers each request with events; this module only turns events into HTTP.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from lmtune.serve.metrics import Metrics
from lmtune.serve.schemas import ApiError, ChatRequest, CompletionRequest, parse

WEB_PAGE = Path(__file__).parent / "web" / "index.html"
PLACEHOLDER = "<!doctype html><meta charset=utf-8><title>lmtune</title><p>The API is at <code>/v1</code>.</p>"


class Serving:
    """What the routes need: the served model names and, once loaded, the backend."""

    def __init__(self, models: list[str], api_key: str | None):
        self.models, self.api_key = models, api_key
        self.backend = None  # set when loading is done; until then the API answers 503
        self.metrics = Metrics(lambda: self.backend.stats() if self.backend else {})

    def ready(self):
        if self.backend is None:
            raise ApiError(503, "the model is still loading; retry in a moment", code="loading")
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
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        max_tokens = body.max_completion_tokens or body.max_tokens
        extra = {"messages": messages, "max_tokens": max_tokens, "logprobs": body.logprobs, "top_logprobs": body.top_logprobs}
        return await _answer(serving, "chat", body, extra)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse(CompletionRequest, await request.body())
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        return await _answer(serving, "completion", body, {"prompt": prompt, "max_tokens": body.max_tokens})

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


async def _answer(serving: Serving, kind: str, body, extra: dict):
    backend = serving.ready()
    if body.model not in serving.models:
        raise ApiError(404, f"The model '{body.model}' does not exist; served: {', '.join(serving.models)}", "model", "model_not_found")
    request = {"kind": kind, **body.model_dump(include=_SAMPLING), "stop": body.stops(), **extra}
    call = _Call(serving, backend, kind, body)
    backend.submit(call.id, request, call.emit)
    prompt_tokens = (await call.next_event())[1]  # "start", or an ApiError raised
    if body.stream:
        first = await call.next_event()  # an error before the first token still gets its own status
        return StreamingResponse(call.stream(prompt_tokens, first), media_type="text/event-stream")
    return JSONResponse(await call.whole(prompt_tokens))


_SAMPLING = {"model", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty", "frequency_penalty", "n", "seed", "ignore_eos"}


class _Call:
    """One request's events, turned into an OpenAI answer."""

    def __init__(self, serving: Serving, backend, kind: str, body):
        self.serving, self.backend, self.kind, self.body = serving, backend, kind, body
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created, self.started, self.first_text = int(time.time()), time.perf_counter(), None
        self.events: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.done = False

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
        return {**self._head(kind), "choices": choices, "usage": _usage(prompt_tokens, completion)}

    async def stream(self, prompt_tokens: int, event: tuple):
        usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        completion = 0
        try:
            if self.kind == "chat":
                for index in range(self.body.n):
                    yield self._chunk(usage, index, {"role": "assistant", "content": ""})
            while event[0] != "end":
                if event[0] == "text" and (event[2] or event[3]):
                    yield self._chunk(usage, event[1], self._delta(event[2]), logprobs=event[3])
                elif event[0] == "done":
                    completion += event[4]
                    yield self._chunk(usage, event[1], {} if self.kind == "chat" else self._delta(""), reason=event[3])
                event = await self.next_event()
            self._finished(completion)
            if usage:
                yield _sse({**self._head(self._chunk_kind()), "choices": [], "usage": _usage(prompt_tokens, completion)})
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

    def _chunk(self, usage: bool, index: int, delta: dict, reason: str | None = None, logprobs: list | None = None) -> str:
        choice = {"index": index, **({"delta": delta} if self.kind == "chat" else delta), "finish_reason": reason,
                  "logprobs": {"content": logprobs} if logprobs and self.kind == "chat" else None}
        return _sse({**self._head(self._chunk_kind()), "choices": [choice], **({"usage": None} if usage else {})})

    def _choice(self, index: int, text: str, reason: str, logprobs: list) -> dict:
        if self.kind == "completion":
            return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
        return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                "logprobs": {"content": logprobs} if self.body.logprobs else None}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
