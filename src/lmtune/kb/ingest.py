"""Files in and out of a knowledge base: add (only chunks not already there), remove, rebuild.

Embedding, nearly all of an ingest's time, goes in slices of SLICE batches, longest first; each
slice's vectors are committed to pending.EmbeddedSoFar, so an add that is killed resumes at the
slice it was in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmtune.errors import KbError
from lmtune.kb.base import KnowledgeBase, Version
from lmtune.kb.embed import Embedder
from lmtune.kb.keywords import tokenize
from lmtune.kb.loaders import collect_files, load_file
from lmtune.kb.pending import EmbeddedSoFar
from lmtune.kb.progress import EmbedProgress
from lmtune.kb.split import Chunk, chunk_pages

SLICE = 8  # batches embedded between commits (512 chunks by default): at most this much work is lost to a kill


@dataclass
class IngestReport:
    files: int = 0
    added: int = 0  # chunks embedded and stored
    unchanged: int = 0  # chunks already stored (same file, same text): kept, not embedded again
    removed: int = 0  # chunks gone from an edited file, or of removed files
    failed: list[tuple[Path, str]] = field(default_factory=list)  # files skipped, with the reason


def add_paths(kb: KnowledgeBase, paths: list[str], embedder: Embedder) -> IngestReport:
    kb.check_model(embedder.signature)
    files, report = _files(paths)
    with kb.change(embedder.signature) as version:
        pending = [chunk for file in files for chunk in _sync_file(version, file, kb, report)]
        _store(version, pending, embedder)
    EmbeddedSoFar(kb.folder, embedder.signature).discard()
    report.added = len(pending)
    return report


def remove_paths(kb: KnowledgeBase, paths: list[str]) -> IngestReport:
    """Every chunk of these files (or of the files under these folders), from the vectors too."""
    report = IngestReport()
    with kb.change() as version:
        for path in paths:
            ids = version.chunks.ids_under(str(Path(path).expanduser().resolve()))
            if not ids:
                raise KbError(f"{path}: no file of knowledge base '{kb.name}' is there (see: lmtune kb list {kb.name})")
            report.files += len({row["source"] for row in version.chunks.rows(ids).values()})
            report.removed += version.store.remove(np.asarray(ids))
            version.chunks.delete(ids)
    return report


def rebuild(kb: KnowledgeBase, embedder: Embedder) -> IngestReport:
    """Read every file of the knowledge base again and embed it anew (after edits, or with another model)."""
    with kb.open() as current:
        sources = [source for source, _count in current.chunks.sources()]
    report = IngestReport()
    present = [s for s in sources if Path(s).is_file()]
    report.failed += [(Path(s), "no longer there: dropped") for s in sources if s not in present]
    with kb.change(embedder.signature, fresh=True) as version:
        pending = [chunk for file in present for chunk in _sync_file(version, Path(file), kb, report)]
        _store(version, pending, embedder)
    EmbeddedSoFar(kb.folder, embedder.signature).discard()
    report.added = len(pending)
    return report


def _files(paths: list[str]) -> tuple[list[Path], IngestReport]:
    files, unsupported = collect_files(paths)
    return files, IngestReport(failed=list(unsupported))


def _sync_file(version: Version, file: Path, kb: KnowledgeBase, report: IngestReport) -> list[Chunk]:
    """The file's chunks that are not stored yet; stored ones that the file no longer has are removed."""
    try:
        chunks = chunk_pages(load_file(file), str(file), kb.config.chunk_size, kb.config.overlap)
    except KbError as exc:
        report.failed.append((file, str(exc)))
        return []
    report.files += 1
    known = version.chunks.hashes(str(file))
    fresh = [chunk for chunk in chunks if chunk.hash not in known]
    for chunk in chunks:
        if chunk.hash in known:
            version.chunks.move(known[chunk.hash], chunk)
    stale = [i for h, i in known.items() if h not in {c.hash for c in chunks}]
    if stale:
        version.store.remove(np.asarray(stale))
        version.chunks.delete(stale)
    report.unchanged += len(chunks) - len(fresh)
    report.removed += len(stale)
    return fresh


def _store(version: Version, chunks: list[Chunk], embedder: Embedder) -> None:
    if not chunks:
        return
    vectors = _embed(version.folder.parent, chunks, embedder)
    first = version.chunks.next_id()
    ids = np.arange(first, first + len(chunks), dtype=np.int64)
    version.store.add(ids, vectors)
    version.chunks.insert([(int(i), chunk, " ".join(tokenize(chunk.text))) for i, chunk in zip(ids, chunks)])


def _embed(folder: Path, chunks: list[Chunk], embedder: Embedder) -> np.ndarray:
    """The chunks' vectors: those an interrupted add left, and the rest embedded slice by slice, each kept when done."""
    so_far = EmbeddedSoFar(folder, embedder.signature)
    try:
        texts = {chunk.hash: chunk.text for chunk in chunks}  # a text repeated across files is embedded once
        found = so_far.get(list(texts))
        todo = sorted((h for h in texts if h not in found), key=lambda h: -len(texts[h]))
        with EmbedProgress(len(texts), len(found)) as progress:
            step = SLICE * embedder.batch_size
            for at in range(0, len(todo), step):
                part = todo[at : at + step]
                vectors = embedder.encode([texts[h] for h in part], progress=progress.advance)
                so_far.put(part, vectors)
                found.update(zip(part, vectors))
    finally:
        so_far.close()
    return np.stack([found[chunk.hash] for chunk in chunks]).astype(np.float32)
