"""The vector store: ids ↔ unit vectors, searched by inner product (= cosine similarity).

Everything else in the knowledge base talks to it through four methods (add, remove, search,
save), so a server-grade vector database can stand in for FAISS later. Up to `flat_limit`
vectors the index is exact (IndexIDMap2 over IndexFlatIP); past it, it is rebuilt as IVF
(inverted lists, an approximate search that scans a tenth of them), and trained again each time the
base has grown fourfold, so the lists stay about 4·√n. HNSW would search as fast, but FAISS cannot
remove vectors from an HNSW graph, and `kb rm` must really remove them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np

def nprobe(nlist: int) -> int:
    """Lists an IVF search scans, a tenth of them: recall@10 0.994 against exact search at 100,000 chunks
    (1,264 lists, 128 scanned: 1.2 ms; 32 scanned gave 0.955), benchmarks/RESULTS.md, issue 26."""
    return max(16, nlist // 10)


class VectorStore(Protocol):
    kind: str

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> int: ...
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def vectors(self, ids: np.ndarray) -> np.ndarray: ...
    def save(self, path: Path) -> None: ...
    @property
    def count(self) -> int: ...


class FaissStore:
    def __init__(self, index, flat_limit: int):
        self.index, self.flat_limit = index, flat_limit

    @classmethod
    def new(cls, dimension: int, flat_limit: int) -> FaissStore:
        import faiss

        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dimension)), flat_limit)

    @classmethod
    def load(cls, path: Path, flat_limit: int) -> FaissStore:
        import faiss

        index = faiss.read_index(str(path))
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = nprobe(index.nlist)
        return cls(index, flat_limit)

    @property
    def kind(self) -> str:
        import faiss

        index = self.index
        if isinstance(index, faiss.IndexIVF):
            return f"ivf (nlist {index.nlist}, nprobe {index.nprobe})"
        return "flat (exact)"

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        import faiss

        self.index.add_with_ids(vectors, ids.astype(np.int64))
        if isinstance(self.index, faiss.IndexIVF):
            if _lists(self.count) >= 2 * self.index.nlist:  # grown fourfold since it was trained
                self.index = _ivf(*_ivf_contents(self.index))
        elif self.count > self.flat_limit:
            self.index = _ivf(self.index.index.reconstruct_n(0, self.count), faiss.vector_to_array(self.index.id_map))

    def remove(self, ids: np.ndarray) -> int:
        return int(self.index.remove_ids(ids.astype(np.int64)))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), best first per query; an id of -1 marks a slot with no vector."""
        import faiss

        # One query on one thread: FAISS's OpenMP threads, woken for a single query, wait on each other
        # for the cores other processes hold; on the shared 2-core machine a flat search of 10,000
        # vectors took 25-48 ms on two threads and 0.4 ms on one (benchmarks/RESULTS.md, issue 26).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1 if len(vectors) < 16 else threads)
        try:
            return self.index.search(vectors, min(k, max(self.count, 1)))
        finally:
            faiss.omp_set_num_threads(threads)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.index.d), np.float32)

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))


def _lists(count: int) -> int:
    # FAISS's rule of thumb: 4·√n to 16·√n lists, with at least the 39 training points per list it asks for
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


def _ivf_contents(ivf) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ids) of an IVF index, list by list."""
    import faiss

    lists = ivf.invlists
    ids = np.concatenate([faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(ivf.nlist)])
    return ivf.reconstruct_batch(ids), ids


def _ivf(vectors: np.ndarray, ids: np.ndarray) -> object:
    """These vectors, under these ids, in an IVF index trained on them."""
    import faiss

    count, dimension = vectors.shape
    nlist = _lists(count)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    # A hash-table direct map: ids → vectors for reconstruct (scores of keyword-only hits) and remove_ids.
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    ivf.add_with_ids(vectors, ids)
    ivf.nprobe = nprobe(nlist)
    return ivf
