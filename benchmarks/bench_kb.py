"""Knowledge-base ingest and query speed: `lmtune kb` on a synthetic corpus of 100,000 chunks.

    LMTUNE_HOME=/tmp/bench-kb nice -n 10 .venv/bin/python benchmarks/bench_kb.py \
        [--chunks 100000] [--queries 200] [--subset 512] [--backends torch,onnx,onnx-int8,openvino,openvino-bf16] [--sentences 10000]

Writes 1,000 bilingual files of paragraphs (pseudo-English words and common Chinese characters),
each paragraph ~450 characters, so with chunk_size 500 each becomes one chunk.

Embedding speed: each backend embeds the same `--subset` paragraphs with all-MiniLM-L6-v2, in a
process of its own, one after the other (`benchmarks/bench_kb_ingest.py` times whole `kb add`s).

Ingest without embedding: everything `kb add` does (read, clean, split, jieba/BM25 tokens, SQLite,
FAISS add, BM25 index, atomic write) with a stand-in embedder that hands out prepared vectors.
Those vectors are real where it matters for an approximate index: MiniLM (onnx-int8) embeddings of
the sentences of CMRC 2018 dev's passages, and each of them again with Gaussian noise (cosine about
0.8 to its original, renormalised) until there are `--chunks` of them; random unit vectors have no
clusters, and an IVF index's recall on them says nothing. Queries are MiniLM embeddings of CMRC's
questions (dense) with pseudo-text words (BM25). Recall@10 is measured against exact search
(IndexFlatIP) on the same vectors, for several nprobe. Query embedding is reported per backend
beside the search times, which exclude it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
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
CMRC = Path(__file__).resolve().parents[2] / "shared/reference/retrieval/cmrc2018/cmrc2018_dev.json"


class PoolEmbedder:
    """Embedding excluded: hands out prepared vectors, chunks in order, a query its assigned question vector."""

    name, dimension, batch_size, backend, languages = "pool-384", DIMENSION, 64, "torch", None
    signature = {"model": "pool-384", "dimension": DIMENSION, "normalized": True, "backend": "torch"}

    def __init__(self, chunks: np.ndarray, queries: dict[str, np.ndarray]):
        self.chunks, self.queries, self.at = chunks, queries, 0

    def encode(self, texts, progress=None):
        if len(texts) == 1 and texts[0] in self.queries:
            return self.queries[texts[0]][None, :]
        vectors = self.chunks[self.at : self.at + len(texts)]
        self.at += len(texts)
        return vectors


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


def embedding_rates(backends: list[str], subset: int) -> None:
    """Each backend in a process of its own: measured one after the other in one process, a backend's
    thread pool still spinning slowed the next (onnx-int8 45 chunks/s alone, 28 right after openvino)."""
    for backend in backends:
        subprocess.run([sys.executable, __file__, "--rate-of", backend, "--subset", str(subset)], check=True)


def embedding_rate(backend: str, texts: list[str]) -> None:
    from lmtune.kb.embed import Embedder

    embedder = Embedder("all-MiniLM-L6-v2", backend=backend)
    embedder.encode(texts[:16])  # warm-up
    start = time.perf_counter()
    embedder.encode(texts)
    rate = len(texts) / (time.perf_counter() - start)
    query = []
    for text in texts[:30]:
        started = time.perf_counter()
        embedder.encode([" ".join(text.split()[:8])])
        query.append(time.perf_counter() - started)
    print(f"embedding {backend:14s} {rate:6.1f} chunks/s on {len(texts)} chunks; one query {percentiles(query)}; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)


def real_vectors(embedder, count: int, rng: np.random.Generator, sentences: int) -> tuple[np.ndarray, np.ndarray]:
    """(count chunk vectors, question vectors): CMRC sentences embedded, then noisy copies of them."""
    articles = json.loads(CMRC.read_text(encoding="utf-8"))["data"]
    contexts = [p["context"] for a in articles for p in a["paragraphs"]]
    sentences = [s for c in contexts for s in re.split(r"(?<=[。！？])", c) if len(s) >= 8][:sentences]
    questions = [qa["question"] for a in articles for p in a["paragraphs"] for qa in p["qas"]]
    start = time.perf_counter()
    base = embedder.encode(sentences)
    asked = embedder.encode(questions[:1000])
    print(f"real vectors: {len(sentences):,} CMRC sentences and 1,000 questions embedded in {time.perf_counter() - start:.0f} s", flush=True)
    sigma = 0.75 / np.sqrt(DIMENSION)  # noise of norm 0.75: cosine ≈ 0.8 to the original
    copies = base[rng.integers(0, len(base), count - len(base))]
    copies = copies + rng.standard_normal(copies.shape).astype(np.float32) * sigma
    vectors = np.concatenate([base, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    return vectors[rng.permutation(count)].astype(np.float32), asked


def recall(store, queries: np.ndarray, k: int = 10) -> None:
    import faiss

    from lmtune.kb.store import _ivf_contents

    vectors, ids = _ivf_contents(store.index)  # the very vectors under the very ids, searched exactly
    exact = faiss.IndexFlatIP(DIMENSION)
    exact.add(vectors)
    truth = ids[exact.search(queries, k)[1]]
    for nprobe in (32, 64, store.index.nprobe, 256):
        store.index.nprobe = nprobe
        times, found = [], []
        for q in queries:
            started = time.perf_counter()
            found.append(store.search(q[None, :], k)[1][0])
            times.append(time.perf_counter() - started)
        hits = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])
        print(f"  nprobe {nprobe:3d}: recall@{k} {hits:.4f} against exact search, FAISS search alone {percentiles(times)}", flush=True)


def query_latency(retriever, queries: list[str], count: int) -> None:
    timings = {"dense": [], "bm25": [], "hybrid": []}
    for query in queries:
        for mode, run in (("dense", lambda: retriever.search(query, hybrid=False)),
                          ("bm25", lambda: retriever.version.keywords.search(query, 12)),
                          ("hybrid", lambda: retriever.search(query, hybrid=True))):
            start = time.perf_counter()
            run()
            timings[mode].append(time.perf_counter() - start)
    for mode, seconds in timings.items():
        print(f"query {mode:6s} ({retriever.version.store.kind}, {count:,} chunks, embedding excluded): {percentiles(seconds)}", flush=True)


def sizes(kb: KnowledgeBase) -> None:
    folder = kb.folder / kb.version
    for name in ("index.faiss", "chunks.sqlite", "bm25"):
        path = folder / name
        total = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
        print(f"  {name}: {total / 2**20:,.0f} MiB on disk")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--subset", type=int, default=512, help="Chunks each backend embeds to measure its rate.")
    parser.add_argument("--backends", default="torch,onnx,onnx-int8,openvino,openvino-bf16")
    parser.add_argument("--existing", help="A knowledge base this script built before (same LMTUNE_HOME): measure its queries again.")
    parser.add_argument("--sentences", type=int, default=10_000, help="CMRC sentences embedded as the real vectors (at most ~9,800).")
    parser.add_argument("--rate-of", help=argparse.SUPPRESS)  # one backend's embedding rate, in the process embedding_rates starts
    args = parser.parse_args()
    os.environ.setdefault("LMTUNE_HOME", tempfile.mkdtemp(prefix="bench-kb-"))
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(20_000)]
    texts = [paragraph(rng, words) for _ in range(args.subset)]
    if args.rate_of:
        return embedding_rate(args.rate_of, texts)
    print(f"load {os.getloadavg()[0]:.1f}", flush=True)
    embedding_rates(args.backends.split(","), args.subset)
    if not args.chunks:  # --chunks 0: the embedding backends' speed only
        return

    from lmtune.kb.embed import Embedder

    embedder = Embedder("all-MiniLM-L6-v2", backend="onnx-int8")  # the vectors' geometry, not its speed, matters below
    if args.existing:
        queries = [" ".join(rng.choices(words, k=3)) + " " + "".join(rng.choices(CJK, k=4)) for _ in range(args.queries)]
        return measure_queries(KnowledgeBase(args.existing), embedder, queries)
    vectors, asked = real_vectors(embedder, args.chunks, np.random.default_rng(0), args.sentences)
    corpus = Path(tempfile.mkdtemp(prefix="kb-corpus-"))
    write_corpus(corpus, args.chunks, rng, words)
    queries = [" ".join(rng.choices(words, k=3)) + " " + "".join(rng.choices(CJK, k=4)) for _ in range(args.queries)]
    pool = PoolEmbedder(vectors, {q: asked[i % len(asked)] for i, q in enumerate(queries)})
    kb = KnowledgeBase.create(f"bench{rng.randrange(10**6)}", KbConfig(embedding="pool-384"))
    start = time.perf_counter()
    report = add_paths(kb, [str(corpus)], pool)
    ingest = time.perf_counter() - start
    print(f"ingest, embedding excluded: {report.added:,} chunks in {ingest:.1f} s = {report.added / ingest:,.0f} chunks/s", flush=True)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    retriever = Retriever(kb, pool)
    print(f"opened: peak RSS {rss / 1024:,.0f} MiB before, {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB after")
    sizes(kb)
    query_latency(retriever, queries, report.added)
    if retriever.version.store.kind.startswith("ivf"):
        recall(retriever.version.store, asked[: args.queries * 2])
    flat_latency(vectors, asked[: args.queries])


def measure_queries(kb: KnowledgeBase, embedder, queries: list[str]) -> None:
    articles = json.loads(CMRC.read_text(encoding="utf-8"))["data"]
    asked = embedder.encode([qa["question"] for a in articles for p in a["paragraphs"] for qa in p["qas"]][: 2 * len(queries)])
    pool = PoolEmbedder(np.zeros((0, DIMENSION), np.float32), {q: asked[i] for i, q in enumerate(queries)})
    retriever = Retriever(kb, pool)
    sizes(kb)
    query_latency(retriever, queries, retriever.version.store.count)
    if retriever.version.store.kind.startswith("ivf"):
        recall(retriever.version.store, asked)


def flat_latency(vectors: np.ndarray, queries: np.ndarray) -> None:
    """Exact search alone at several sizes, on one thread as FaissStore.search runs a query: where flat_limit should sit."""
    import faiss

    faiss.omp_set_num_threads(1)
    for count in (10_000, 20_000, 50_000, 100_000):
        if count > len(vectors):
            break
        flat = faiss.IndexFlatIP(DIMENSION)
        flat.add(vectors[:count])
        times = []
        for q in queries:
            started = time.perf_counter()
            flat.search(q[None, :], 12)
            times.append(time.perf_counter() - started)
        print(f"  flat (exact) search alone at {count:,} vectors: {percentiles(times)}", flush=True)


if __name__ == "__main__":
    main()
