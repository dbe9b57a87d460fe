"""The `lmtune` command: each command parses its options and calls into the packages."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lmtune.cli_data import data_app
from lmtune.cli_doctor import doctor, env
from lmtune.cli_infer import ADAPTER, KB_K, KB_THRESHOLD, MODEL, ON_NO_HIT, TEMPLATE, chat, eval_app, generate
from lmtune.cli_kb import kb_app
from lmtune.errors import LmtuneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune open causal language models from one YAML config; evaluate, chat with and serve them, grounded in your documents.",
)
app.add_typer(data_app, name="data")
console = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs.")):
    _state["debug"] = debug
    _setup_logging(debug)


@app.command()
def train(
    config: Path = typer.Argument(..., help="Run config (YAML or JSON)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. train.learning_rate=1e-4"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="Processes (devices) to train on; default: every visible GPU."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run's results in train.output_dir."),
):
    """Fine-tune a model as the config says; results go to train.output_dir."""
    from lmtune.config import load_config
    from lmtune.train.launch import processes_wanted, relaunch
    from lmtune.train.run import train as run_training

    overrides = [*(overrides or []), *(["train.overwrite_output_dir=true"] if overwrite else [])]
    settings = load_config(config, overrides)  # a bad config fails here, once, before any launch
    if count := processes_wanted(nproc):
        raise typer.Exit(relaunch(count, [*(["--debug"] if _state["debug"] else []), "train", str(config), *overrides]))
    try:
        result = run_training(settings)
    finally:
        _leave_process_group()
    if not result.main_process:
        return
    console.print(f"[green]done[/]: average training loss {result.final_loss:.4f}")
    curve = result.loss_plot or "none: the run was shorter than train.logging_steps"
    console.print(f"outputs in {result.output_dir} (loss curve: {curve})")


app.command()(chat)
app.command()(generate)
app.add_typer(eval_app, name="eval")
app.add_typer(kb_app, name="kb")
app.command()(doctor)
app.command()(env)


@app.command()
def export(
    out: Path = typer.Option(..., "--out", help="Folder for the merged model."),
    model: Optional[str] = MODEL,
    adapter: Optional[str] = ADAPTER,
    max_shard_size: str = typer.Option("2GB", "--max-shard-size", help="Largest safetensors shard, e.g. 2GB."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    dequantize: bool = typer.Option(False, "--dequantize", help="Merge into a full-precision copy of a quantised base."),
):
    """Merge a LoRA/DoRA adapter into its base and write a plain Hugging Face model folder."""
    from lmtune.model.export import export as run_export
    from lmtune.model.load import DTYPES

    if not (model or adapter):
        raise LmtuneError("pass --model DIR, --adapter DIR, or both")
    if dtype not in DTYPES:
        raise LmtuneError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    run_export(out, model, adapter, max_shard_size, dtype, dequantize)
    console.print(f"merged model written to {out}; try: lmtune chat --model {out}")


@app.command()
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
    backend: str = typer.Option("hf", "--backend", help="hf (transformers) or vllm (CUDA GPU)."),
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
                             kbs=kb or [], kb_k=kb_k, kb_threshold=kb_threshold, on_no_hit=on_no_hit, embedding=embedding)
    except ValidationError as exc:
        raise LmtuneError(flag_problems(exc, {"adapters": "--adapter", "kbs": "--kb"})) from None
    run_server(config, say=console.print)


def _named(adapter: str) -> bool:
    """NAME=DIR, as opposed to a folder (which may hold '=' further down its path)."""
    name, sep, _ = adapter.partition("=")
    return bool(sep and name) and "/" not in name


tokenizer_app = typer.Typer(no_args_is_help=True, help="Grow a tokenizer (and its model's embeddings) from a corpus.")
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("extend")
def tokenizer_extend(
    base: str = typer.Option(..., "--base", help="Model folder whose tokenizer and embeddings grow."),
    corpus: list[str] = typer.Option(..., "--corpus", help="Text or data files (repeatable)."),
    add: int = typer.Option(..., "--add", min=1, help="How many new tokens to add."),
    out: Path = typer.Option(..., "--out", help="Folder for the extended model and tokenizer."),
):
    """Add the corpus's most frequent missing tokens; new embeddings start at the mean of the old."""
    from lmtune.model.vocab import extend_vocabulary

    result = extend_vocabulary(base, corpus, add, out)
    saved = 1 - result.tokens_after / result.tokens_before
    console.print(
        f"added {len(result.added)} tokens (e.g. {', '.join(result.added[:8])}); the corpus takes "
        f"{result.tokens_after:,} tokens instead of {result.tokens_before:,} ({saved:.0%} fewer). Saved to {out}"
    )


