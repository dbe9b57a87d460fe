"""`lmtune train | export | tokenizer extend | demo`: the commands that make or change a model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lmtune.cli.options import ADAPTER, MODEL
from lmtune.cli.output import console, debugging, out_console
from lmtune.errors import LmtuneError


def train(
    config: Path = typer.Argument(..., help="Run config (YAML or JSON)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. train.learning_rate=1e-4"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="Processes (devices) to train on; default: every visible GPU."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run's results in train.output_dir."),
):
    """Fine-tune a model as the config says; results go to train.output_dir."""
    from lmtune.train.launch import checked_run, processes_wanted, relaunch

    overrides = [*(overrides or []), *(["train.overwrite_output_dir=true"] if overwrite else [])]
    settings, read = checked_run(config, overrides)  # a bad config or record fails here, once, before any launch
    if count := processes_wanted(nproc):
        del read  # the launched processes read the data themselves
        raise typer.Exit(relaunch(count, [*(["--debug"] if debugging() else []), "train", str(config), *overrides]))
    from lmtune.train.run import train as run_training

    try:
        result = run_training(settings, read)
    finally:
        _leave_process_group()
    if not result.main_process:
        return
    console.print(f"[green]done[/]: average training loss {result.final_loss:.4f}")
    curve = result.loss_plot or "none: the run was shorter than train.logging_steps"
    console.print(f"outputs in {result.output_dir} (loss curve: {curve})")


def export(
    out: Path = typer.Option(..., "--out", help="Folder for the exported model."),
    model: Optional[str] = MODEL,
    adapter: Optional[str] = ADAPTER,
    fmt: str = typer.Option("safetensors", "--format", help="safetensors (a Hugging Face folder) | gguf (llama.cpp, Ollama)"),
    quant: str = typer.Option("f16", "--quant", help="With --format gguf: f32 | f16 | bf16 | q8_0."),
    adapter_only: bool = typer.Option(False, "--adapter-only", help="With --format gguf: the LoRA adapter alone, for llama.cpp's --lora."),
    max_shard_size: str = typer.Option("2GB", "--max-shard-size", help="Largest safetensors shard, e.g. 2GB."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    dequantize: bool = typer.Option(False, "--dequantize", help="Merge into a full-precision copy of a quantised base."),
):
    """Merge a LoRA/DoRA adapter into its base and write a Hugging Face folder, or a GGUF file and an Ollama Modelfile."""
    from lmtune.model.gguf_arch import check_quant
    from lmtune.model.load import DTYPES

    if not (model or adapter):
        raise LmtuneError("pass --model DIR, --adapter DIR, or both")
    if fmt not in ("safetensors", "gguf"):
        raise LmtuneError(f"--format {fmt}: choose safetensors or gguf")
    if fmt == "gguf":
        return _export_gguf(out, model, adapter, check_quant(quant), adapter_only, dequantize)
    if adapter_only:
        raise LmtuneError("--adapter-only goes with --format gguf (an adapter folder is already safetensors)")
    if dtype not in DTYPES:
        raise LmtuneError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    from lmtune.model.export import export as run_export

    run_export(out, model, adapter, max_shard_size, dtype, dequantize)
    console.print(f"merged model written to {out}; try: lmtune chat --model {out}")


def _export_gguf(out: Path, model: str | None, adapter: str | None, quant: str, adapter_only: bool, dequantize: bool) -> None:
    from lmtune.model.gguf_export import export_gguf

    done = export_gguf(out, model, adapter, quant, adapter_only, dequantize)
    console.print(f"GGUF written to {done.file}")
    if adapter_only:
        console.print(f"llama.cpp: llama-cli -m BASE.gguf --lora {done.file}")
    else:
        console.print(f"llama.cpp: llama-cli -m {done.file} -cnv")
    if done.note:
        console.print(done.note)
    if done.ollama_create:
        console.print(f"Ollama: {done.ollama_create}")


tokenizer_app = typer.Typer(no_args_is_help=True, help="Grow a tokenizer (and its model's embeddings) from a corpus.")


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


def demo(
    out: Path = typer.Option(None, "--out", help="Folder for the demo's models and results (runs/demo, runs/demo-real)."),
    questions: int = typer.Option(20, "--questions", help="How many training questions to ask."),
    real: bool = typer.Option(False, "--real", help="Fine-tune a real model (SmolLM2-135M-Instruct) instead of a tiny random one."),
    model: Path = typer.Option(None, "--model", help="With --real: the model to fine-tune (a .gguf file or a folder)."),
):
    """Train a tiny bilingual model on the bundled data (CPU, a few minutes) and quiz it; --real
    teaches SmolLM2-135M-Instruct new facts and shows its answers before and after."""
    if real:
        return _real_demo(out or Path("runs/demo-real"), model)
    out = out or Path("runs/demo")
    from lmtune.demo import run_demo

    result = run_demo(out, questions, log=console.print)
    table = Table("#", "question", "expected", "model's answer", "ok")
    for column in table.columns[1:4]:
        column.overflow = "fold"  # show whole answers, Chinese included, however narrow the terminal
    for i, (question, expected, answer) in enumerate(result.rows, 1):
        table.add_row(str(i), question, expected, answer, "[green]✓[/]" if answer == expected else "[red]✗[/]")
    out_console.print(table)
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


def _real_demo(out: Path, model: Path | None) -> None:
    from lmtune.demo_real import run_real_demo
    from lmtune.kb.backends import cpu_count

    result = run_real_demo(out, model, log=console.print)
    for title, answers in (("held-out paraphrases (new facts)", result.held_out), ("general questions (kept)", result.general)):
        table = Table("#", "question", "base model", "fine-tuned", "ok", title=title)
        for column in table.columns[1:4]:
            column.overflow = "fold"
        for i, a in enumerate(answers, 1):
            before = a.before if len(a.before) <= 80 else a.before[:79] + "…"  # the base rambles; its first words tell
            table.add_row(str(i), a.question, before, a.after, "[green]✓[/]" if a.right(a.after) else "[red]✗[/]")
        out_console.print(table)
    base_learned = sum(a.right(a.before) for a in result.held_out)
    after, before = result.kept
    verdict = "[green]passed[/]" if result.passed else "[red]failed[/]"
    minutes, seconds = divmod(round(result.seconds), 60)
    adapter = result.adapter.relative_to(Path.cwd()) if result.adapter.is_relative_to(Path.cwd()) else result.adapter
    console.print(
        f"new facts: {result.learned}/{len(result.held_out)} held-out questions answered with them (base model: {base_learned}); "
        f"general answers: {after}/{len(result.general)} right (base model: {before})\n"
        f"{verdict} in {minutes} min {seconds:02d} s on {cpu_count()} CPU cores; adapter: {adapter}\n"
        f"try it: lmtune chat --adapter {adapter}"
    )
    if not result.passed:
        raise typer.Exit(1)


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before exiting: left to interpreter shutdown, gloo's
    threads can abort a rank that has finished ('terminate called without an active exception')."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
