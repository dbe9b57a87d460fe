"""Query → the best passages: dense (cosine) and BM25 results fused by reciprocal rank, then an
optional cross-encoder reranker, a cosine threshold, and neighbouring chunks merged in.

Every hit's `score` is the cosine similarity of query and chunk, in [-1, 1], higher is more
similar, also for a hit only the keyword search found (its vector is read back from the store),
so score_threshold means the same with hybrid retrieval on or off.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from lmtune.config import KbConfig
from lmtune.kb.base import KnowledgeBase
from lmtune.kb.embed import Embedder

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]+")
CANDIDATES = 4  # each retriever proposes this many times top_k, so fusion and reranking have a choice


@dataclass
class Hit:
    score: float  # cosine similarity to the query
    source: str
    page: int | None
    position: int  # first chunk's position in its source (neighbours included)
    text: str
    id: int
    dense_rank: int | None = None  # 1-based rank in each retriever's list; None where it did not find it
    bm25_rank: int | None = None
    rerank_score: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def rrf(rankings: list[list[int]], k: int = 60, weights: list[float] | None = None) -> list[int]:
    """Reciprocal-rank fusion: each list gives an item weight / (k + rank); higher total first, ties by first list."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings)):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores, key=lambda item: -scores[item])


def query_language(text: str) -> str:
    """'zh' when Chinese characters carry the query (more of them than twice its Latin words), else 'en'."""
    return "zh" if len(_CJK.findall(text)) > 2 * len(_LATIN.findall(text)) else "en"


def dense_weight(query: str, languages: tuple[str, ...] | None, config: KbConfig) -> float:
    """The dense ranking's weight in fusion: `foreign_dense_weight` where the model's card does not list the query's language."""
    return 1.0 if languages is None or query_language(query) in languages else config.foreign_dense_weight


class Retriever:
    """Holds a knowledge base's indexes and its embedding model open, for many queries (a server, a chat)."""

    def __init__(self, kb: KnowledgeBase | str, embedder: Embedder | None = None, config: KbConfig | None = None):
        self.kb = KnowledgeBase(kb) if isinstance(kb, str) else kb
        self.config = config or self.kb.config
        self.embedder = embedder or Embedder(self.kb.config.embedding, self.config.batch_size, self.kb.backend)
        self.kb.check_model(self.embedder.signature)
        self._opened = self.kb.open()
        self.version = self._opened.__enter__()
        self.reranker = _cross_encoder(self.config.reranker) if self.config.reranker else None

    def close(self) -> None:
        self._opened.__exit__(None, None, None)

    def search(self, query: str, **overrides) -> list[Hit]:
        """Hits, best first; overrides are KbConfig fields (top_k, score_threshold, neighbors, hybrid …)."""
        config = self.config.model_copy(update=overrides) if overrides else self.config
        if self.version.store is None or self.version.store.count == 0:
            return []
        query_vector = self.embedder.encode([query])
        wanted = config.top_k * CANDIDATES
        scores, ids = self.version.store.search(query_vector, wanted)
        dense = [int(i) for i in ids[0] if i >= 0]
        keyword = self.version.keywords.search(query, wanted) if config.hybrid else []
        weights = [dense_weight(query, getattr(self.embedder, "languages", None), config), 1.0]
        order = rrf([dense, keyword], config.rrf_k, weights) if keyword else dense
        cosine = dict(zip(dense, map(float, scores[0])))
        missing = [i for i in order if i not in cosine]
        cosine.update(zip(missing, map(float, self.version.store.vectors(np.asarray(missing)) @ query_vector[0])))
        hits = self._hits(order, cosine, dense, keyword)
        if self.reranker is not None:
            hits = self._rerank(query, hits)
        if config.score_threshold is not None:
            hits = [hit for hit in hits if hit.score >= config.score_threshold]
        hits = hits[: config.top_k]
        return [self._widen(hit, config.neighbors) for hit in hits] if config.neighbors else hits

    def _hits(self, order: list[int], cosine: dict[int, float], dense: list[int], keyword: list[int]) -> list[Hit]:
        rows = self.version.chunks.rows(order)
        dense_rank = {i: r for r, i in enumerate(dense, 1)}
        keyword_rank = {i: r for r, i in enumerate(keyword, 1)}
        return [
            Hit(cosine[i], rows[i]["source"], rows[i]["page"], rows[i]["position"], rows[i]["text"], i,
                dense_rank.get(i), keyword_rank.get(i))
            for i in order if i in rows
        ]

    def _rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        scores = self.reranker.predict([(query, hit.text) for hit in hits], show_progress_bar=False)
        for hit, score in zip(hits, scores):
            hit.rerank_score = float(score)
        return sorted(hits, key=lambda hit: -hit.rerank_score)

    def _widen(self, hit: Hit, neighbors: int) -> Hit:
        """The hit with up to `neighbors` chunks before and after it from the same source, as one text."""
        rows = self.version.chunks.around(hit.source, hit.position - neighbors, hit.position + neighbors)
        hit.text, hit.position = merge_chunks(rows), rows[0]["position"]
        return hit


def merge_chunks(rows) -> str:
    """Consecutive chunks as one text. On one page each chunk is a slice (start, end) of the same
    cleaned text, so an overlap is written once; a new page starts a new paragraph."""
    text, page, end = "", None, 0
    for row in rows:
        if text and row["page"] == page and row["start"] <= end:
            text += row["text"][end - row["start"] :]  # empty when this chunk lies wholly inside the text so far
            end = max(end, row["end"])
            continue
        separator = "" if not text else "\n" if row["page"] == page else "\n\n"
        text, page, end = text + separator + row["text"], row["page"], row["end"]
    return text


def _cross_encoder(name: str):
    from sentence_transformers import CrossEncoder

    from lmtune.errors import KbError, first_line
    from lmtune.kb.embed import model_folder

    try:
        return CrossEncoder(model_folder(name) or name)
    except Exception as exc:  # hub lookups, missing files, bad configs: each library raises its own type
        raise KbError(f"cannot load reranker '{name}': {first_line(exc)}") from None
