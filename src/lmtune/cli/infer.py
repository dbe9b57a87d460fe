"""`lmtune chat | generate | eval`: the commands that load a model through the one engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lmtune.cli.options import ADAPTER, BACKEND, KB_K, KB_THRESHOLD, MODEL, ON_NO_HIT, QUANTIZE, TEMPLATE, sampling_options
from lmtune.cli.output import console, out_console
from lmtune.errors import LmtuneError

THINKING = typer.Option(
    None, "--thinking", help="on | off: a thinking model reasons first, or answers at once (Qwen3's switch; default: the template's own)."
)


def thinking_switch(value: str | None) -> bool | None:
    """--thinking on | off as Conversation.thinking (None: not given)."""
    if value is None:
        return None
    if value not in ("on", "off"):
        raise LmtuneError(f"--thinking {value}: choose on or off")
    return value == "on"


def load(model, adapter, template, sampling: dict, defaults: dict | None = None, quantize: int | None = None, backend: str = "hf",
         weights: bool = True, eager: bool = False):
    """The engine, with the run's generate settings under the command-line ones. backend vllm:
    generation on vLLM (serve/vllm.py), the transformers weights loaded too only where `weights`
    (eval scores loss and choices with them)."""
    from pydantic import ValidationError

    from lmtune.config import GenerateConfig, flag_problems, load_run_config

    if not (model or adapter):
        raise LmtuneError("pass --model DIR, --adapter DIR, or both")
    run = load_run_config(adapter or model)
    settings = (run.generate if run else GenerateConfig()).model_dump()
    try:
        settings = GenerateConfig.model_validate({**settings, **(defaults or {}), **sampling})
    except ValidationError as exc:
        raise LmtuneError(flag_problems(exc)) from None
    if quantize not in (None, 4, 8):
        raise LmtuneError(f"--quantize {quantize}: choose 4 or 8 (bits)")
    check_backend(backend)
    if backend == "vllm":
        return _load_vllm(model, adapter, template, settings, quantize, weights, eager)
    from lmtune.infer.engine import load_engine  # torch and transformers: only once the flags hold

    return load_engine(model, adapter, template, settings, quantize)


def check_backend(backend: str) -> None:
    """--backend: hf, or vllm where it is installed (checked before any data or model is read)."""
    if backend not in ("hf", "vllm"):
        raise LmtuneError(f"--backend {backend}: choose hf or vllm")
    if backend == "vllm":
        from lmtune.serve.vllm_install import check_vllm

        check_vllm()


def _load_vllm(model, adapter, template, settings, quantize: int | None, weights: bool, eager: bool):
    if quantize:
        raise LmtuneError("--quantize goes with --backend hf (bitsandbytes); vLLM loads quantized checkpoints (AWQ, GPTQ, FP8) by itself")
    from lmtune.infer.engine import load_engine
    from lmtune.serve.vllm import load_vllm_engine

    hf = load_engine(model, adapter, template, settings).model if weights else None
    return load_vllm_engine(model, adapter, template, settings=settings, hf_model=hf, eager=eager)


@sampling_options
def chat(
    model: Optional[str] = MODEL,
    adapter: Optional[str] = ADAPTER,
    template: Optional[str] = TEMPLATE,
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    quantize: Optional[int] = QUANTIZE,
    kb: Optional[str] = typer.Option(None, "--kb", help="Knowledge base to ground every answer in (see `lmtune kb`)."),
    kb_k: Optional[int] = KB_K,
    kb_threshold: Optional[float] = KB_THRESHOLD,
    on_no_hit: Optional[str] = ON_NO_HIT,
    thinking: Optional[str] = THINKING,
    sampling: dict = None,
):
    """Talk to a model in the terminal; answers (and a thinking model's reasoning, dimmed) stream as they are generated."""
    switch = thinking_switch(thinking)
    retriever = None
    if kb:  # before the model loads: a missing knowledge base fails at once
        from lmtune.kb.ground import open_retriever

        retriever = open_retriever(kb, top_k=kb_k, score_threshold=kb_threshold, on_no_hit=on_no_hit)
    engine = load(model, adapter, template, sampling, quantize=quantize)
    from lmtune.infer.chat import chat_loop

    def write(text: str, style: str | None = None) -> None:
        if style:  # rich styles only where stdout is a terminal; plain text when piped
            out_console.print(text, style=style, end="", markup=False, highlight=False, emoji=False)
        else:
            sys.stdout.write(text)
        sys.stdout.flush()

    chat_loop(engine, input, write, system, retriever, switch)


@sampling_options
def generate(
    data: Path = typer.Option(..., "--data", help="Records to answer (any supported data format)."),
    out: Path = typer.Option(
        ..., "--out", help="Output .jsonl: every input field plus `prediction` (and a thinking model's `reasoning`); re-running resumes."
    ),
    model: Optional[str] = MODEL,
    adapter: Optional[str] = ADAPTER,
    template: Optional[str] = TEMPLATE,
    as_dataset: Optional[str] = typer.Option(
        None, "--as-dataset", help="Also write the answers as a training set (alpaca | sharegpt | messages): distillation."
    ),
    quantize: Optional[int] = QUANTIZE,
    thinking: Optional[str] = THINKING,
    json_schema: Optional[Path] = typer.Option(
        None, "--json-schema", help="JSON Schema file: every prediction is JSON valid against it (constrained decoding; thinking off)."
    ),
    backend: str = BACKEND,
    eager: bool = typer.Option(False, "--eager", help="--backend vllm: skip torch.compile and CUDA graphs (starts fast, decodes slower)."),
    sampling: dict = None,
):
    """Answer every record of a data file in batches; re-running skips records already answered."""
    from rich.progress import Progress

    from lmtune.infer.generate import DATASET_FORMATS, generate_file, read_items, write_dataset

    if as_dataset and as_dataset not in DATASET_FORMATS:
        raise LmtuneError(f"--as-dataset {as_dataset}: choose one of {', '.join(DATASET_FORMATS)}")
    check_backend(backend)
    spec = None
    if json_schema:  # checked before the model loads
        from lmtune.infer.grammar import spec_from_file

        spec = spec_from_file(json_schema)
    items = read_items(data, False if spec else thinking_switch(thinking))
    engine = load(model, adapter, template, sampling, quantize=quantize, backend=backend, weights=False, eager=eager)
    with Progress(console=console) as progress:
        task = progress.add_task("generating", total=len(items))
        result = generate_file(engine, items, out, engine.settings.batch_size, lambda n: progress.advance(task, n), spec)
    earlier = result.records - result.answered
    console.print(f"wrote {result.records} predictions to {out}" + (f" ({earlier} from an earlier run)" if earlier else ""))
    if as_dataset:
        path = out.with_name(f"{out.stem}.{as_dataset}.jsonl")
        counts = write_dataset(items, result.rows, as_dataset, path)
        console.print(f"training set ({as_dataset}) in {path}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))


# ---------------------------------------------------------------- eval

eval_app = typer.Typer(
    help="Evaluate a model (dev loss, BLEU/ROUGE, multiple choice, lm-evaluation-harness tasks), score predictions, or compare two."
)


@eval_app.callback(invoke_without_command=True)
@sampling_options
def evaluate(
    ctx: typer.Context,
    model: Optional[str] = MODEL,
    adapter: Optional[str] = ADAPTER,
    template: Optional[str] = TEMPLATE,
    data: Optional[Path] = typer.Option(None, "--data", help="Dev set with answers (default: the run's data.val_size split)."),
    choice: Optional[Path] = typer.Option(None, "--choice", help="Multiple-choice CSV file or folder (C-Eval, CMMLU, MMLU layout)."),
    shots: int = typer.Option(0, "--shots", min=0, help="Few-shot examples per multiple-choice question, from the subject's dev file."),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", min=1, help="Only the first N dev records, and N questions per subject."),
    with_base: bool = typer.Option(False, "--with-base", help="Also evaluate the model this one was trained from, side by side."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for results.json and predictions (default: MODEL_OR_ADAPTER/eval)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Only score this prediction file (no model)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
    tasks: Optional[str] = typer.Option(
        None, "--tasks", help="lm-evaluation-harness tasks, comma-separated (mmlu, ceval-valid, cmmlu, gsm8k …); alone, nothing else is measured."
    ),
    include_path: Optional[list[Path]] = typer.Option(
        None, "--include-path", help="Folder of lm_eval task YAMLs (local tasks over local files); repeat for more folders."
    ),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", min=0, help="Few-shot examples per --tasks question (default: each task's own)."),
    chat_template: Optional[bool] = typer.Option(
        None, "--chat-template/--no-chat-template", help="Prompt --tasks through the run's template (default: generation tasks only)."
    ),
    quantize: Optional[int] = QUANTIZE,
    backend: str = BACKEND,
    sampling: dict = None,
):
    """Evaluate a model and, with --with-base, the model it was trained from, in one table."""
    if ctx.invoked_subcommand:
        return
    if predictions:
        return _score_predictions(predictions, as_json)
    from rich.progress import Progress

    from lmtune.config import load_run_config

    check_backend(backend)
    run = load_run_config(adapter or model) if (adapter or model) else None
    if with_base and run is None:
        raise LmtuneError("--with-base: the model folder has no run.yaml naming the model it was trained from")
    harness = _harness_tasks(tasks, include_path, num_fewshot, chat_template)  # the names checked before the model loads
    if not (tasks or data or choice or (run and run.data.val_size)):
        raise LmtuneError(
            "nothing to evaluate: pass --data DEV_FILE and/or --choice CSV_OR_FOLDER (the run has no data.val_size dev split), or --tasks NAME"
        )
    # greedy: scores that can be redone; with --backend vllm the answers come from vLLM, loss and choices from the weights
    engine = load(model, adapter, template, sampling, defaults={"temperature": 0.0}, quantize=quantize, backend=backend)
    from lmtune.evaluate.suite import base_of, build_suite, write_results

    # --tasks alone runs only the harness; --data or --choice beside it add lmtune's own measures
    suite = build_suite(engine, run, data, choice, shots, max_samples) if (data or choice or not tasks) else None
    out = out or Path(adapter or model) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with Progress(console=console) as progress:

        def track(what: str, total: int):
            task = progress.add_task(what, total=total)
            return lambda n: progress.advance(task, n)

        if with_base:
            with base_of(engine, run.model) as base:
                results["base"] = _measure(base, suite, harness, out, "base", track, max_samples)
        label = "fine-tune" if with_base else "model"
        results[label] = _measure(engine, suite, harness, out, label, track, max_samples)
    written, report = write_results(out, results), ""
    if with_base and suite and suite.dev:
        from lmtune.evaluate.report import write_comparison

        pair = [out / f"{name}_predictions.jsonl" for name in results]
        write_comparison(*pair, out / "compare.html", tuple(results))
        report = f"; answers side by side in {out / 'compare.html'}"
    if as_json:
        print(json.dumps(results, ensure_ascii=False))
    else:
        _print_table(results)
    console.print(f"results in {written}{report}")


def _harness_tasks(tasks: str | None, include_path, num_fewshot: int | None, chat_template: bool | None):
    if not tasks:
        if include_path or num_fewshot is not None or chat_template is not None:
            raise LmtuneError("--include-path, --num-fewshot and --chat-template go with --tasks NAME[,NAME…]")
        return None
    from lmtune.evaluate.harness import resolve_tasks

    return resolve_tasks(tasks, include_path, num_fewshot, chat_template)


def _measure(engine, suite, harness, out: Path, label: str, track, limit: int | None) -> dict:
    """One model's results: lmtune's own measures (suite) and the lm-evaluation-harness tasks."""
    from lmtune.evaluate.suite import evaluate as run_suite

    result = run_suite(engine, suite, out, label, track) if suite else {}
    if harness:
        from lmtune.evaluate.harness import run_tasks

        console.print(f"{label}: lm-evaluation-harness {', '.join(harness.names)}")
        result["harness"] = run_tasks(engine, harness, limit, out / f"{label}_harness_samples.jsonl")
    return result


def _print_table(results: dict) -> None:
    from lmtune.evaluate import harness
    from lmtune.evaluate.suite import table_rows

    names = list(results)
    table = Table("metric", *names, *(["change"] if len(names) == 2 else []))
    for metric, values, higher in table_rows(results) + harness.table_rows(results):
        cells = ["–" if v is None else f"{v:.2f}" for v in values]
        if len(values) == 2 and None not in values:
            change = values[1] - values[0]
            better = change > 0 if higher else change < 0
            colour = "green" if better else "red" if change else "white"
            cells.append(f"[{colour}]{change:+.2f}[/]")
        elif len(names) == 2:
            cells.append("")
        table.add_row(metric, *cells)
    out_console.print(table)


def _score_predictions(predictions: Path, as_json: bool) -> None:
    from lmtune.evaluate.metrics import score_file

    result = score_file(predictions)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
        return
    _print_table({str(predictions): {"generation": result}})
    console.print(f"written to {result['written_to']}")


@eval_app.command("compare")
def compare(
    pred_a: Path = typer.Argument(..., help="Predictions of the first model (from `lmtune generate`)."),
    pred_b: Path = typer.Argument(..., help="Predictions of the second model, for the same data file."),
    out: Path = typer.Option(Path("compare.html"), "--out", help="HTML report to write."),
    names: str = typer.Option("A,B", "--names", help="Two names for the columns, comma-separated."),
):
    """An HTML report with both models' answers side by side, the reference and per-record metrics."""
    from lmtune.evaluate.report import write_comparison

    pair = tuple(n.strip() for n in names.split(","))
    if len(pair) != 2 or not all(pair):
        raise LmtuneError(f"--names {names!r}: give two names separated by a comma, e.g. base,lora")
    summary = write_comparison(pred_a, pred_b, out, pair)
    console.print(f"{summary['records']} records compared; report in {out}")
