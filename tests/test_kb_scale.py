"""The knowledge base at scale (issue 26): embedding backends recorded per knowledge base, an
interrupted `kb add` that resumes, one writer at a time, the IVF index kept trained, and fusion
that does not let an English-only model's ranks spoil Chinese queries.

The kill and the lock are tested with real `lmtune kb add` processes. Speed, recall at 100,000
chunks and CMRC quality are benchmark figures (benchmarks/bench_kb*.py), not assertions here.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmtune.config import KbConfig
from lmtune.errors import KbError
from lmtune.kb.base import KnowledgeBase
from lmtune.kb.backends import cpu_computes_bf16
from lmtune.kb.embed import Embedder, resolve_backend
from lmtune.kb.ingest import add_paths
from lmtune.kb.pending import FILE as SO_FAR
from lmtune.kb.retrieve import Retriever, dense_weight, query_language
from lmtune.kb.store import FaissStore
from tests.test_kb import tiny_model as tiny_model  # noqa: F401, F811  (the module-scoped fixture)

pytestmark = pytest.mark.xdist_group("kb_scale")  # one worker: the tiny model's ONNX export is made once


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _notes(folder: Path, files: int, per_file: int) -> Path:
    folder.mkdir(parents=True)
    for f in range(files):
        text = "\n\n".join(f"Note {f}-{i}: the valve {f * per_file + i} opens at dawn and closes at dusk." for i in range(per_file))
        (folder / f"n{f}.txt").write_text(text)
    return folder


def test_onnx_int8_backend_is_recorded_and_its_queries_embedded_the_same_way(home, tmp_path, tiny_model):
    docs = _notes(tmp_path / "docs", 2, 5)
    kb = KnowledgeBase.create("fast", KbConfig(embedding=tiny_model, chunk_size=80, overlap=0, backend="onnx-int8"))
    int8 = Embedder(tiny_model, backend=kb.backend)
    assert add_paths(kb, [str(docs)], int8).added == 10
    built = json.loads((kb.folder / "kb.json").read_text())["embedding"]
    assert built["backend"] == "onnx-int8" and not (kb.folder / SO_FAR).exists()
    exported = sorted(p.name for p in (home / "embeddings").glob("*/*.onnx"))
    assert exported == ["model-int8.onnx", "model.onnx"]

    retriever = Retriever(KnowledgeBase("fast"))  # no embedder given: the recorded backend is loaded
    assert retriever.embedder.backend == "onnx-int8"
    text = docs.joinpath("n1.txt").read_text().split("\n\n")[3]
    hit = retriever.search(text, top_k=1, hybrid=False)[0]
    assert hit.text == text and hit.score > 0.999  # the query is embedded exactly as its chunk was
    torch_vectors = Embedder(tiny_model).encode([text])
    assert float(torch_vectors[0] @ int8.encode([text])[0]) > 0.9  # int8 is close to fp32, not equal
    with pytest.raises(KbError, match="embedded with the onnx-int8 backend; embedding its queries with torch"):
        Retriever(kb, Embedder(tiny_model))


def test_auto_is_openvino_bf16_exactly_where_the_cpu_has_bf16_arithmetic():
    """OpenVINO's report agrees with the CPU's own flags (its bf16 needs AVX512-BF16, AMX, or AVX2-VNNI-2 with
    AVX-NE-CONVERT), and `auto` follows it off a GPU."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.M).group(1).split())
    has_bf16 = bool(flags & {"avx512_bf16", "amx_bf16", "avx_ne_convert"})
    assert cpu_computes_bf16() == has_bf16
    if not torch.cuda.is_available():
        assert resolve_backend("auto") == ("openvino-bf16" if has_bf16 else "onnx-int8")


def test_onnx_fp32_gives_the_torch_vectors(home, tiny_model):
    texts = ["one", "a longer sentence with more words in it", "春节通常在公历一月或二月。"]
    torch_vectors = Embedder(tiny_model).encode(texts)
    onnx_vectors = Embedder(tiny_model, backend="onnx").encode(texts)
    assert np.allclose(torch_vectors, onnx_vectors, atol=1e-4)


def _so_far(kb: KnowledgeBase) -> int:
    path = kb.folder / SO_FAR
    try:
        with sqlite3.connect(path, timeout=0.05) as db:
            return db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or locked by the writer this instant
        return 0


class Counting:
    """The real embedder, counting the texts it embeds."""

    def __init__(self, embedder: Embedder):
        self.inner, self.count = embedder, 0
        self.name, self.signature, self.batch_size = embedder.name, embedder.signature, embedder.batch_size

    def encode(self, texts, progress=None):
        self.count += len(texts)
        return self.inner.encode(texts, progress)


def test_a_killed_add_resumes_and_a_second_writer_is_refused_by_name(home, tmp_path, tiny_model):
    docs = _notes(tmp_path / "docs", 8, 100)  # 800 chunks, embedded one at a time in slices of 8
    kb = KnowledgeBase.create("big", KbConfig(embedding=tiny_model, chunk_size=80, overlap=0, batch_size=1, backend="torch"))
    script = Path(sys.executable).with_name("lmtune")
    first = subprocess.Popen([str(script), "kb", "add", "big", str(docs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _so_far(kb) == 0 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # mid-ingest, holding the lock, for as long as the second writer takes
        assert first.poll() is None and _so_far(kb) < 800, first.communicate()
        second = subprocess.run([str(script), "kb", "rm", "big", str(docs)], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and second.stderr.strip().count("\n") == 0, second.stderr
        assert f"knowledge base 'big' is being changed by process {first.pid} (lmtune kb add big" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    kept = _so_far(kb)
    assert 0 < kept < 800 and KnowledgeBase("big").version == "v0"  # the killed add published nothing

    counting = Counting(Embedder(tiny_model, batch_size=64))
    report = add_paths(KnowledgeBase("big"), [str(docs)], counting)
    assert (report.added, counting.count) == (800, 800 - kept)  # only what the killed add had not embedded
    assert not (kb.folder / SO_FAR).exists()
    retriever = Retriever(KnowledgeBase("big"), Embedder(tiny_model))
    text = docs.joinpath("n7.txt").read_text().split("\n\n")[42]
    hit = retriever.search(text, top_k=1, hybrid=False)[0]
    assert hit.text == text and hit.score > 0.999 and retriever.version.chunks.count() == 800


def test_ivf_is_trained_again_as_the_base_grows(home):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6000, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = FaissStore.new(8, flat_limit=500)
    store.add(np.arange(1, 1001), vectors[:1000])
    trained = store.index.nlist
    store.add(np.arange(1001, 6001), vectors[1000:])
    assert store.kind.startswith("ivf") and store.index.nlist >= 2 * trained and store.count == 6000
    assert store.remove(np.array([17])) == 1
    assert np.allclose(store.vectors(np.array([18]))[0], vectors[17])  # ids kept through the retraining


def test_fusion_leaves_chinese_to_bm25_with_an_english_only_model():
    from lmtune.kb.embed import DEFAULT_MODEL, model_folder, model_languages

    config = KbConfig()
    assert model_languages(model_folder(DEFAULT_MODEL)) == ("en",)  # read from the model card
    assert (query_language("春节在几月？"), query_language("What is 春节?"), query_language("Seoul")) == ("zh", "en", "en")
    assert dense_weight("春节在几月？", ("en",), config) == config.foreign_dense_weight
    assert dense_weight("When is the Spring Festival?", ("en",), config) == 1.0
    assert dense_weight("春节在几月？", None, config) == 1.0  # a model card that names no language: trusted everywhere
    assert dense_weight("春节在几月？", ("zh", "en"), config) == 1.0
