"""`lmtune kb …`: knowledge bases for grounded answers. Heavy libraries load inside the commands."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lmtune.cli.output import console
from lmtune.errors import LmtuneError

kb_app = typer.Typer(no_args_is_help=True, help="Knowledge bases: ingest files, search them, ground answers in them.")
NAME = typer.Argument(..., help="Knowledge base name (a folder under $LMTUNE_HOME/kb, default ~/.lmtune/kb).")


@kb_app.command("create")
def create(
    name: str = NAME,
    embedding: Optional[str] = typer.Option(None, "--embedding", help="Embedding model folder or hub id (default: offline all-MiniLM-L6-v2)."),
    chunk_size: int = typer.Option(500, "--chunk-size", help="Most characters per chunk."),
    overlap: int = typer.Option(50, "--overlap", help="Characters a chunk repeats from the one before."),
    backend: str = typer.Option("auto", "--backend", help="What runs the embedding model: auto, torch, onnx, onnx-int8, openvino, openvino-bf16."),
):
    """Create an empty knowledge base."""
    from pydantic import ValidationError

    from lmtune.config import KbConfig, flag_problems
    from lmtune.kb.base import KnowledgeBase

    try:
        config = KbConfig(chunk_size=chunk_size, overlap=overlap, backend=backend, **({"embedding": embedding} if embedding else {}))
    except ValidationError as exc:
        raise LmtuneError(flag_problems(exc, {"backend": "--backend"})) from None
    kb = KnowledgeBase.create(name, config)
    console.print(f"created knowledge base '{name}' in {kb.folder} (embedding {kb.config.embedding}); add files: lmtune kb add {name} PATH")


@kb_app.command("add")
def add(name: str = NAME, paths: list[str] = typer.Argument(..., help="Files or folders (read recursively).")):
    """Add files (.txt .md .pdf .docx .html .json .jsonl); chunks already there are skipped."""
    from lmtune.kb.base import KnowledgeBase
    from lmtune.kb.embed import Embedder
    from lmtune.kb.ingest import add_paths
    from lmtune.kb.loaders import collect_files

    kb = KnowledgeBase(name)
    collect_files(paths)  # a path that is not there fails now, not after the model has loaded
    with kb.writing():  # another process changing it is named now, not after the model has loaded
        _report(add_paths(kb, paths, Embedder(kb.config.embedding, kb.config.batch_size, kb.backend)), kb)


@kb_app.command("rm")
def rm(name: str = NAME, paths: list[str] = typer.Argument(..., help="Files or folders whose chunks to remove.")):
    """Remove files' chunks, vectors included."""
    from lmtune.kb.base import KnowledgeBase
    from lmtune.kb.ingest import remove_paths

    kb = KnowledgeBase(name)
    with kb.writing():
        _report(remove_paths(kb, paths), kb)


@kb_app.command("rebuild")
def rebuild(
    name: str = NAME,
    embedding: Optional[str] = typer.Option(None, "--embedding", help="Re-embed with this model instead."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Re-embed with this backend instead (see kb create)."),
):
    """Read every file again, embed anew and rebuild the indexes."""
    from lmtune.kb.base import KnowledgeBase
    from lmtune.kb.embed import Embedder
    from lmtune.kb.ingest import rebuild as run_rebuild

    kb = KnowledgeBase(name)
    kb.set_embedding(embedding, backend)
    with kb.writing():
        _report(run_rebuild(kb, Embedder(kb.config.embedding, kb.config.batch_size, backend or kb.backend)), kb)


@kb_app.command("list")
def list_(name: Optional[str] = typer.Argument(None, help="Show this knowledge base's files.")):
    """The knowledge bases, or one knowledge base's files."""
    from lmtune.kb.base import KnowledgeBase, kb_names

    out = Console()
    if name is None:
        table = Table("name", "chunks", "files", "index", "embedding")
        for known in kb_names():
            kb = KnowledgeBase(known)
            with kb.open() as version:
                kind = version.store.kind if version.store else "empty"
                table.add_row(known, str(version.chunks.count()), str(len(version.chunks.sources())), kind, escape(kb.config.embedding))
        out.print(table)
        return
    kb = KnowledgeBase(name)
    with kb.open() as version:
        kind = version.store.kind if version.store else "empty"
        out.print(f"[bold]{name}[/]: {version.chunks.count()} chunks, index {kind}, embedding {escape(kb.config.embedding)} ({kb.backend} backend), "
                  f"chunk size {kb.config.chunk_size}, overlap {kb.config.overlap}")
        for source, count in version.chunks.sources():
            out.print(f"  {count:6d}  {escape(source)}", highlight=False)


@kb_app.command("search")
def search(
    name: str = NAME,
    query: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(3, "-k", "--top-k", help="Passages to return."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Least cosine similarity, -1 to 1 (higher = more similar)."),
    neighbors: int = typer.Option(0, "--neighbors", help="Chunks before and after each hit merged into it."),
    no_hybrid: bool = typer.Option(False, "--no-hybrid", help="Dense retrieval only, no BM25 fusion."),
    embedding: Optional[str] = typer.Option(None, "--embedding", help="Query with this model (must be the one the KB was built with)."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON: a list, best first."),
):
    """Search a knowledge base: the best passages with their cosine similarity and source."""
    from pydantic import ValidationError

    from lmtune.config import KbConfig, flag_problems
    from lmtune.kb.base import KnowledgeBase
    from lmtune.kb.embed import Embedder
    from lmtune.kb.retrieve import Retriever

    kb = KnowledgeBase(name)
    try:
        config = KbConfig(**{**kb.config.model_dump(), "top_k": k, "score_threshold": threshold, "neighbors": neighbors, "hybrid": not no_hybrid})
    except ValidationError as exc:
        raise LmtuneError(flag_problems(exc, {"top_k": "-k", "score_threshold": "--threshold"})) from None
    if embedding:  # checked against the KB's model before anything heavy loads
        kb.check_model({"model": embedding})
    retriever = Retriever(kb, Embedder(embedding or kb.config.embedding, config.batch_size, kb.backend), config)
    hits = retriever.search(query)
    if as_json:
        print(json.dumps([hit.to_dict() for hit in hits], ensure_ascii=False, indent=2))
        return
    out = Console()
    for n, hit in enumerate(hits, 1):
        page = f" p. {hit.page}" if hit.page else ""
        out.print(f"[bold]{n}.[/] {hit.score:.3f}  {escape(hit.source)}{page}", highlight=False)
        out.print(escape(hit.text), highlight=False)
    if not hits:
        console.print("no passage found" + (f" with cosine similarity ≥ {threshold}" if threshold is not None else ""))


def _report(report, kb) -> None:
    for path, reason in report.failed:
        console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(reason)}", highlight=False)
    console.print(
        f"{kb.name}: {report.files} file(s); {report.added} chunk(s) added, {report.unchanged} unchanged, {report.removed} removed"
    )