templates_app = typer.Typer(help="List the prompt templates, or show one rendered with its trained spans.")
app.add_typer(templates_app, name="templates")


@templates_app.callback(invoke_without_command=True)
def templates(ctx: typer.Context, file: Optional[Path] = typer.Option(None, "--file", help="Your own templates (YAML).")):
    """List the templates (built-in, plus those in --file)."""
    from lmtune.templates.template import load_templates

    if ctx.invoked_subcommand:
        return
    table = Table("name", "format")
    for name, template in sorted(load_templates(file).items()):
        table.add_row(name, escape(template.description))
    Console().print(table)


@templates_app.command("show")
def templates_show(
    name: str = typer.Argument(..., help="Template name."),
    file: Optional[Path] = typer.Option(None, "--file", help="Your own templates (YAML)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt for the example."),
):
    """Render a two-turn example; trained spans (what the model learns to write) are highlighted."""
    from rich.text import Text

    from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
    from lmtune.templates.template import get_template

    template = get_template(name, file)
    example = Conversation(
        [Turn(USER, "你好！"), Turn(ASSISTANT, "你好，有什么可以帮你？"), Turn(USER, "What is 2+2?"), Turn(ASSISTANT, "4.")],
        system=system,
    )
    text = Text()
    for segment in template.render(example, bos="<s>", eos="</s>"):
        text.append(segment.text, style="bold black on green" if segment.answer else "")
    out = Console()
    out.print(f"[bold]{name}[/]: {escape(template.description)}  (trained spans highlighted; <s>/</s> stand for BOS/EOS)\n")
    out.print(text, highlight=False)
    out.print(f"\nanswers end with: {' or '.join(template.end_tokens())}   extra stop strings: {list(template.stop) or 'none'}", markup=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the demo's models and results."),
    questions: int = typer.Option(20, "--questions", help="How many training questions to ask."),
):
    """Train a tiny bilingual model on the bundled data (CPU, a few minutes) and quiz it."""
    from lmtune.demo import run_demo

    result = run_demo(out, questions, log=console.print)
    table = Table("#", "question", "expected", "model's answer", "ok")
    for column in table.columns[1:4]:
        column.overflow = "fold"  # show whole answers, Chinese included, however narrow the terminal
    for i, (question, expected, answer) in enumerate(result.rows, 1):
        table.add_row(str(i), question, expected, answer, "[green]✓[/]" if answer == expected else "[red]✗[/]")
    Console().print(table)
    needed = -(-len(result.rows) * 9 // 10)  # 90%, e.g. 18 of 20
    verdict = "[green]passed[/]" if result.matches >= needed else "[red]failed[/]"
    console.print(
        f"{result.matches}/{len(result.rows)} exact answers (need {needed}): {verdict} in {result.seconds:.0f}s "
        f"(the base model without the LoRA adapter: {result.base_matches}/{len(result.rows)})\n"
        f"loss curves: {out / 'base' / 'loss.png'}, {out / 'sft' / 'loss.png'}; adapter: {out / 'sft'}\n"
        f"try it: lmtune chat --adapter {out / 'sft'}"
    )
    if result.matches < needed:
        raise typer.Exit(1)


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before exiting: left to interpreter shutdown, gloo's
    threads can abort a rank that has finished ('terminate called without an active exception')."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger("lmtune").setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*pin_memory.*")


def main() -> None:
    try:
        app()
    except LmtuneError as exc:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
