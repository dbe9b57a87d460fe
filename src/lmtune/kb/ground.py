"""Grounded answers: the passages retrieved for a question, placed in the system prompt.

`chat --kb` and `serve --kb` both call `ground` with the latest user message as the query. The
system prompt it returns is laid out as

    {the user's own system prompt}        (when there is one)

    {KbConfig.prompt}
    {KbConfig.cite}

    [1] {file name}, p. {page}             (", p. N" only for sources with pages)
    {passage text}

    [2] …

When no passage passes the score threshold, KbConfig.on_no_hit decides: "answer" keeps the
user's own system prompt and says so (`note`), "refuse" answers the fixed `refusal` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from lmtune.config import KbConfig
from lmtune.errors import LmtuneError
from lmtune.kb.retrieve import Hit, Retriever


@dataclass
class Grounding:
    system: str | None  # the system prompt to answer with
    hits: list[Hit]
    note: str | None = None  # nothing passed the threshold: the answer does not draw on the knowledge base
    refusal: str | None = None  # nothing passed and on_no_hit is "refuse": answer this, do not ask the model


def ground(retriever: Retriever, query: str, system: str | None = None, **overrides) -> Grounding:
    """The system prompt for answering `query` from the knowledge base; overrides are KbConfig fields."""
    config = retriever.config.model_copy(update=overrides) if overrides else retriever.config
    hits = retriever.search(query, **overrides)
    if hits:
        return Grounding(grounded_system_prompt(hits, system, config), hits)
    if config.on_no_hit == "refuse":
        return Grounding(system, [], refusal=config.refusal)
    return Grounding(system, [], note=config.no_hit_note)


def grounded_system_prompt(hits: list[Hit], system: str | None = None, config: KbConfig | None = None) -> str:
    """The user's system prompt, the instruction, then the passages numbered [1], [2] … with their sources."""
    config = config or KbConfig()
    passages = "\n\n".join(f"[{n}] {_where(hit)}\n{hit.text}" for n, hit in enumerate(hits, 1))
    instruction = "\n".join(part for part in (config.prompt, config.cite) if part)
    return "\n\n".join(part for part in (system, instruction, passages) if part)


def sources(hits: list[Hit]) -> list[dict]:
    """The passages an answer was given, as the API returns them."""
    return [{"index": n, "source": hit.source, "page": hit.page, "score": round(hit.score, 4), "text": hit.text}
            for n, hit in enumerate(hits, 1)]


def sources_text(grounding: Grounding) -> str:
    """The lines shown under an answer in the terminal."""
    if grounding.note:
        return f"({grounding.note})"
    lines = [f"[{n}] {hit.source}{f', p. {hit.page}' if hit.page else ''} (score {hit.score:.2f})" for n, hit in enumerate(grounding.hits, 1)]
    return "sources:\n" + "\n".join(lines) if lines else ""


def _where(hit: Hit) -> str:
    return PurePath(hit.source).name + (f", p. {hit.page}" if hit.page else "")



def open_retriever(name: str, embedders: dict | None = None, **settings) -> Retriever:
    """The knowledge base NAME, its saved search settings under the given ones (None = keep).
    embedders (model name → Embedder) lets several knowledge bases built with one model share it."""
    from pydantic import ValidationError

    from lmtune.config import flag_problems
    from lmtune.kb.base import KnowledgeBase
    from lmtune.kb.embed import Embedder

    kb = KnowledgeBase(name)
    try:
        config = KbConfig.model_validate({**kb.config.model_dump(), **{k: v for k, v in settings.items() if v is not None}})
    except ValidationError as exc:
        raise LmtuneError(flag_problems(exc, KB_FLAGS)) from None
    embedders = {} if embedders is None else embedders
    key = config.embedding  # knowledge bases built with one model share it, unless they embedded with different backends
    if key in embedders and embedders[key].backend != kb.backend:
        key = f"{key}@{kb.backend}"
    if key not in embedders:
        embedders[key] = Embedder(config.embedding, config.batch_size, kb.backend)
    return Retriever(kb, embedders[key], config)


KB_FLAGS = {"top_k": "--kb-k", "score_threshold": "--kb-threshold", "on_no_hit": "--on-no-hit"}
