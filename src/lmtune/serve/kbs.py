"""The knowledge bases `serve --kb` loaded, and the model behind /v1/embeddings, in the API process.

Retrieval happens here, before a request is queued, so the batching thread (or a worker process
with --replicas) only ever sees the grounded messages. Everything runs on one thread of its own:
a knowledge base's SQLite connection belongs to the thread that opened it, and one thread keeps
the embedding model's calls in order without holding up the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from lmtune.config import ServeConfig
from lmtune.serve.schemas import ApiError


class KnowledgeBases:
    def __init__(self, config: ServeConfig):
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="lmtune-kb")
        self.embedders: dict = {}  # model name → Embedder, shared by the knowledge bases built with it
        self.retrievers = self.thread.submit(self._open, config).result()
        self.default = config.kbs[0] if config.kbs else None
        first = self.retrievers[self.default].kb.config.embedding if self.default else None
        self.embedding = config.embedding or first or _default_model()

    def _open(self, config: ServeConfig) -> dict:
        from lmtune.kb.ground import open_retriever

        return {name: open_retriever(name, self.embedders, top_k=config.kb_k, score_threshold=config.kb_threshold,
                                     on_no_hit=config.on_no_hit) for name in config.kbs}

    async def ground(self, name: str, query: str, system: str | None, **overrides):
        from lmtune.kb.ground import ground

        if name not in self.retrievers:
            served = ", ".join(self.retrievers) or "none (start the server with --kb NAME)"
            raise ApiError(404, f"The knowledge base '{name}' is not served; served: {served}", "kb", "kb_not_found")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        try:
            return await self._run(ground, self.retrievers[name], query, system, **overrides)
        except Exception as exc:  # a broken index or model fails this request (OpenAI-shaped), not the server
            raise ApiError(500, f"retrieval from '{name}' failed: {type(exc).__name__}: {exc}", "kb", "retrieval_failed") from None

    async def embed(self, texts: list[str]):
        """(vectors, tokens the model read), with the model loaded on first use."""
        return await self._run(self._embed, texts)

    def names(self) -> list[str]:
        """The names a request's `model` may give for the embedding model: as configured, or its folder's name."""
        return list(dict.fromkeys((self.embedding, self.embedding.rstrip("/").rsplit("/", 1)[-1])))

    def _embed(self, texts: list[str]):
        from lmtune.kb.embed import Embedder

        if self.embedding not in self.embedders:
            self.embedders[self.embedding] = Embedder(self.embedding)
        embedder = self.embedders[self.embedding]
        return embedder.encode(texts), embedder.count_tokens(texts)

    async def _run(self, function, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.thread, functools.partial(function, *args, **kwargs))


def _default_model() -> str:
    from lmtune.kb.embed import DEFAULT_MODEL

    return DEFAULT_MODEL
