"""`lmtune serve`: the OpenAI-compatible API and chat page over one model and its adapters."""

from __future__ import annotations

from typing import Optional

import typer

from lmtune.cli.options import KB_K, KB_THRESHOLD, MODEL, ON_NO_HIT, TEMPLATE
from lmtune.cli.output import console
from lmtune.errors import LmtuneError


def serve(
    model: Optional[str] = MODEL,
    adapter: Optional[list[str]] = typer.Option(
        None, "--adapter", help="Adapter folder, or NAME=DIR to serve several adapters on one base by name (repeatable)."
    ),
    template: Optional[str] = TEMPLATE,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0 = any free port)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LMTUNE_API_KEY", help="Key clients must send (or env LMTUNE_API_KEY)."),
    max_batch: int = typer.Option(32, "--max-batch", help="Most answers generated together."),
    max_queue: int = typer.Option(256, "--max-queue", help="Most waiting requests; more get 429."),
    replicas: int = typer.Option(1, "--replicas", help="Engine worker processes behind the one API."),
    backend: str = typer.Option("hf", "--backend", help="hf (lmtune's batcher over transformers) or vllm (installed by make vllm)."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", help="--backend vllm: GPUs each replica's model is split over."),
    eager: bool = typer.Option(False, "--eager", help="--backend vllm: skip torch.compile and CUDA graphs (starts fast, decodes slower)."),
    kb: Optional[list[str]] = typer.Option(None, "--kb", help="Knowledge base requests may name (repeatable); the first grounds every chat request."),
    kb_k: Optional[int] = KB_K,
    kb_threshold: Optional[float] = KB_THRESHOLD,
    on_no_hit: Optional[str] = ON_NO_HIT,
    embedding: Optional[str] = typer.Option(None, "--embedding", help="Model behind /v1/embeddings (default: the first --kb's, else all-MiniLM-L6-v2)."),
):
    """Serve the model over an OpenAI-compatible HTTP API, with a chat page."""
    from pydantic import ValidationError

    from lmtune.config import ServeConfig, flag_problems
    from lmtune.serve.server import serve as run_server

    unnamed = [a for a in adapter or [] if not _named(a)]
    if len(unnamed) > 1:
        raise LmtuneError(f"--adapter given {len(unnamed)} folders without a name; name the extra ones: --adapter NAME=DIR")
    named = dict(a.split("=", 1) for a in adapter or [] if _named(a))
    try:
        config = ServeConfig(model=model, adapter=unnamed[0] if unnamed else None, adapters=named, template=template, host=host,
                             port=port, api_key=api_key, max_batch=max_batch, max_queue=max_queue, replicas=replicas, backend=backend,
                             tensor_parallel_size=tensor_parallel_size, eager=eager,
                             kbs=kb or [], kb_k=kb_k, kb_threshold=kb_threshold, on_no_hit=on_no_hit, embedding=embedding)
    except ValidationError as exc:
        raise LmtuneError(flag_problems(exc, {"adapters": "--adapter", "kbs": "--kb"})) from None
    run_server(config, say=console.print)


def _named(adapter: str) -> bool:
    """NAME=DIR, as opposed to a folder (which may hold '=' further down its path)."""
    name, sep, _ = adapter.partition("=")
    return bool(sep and name) and "/" not in name
