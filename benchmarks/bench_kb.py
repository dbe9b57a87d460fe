"""Knowledge-base ingest and query speed: `lmtune kb` on a synthetic corpus of 100,000 chunks.

    LMTUNE_HOME=/tmp/bench-kb .venv/bin/python benchmarks/bench_kb.py [--chunks 100000] [--queries 200] [--subset 512]

Writes 1,000 bilingual files of paragraphs (pseudo-English words and common Chinese characters),
each paragraph ~450 characters, so with chunk_size 500 each becomes one chunk. Ingest without
embedding: everything `kb add` does (read, clean, split, jieba/BM25 tokens, SQLite, FAISS add, BM25
index, atomic write) with a stand-in embedder that returns random unit vectors of MiniLM's 384
dimensions. With embedding: the offline all-MiniLM-L6-v2 encodes a subset of the chunks, and its
rate is added to the ingest time for all of them (extrapolated, not measured on 100,000).
Query latency p50/p95 for dense (FAISS flat, query embedding excluded), BM25 and hybrid (both,
fused), plus MiniLM's time to embed one query, which a real query adds to dense and hybrid.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from lmtune.config import KbConfig
from lmtune.kb.base import KnowledgeBase
from lmtune.kb.ingest import add_paths
from lmtune.kb.retrieve import Retriever

DIMENSION = 384
CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 3500)]


class RandomEmbedder:
    """Embedding excluded: random unit vectors, the shape and dtype MiniLM gives."""

    name, dimension, batch_size = "random-384", DIMENSION, 64
    signature = {"model": "random-384", "dimension": DIMENSION, "normalized": True}

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def encode(self, texts, progress=None):
        vectors = self.rng.standard_normal((len(texts), DIMENSION)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def paragraph(rng: random.Random, words: list[str]) -> str:
    parts = []
    while sum(map(len, parts)) < 420:
        if rng.random() < 0.5:
            parts.append(" ".join(rng.choices(words, k=8)) + ". ")
        else:
            parts.append("".join(rng.choices(CJK, k=14)) + "。")
    return "".join(parts)


def write_corpus(folder: Path, chunks: int, rng: random.Random, words: list[str]) -> None:
    per_file = 100
    for f in range(chunks // per_file):
        text = "\n\n".join(paragraph(rng, words) for _ in range(per_file))
        (folder / f"doc{f:05d}.txt").write_text(text, encoding="utf-8")


def percentiles(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--subset", type=int, default=512, help="Chunks MiniLM embeds to measure its rate.")
    args = parser.parse_args()
    os.environ.setdefault("LMTUNE_HOME", tempfile.mkdtemp(prefix="bench-kb-"))
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(20_000)]
    corpus = Path(tempfile.mkdtemp(prefix="kb-corpus-"))
    write_corpus(corpus, args.chunks, rng, words)

    kb = KnowledgeBase.create(f"bench{rng.randrange(10**6)}", KbConfig(embedding="random-384"))
    start = time.perf_counter()
    report = add_paths(kb, [str(corpus)], RandomEmbedder())
    ingest = time.perf_counter() - start
    print(f"ingest, embedding excluded: {report.added:,} chunks in {ingest:.1f} s = {report.added / ingest:,.0f} chunks/s")

    from lmtune.kb.embed import Embedder

    minilm = Embedder("all-MiniLM-L6-v2")
    texts = [paragraph(rng, words) for _ in range(args.subset)]
    minilm.encode(texts[:16])  # warm-up
    start = time.perf_counter()
    minilm.encode(texts, progress=False)
    rate = args.subset / (time.perf_counter() - start)
    total = ingest + report.added / rate
    print(f"MiniLM embeds {rate:,.1f} chunks/s (measured on {args.subset}); ingest with embedding, extrapolated: "
          f"{report.added / total:,.1f} chunks/s ({total / 3600:.1f} h for {report.added:,})")

    retriever = Retriever(kb, RandomEmbedder())
    queries = [" ".join(rng.choices(words, k=3)) + " " + "".join(rng.choices(CJK, k=4)) for _ in range(args.queries)]
    timings = {"dense": [], "bm25": [], "hybrid": []}
    for query in queries:
        for mode, run in (("dense", lambda: retriever.search(query, hybrid=False)),
                          ("bm25", lambda: retriever.version.keywords.search(query, 12)),
                          ("hybrid", lambda: retriever.search(query, hybrid=True))):
            start = time.perf_counter()
            run()
            timings[mode].append(time.perf_counter() - start)
    for mode, seconds in timings.items():
        print(f"query {mode:6s} ({retriever.version.store.kind}, {report.added:,} chunks): {percentiles(seconds)}")
    embed_times = []
    for query in queries[:50]:
        start = time.perf_counter()
        minilm.encode([query])
        embed_times.append(time.perf_counter() - start)
    print(f"MiniLM query embedding: {percentiles(embed_times)}")


if __name__ == "__main__":
    main()
