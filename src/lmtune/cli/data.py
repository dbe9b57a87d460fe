"""`lmtune data …`: inspect, convert, split, mix, filter and encode data files."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from lmtune.cli.output import console, out_console
from lmtune.config import DATA_FORMATS, DataConfig, FiltersConfig, flag_problems
from lmtune.errors import BadRecordError, ConfigError

data_app = typer.Typer(no_args_is_help=True, help="Inspect, convert, split, mix, filter and encode data files.")

FORMAT = typer.Option("auto", "--format", help=f"Input format: {', '.join(DATA_FORMATS)}.")
ON_ERROR = typer.Option("raise", "--on-error", help="raise: stop at the first bad record; skip: set it aside.")
SEED = typer.Option(42, "--seed", help="Seed for sampling and splits.")
# DataConfig fields whose flag is not simply --field-name
FLAGS = {"format": "--format", "languages": "--language", "path": "FILES", "dataset": "FILES", "mix": "FILE=SHARE|COUNT"}
DATASET_DIR = typer.Option("data", "--dataset-dir", help="Folder with dataset_info.json, for dataset names.")
ENCODING = typer.Option("auto", "--encoding", help="Text encoding of the files (utf-8, gb18030, big5, cp1252 …); auto detects it.")


def _config(inputs: list[str], dataset_dir: str = "data", **settings) -> DataConfig:
    """Existing paths are files or folders; anything else is a dataset name in dataset_dir."""
    paths = [i for i in inputs if Path(i).exists()]
    names = [i for i in inputs if not Path(i).exists()]
    if names and not (Path(dataset_dir) / "dataset_info.json").is_file():
        raise ConfigError(f"data file not found: {names[0]} (and no {dataset_dir}/dataset_info.json to look it up)")
    try:
        return DataConfig(path=paths, dataset=names, dataset_dir=dataset_dir, cache=False, **settings)
    except ValidationError as exc:
        raise ConfigError(flag_problems(exc, FLAGS)) from None


def _encoder(tokenizer: Optional[str], data: DataConfig):
    """The encoder training would build for these data settings; `auto` takes the tokenizer's chat_template."""
    from lmtune.data.encode import Encoder
    from lmtune.model.load import load_tokenizer
    from lmtune.templates.hf import template_for

    if not tokenizer:
        return None
    loaded = load_tokenizer(tokenizer)
    return Encoder.for_data(loaded, template_for(data.template, loaded, data.template_file), data)


@contextmanager
def _on_error_flag():
    """A bad record stops these commands with how to skip it: their own --on-error flag, not the config key."""
    try:
        yield
    except BadRecordError as exc:
        raise exc.with_fix("pass --on-error skip") from None


def _report(written) -> None:
    console.print(f"data: {written.report.summary()}")
    for path, count in written.files.items():
        console.print(f"wrote {count} records to {path}")
    for path in written.set_aside:
        console.print(f"set aside: {path}")


@data_app.command()
def inspect(
    files: list[str] = typer.Argument(..., help="Data files, folders or dataset names."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder, for token lengths."),
    template: str = typer.Option("alpaca", "--template", help="Template the token lengths include."),
    fmt: str = FORMAT,
    examples: int = typer.Option(2, "--examples", help="Conversations to show per file."),
    dataset_dir: str = DATASET_DIR,
    encoding: str = ENCODING,
):
    """Format, encoding, record counts, turns, token lengths, languages and examples per file."""
    from lmtune.data.inspect import inspect_data

    config = _config(files, dataset_dir, encoding=encoding, format=fmt, on_error="skip", template=template, cutoff_len=2**31)
    stats = inspect_data(config, _encoder(tokenizer, config), examples)
    for s in stats:
        table = _inspect_table(s.path)
        table.add_row("format / encoding", f"{s.format} / {s.encoding}")
        table.add_row("records", f"{s.read} read, {s.read - len(s.rejected)} valid, {len(s.rejected)} rejected")
        if s.turns:
            table.add_row("turns per conversation", f"min {s.turns[0]}, mean {s.turns[1]:.1f}, max {s.turns[2]}")
        if s.token_lengths:
            table.add_row(f"tokens with {template}", ", ".join(f"p{p} {n}" for p, n in s.token_lengths.items()).replace("p100", "max"))
        valid = s.read - len(s.rejected)
        table.add_row("with reasoning", f"{s.reasoning} of {valid} records" + ("" if s.reasoning else " (no think blocks or reasoning_content)"))
        total = sum(s.languages.values()) or 1
        table.add_row("languages", ", ".join(f"{lang} {100 * n / total:.0f}%" for lang, n in s.languages.most_common()))
        for label, counts in (("ignored fields", s.ignored), ("media dropped", s.media_dropped)):
            if counts:
                table.add_row(label, ", ".join(f"{name} ({n})" for name, n in counts.most_common()))
        for row in s.rejected[:3]:
            table.add_row("[red]rejected[/]", f"{row['source']}: {row['reason']}")
        for conv in s.examples:
            turns = [(f"[bold]{t.role} reasoning[/]: [dim]{t.reasoning}[/]\n" if t.reasoning is not None else "")
                     + f"[bold]{t.role}[/]: {t.content}" + (f" | {t.input}" if t.input else "") for t in conv.turns]
            table.add_row(f"line {conv.source.rsplit(':', 1)[-1]}", "\n".join(([f"[bold]system[/]: {conv.system}"] if conv.system else []) + turns))
        out_console.print(table)


def _inspect_table(title: str) -> Table:
    """Two columns that show everything: labels whole, values folded at the edge. Rich's default
    ellipsis cut Chinese (no spaces to wrap at) and long file:line locations at any width."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(no_wrap=True, min_width=len("turns per conversation"))
    table.add_column(overflow="fold")
    return table


@data_app.command()
def convert(
    files: list[str] = typer.Argument(..., help="Data files, folders or dataset names."),
    to: str = typer.Option(..., "--to", help="alpaca | sharegpt | messages"),
    out: Path = typer.Option(..., "--out", help="Output .jsonl"),
    fmt: str = FORMAT,
    on_error: str = ON_ERROR,
    dataset_dir: str = DATASET_DIR,
    encoding: str = ENCODING,
):
    """Rewrite data in another format (UTF-8 JSON lines)."""
    from lmtune.data import export
    from lmtune.data.convert import TARGETS

    if to not in TARGETS:
        raise ConfigError(f"--to {to}: choose one of {', '.join(TARGETS)}")
    with _on_error_flag():
        _report(export.convert(_config(files, dataset_dir, encoding=encoding, format=fmt, on_error=on_error), to, out))


@data_app.command()
def split(
    files: list[str] = typer.Argument(..., help="Data files, folders or dataset names."),
    val_size: float = typer.Option(..., "--val-size", help="Dev share (< 1) or count (>= 1)."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Gets train.jsonl and dev.jsonl."),
    fmt: str = FORMAT,
    on_error: str = ON_ERROR,
    seed: int = SEED,
    dataset_dir: str = DATASET_DIR,
    encoding: str = ENCODING,
):
    """Seeded random train/dev split of the original records."""
    from lmtune.data import export

    with _on_error_flag():
        _report(export.split(_config(files, dataset_dir, encoding=encoding, format=fmt, on_error=on_error, val_size=val_size), out_dir, seed))


@data_app.command()
def mix(
    parts: list[str] = typer.Argument(..., help="FILE=SHARE (< 1) or FILE=COUNT (>= 1), one per dataset."),
    out: Path = typer.Option(..., "--out", help="Output .jsonl"),
    to: str = typer.Option("sharegpt", "--to", help="Output format: alpaca | sharegpt | messages."),
    on_error: str = ON_ERROR,
    seed: int = SEED,
    dataset_dir: str = DATASET_DIR,
    encoding: str = ENCODING,
):
    """Mix datasets by share or count into one file."""
    from lmtune.data import export
    from lmtune.data.registry import dataset_name

    pairs = [p.rpartition("=") for p in parts]
    if any(not sep or not name for name, sep, _ in pairs):
        raise ConfigError("each part must look like FILE=SHARE or FILE=COUNT, e.g. belle.json=0.7 moss.jsonl=0.3")
    try:
        mix_values = {dataset_name(name): float(value) for name, _, value in pairs}
    except ValueError as exc:
        raise ConfigError(f"mix values must be numbers: {exc}") from exc
    config = _config([name for name, _, _ in pairs], dataset_dir, encoding=encoding, on_error=on_error, mix=mix_values)
    with _on_error_flag():
        _report(export.convert(config, to, out, seed))


@data_app.command("filter")
def filter_(
    files: list[str] = typer.Argument(..., help="Data files, folders or dataset names."),
    out: Path = typer.Option(..., "--out", help="Output .jsonl of the records that pass."),
    languages: Optional[list[str]] = typer.Option(None, "--language", help="Keep zh and/or en (repeat the option)."),
    dedup: str = typer.Option("none", "--dedup", help="none | exact | near"),
    min_length: Optional[int] = typer.Option(None, "--min-length"),
    max_length: Optional[int] = typer.Option(None, "--max-length"),
    length_unit: str = typer.Option("chars", "--length-unit", help="chars | tokens (needs --tokenizer)"),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer"),
    fmt: str = FORMAT,
    on_error: str = ON_ERROR,
    dataset_dir: str = DATASET_DIR,
    encoding: str = ENCODING,
):
    """Keep the original records that pass length, language and duplicate filters."""
    from lmtune.data import export
    from lmtune.model.load import load_tokenizer

    try:
        filters = FiltersConfig(
            languages=languages, dedup=dedup, min_length=min_length, max_length=max_length, length_unit=length_unit
        )
    except ValidationError as exc:
        raise ConfigError(flag_problems(exc, FLAGS)) from None
    config = _config(files, dataset_dir, encoding=encoding, format=fmt, on_error=on_error, filters=filters)
    with _on_error_flag():
        _report(export.filter_records(config, load_tokenizer(tokenizer) if tokenizer else None, out))


@data_app.command()
def encode(
    data: list[str] = typer.Option(..., "--data", help="Data file, folder or dataset name (repeatable)."),
    template: str = typer.Option(..., "--template", help="Prompt template (`lmtune templates`), or auto: the tokenizer's chat_template."),
    tokenizer: str = typer.Option(..., "--tokenizer", help="Tokenizer folder, or a model's .gguf file."),
    out: Path = typer.Option(..., "--out", help="Output .jsonl: input_ids and labels per record."),
    cutoff_len: int = typer.Option(1024, "--cutoff-len"),
    fmt: str = FORMAT,
    on_error: str = ON_ERROR,
    train_on: str = typer.Option("all_assistant", "--train-on", help="all_assistant | last_assistant | all"),
    rewritten_answers: str = typer.Option("own_sample", "--rewritten-answers", help="own_sample | context_only: earlier answers the template rewrites (data.rewritten_answers)."),
    train_reasoning: bool = typer.Option(True, "--train-reasoning/--mask-reasoning", help="Train think blocks, or mask them (data.train_reasoning)."),
    template_file: Optional[str] = typer.Option(None, "--template-file", help="YAML file with templates of your own."),
    show: int = typer.Option(0, "--show", help="Print this many samples with their trained tokens highlighted."),
    dataset_dir: str = DATASET_DIR,
    encoding: str = ENCODING,
):
    """Write input_ids and labels exactly as training sees them."""
    from lmtune.data import export

    config = _config(data, dataset_dir, encoding=encoding, format=fmt, on_error=on_error, template=template, cutoff_len=cutoff_len,
                     train_on=train_on, rewritten_answers=rewritten_answers, train_reasoning=train_reasoning, template_file=template_file)
    encoder = _encoder(tokenizer, config)
    with _on_error_flag():
        _report(export.encode(config, encoder, out))
    for line in out.read_text(encoding="utf-8").splitlines()[:show]:
        out_console.print(_spans(json.loads(line), encoder.tokenizer), "", highlight=False)


def _spans(row: dict, tokenizer) -> Text:
    """The sample decoded token by token; trained tokens (label != -100) highlighted."""
    text, run, trained = Text(), [], None
    for token, label in [*zip(row["input_ids"], row["labels"]), (None, None)]:
        if run and (token is None or (label != -100) != trained):
            text.append(tokenizer.decode(run), style="bold black on green" if trained else "")  # whole runs: no split characters
            run = []
        run.append(token)
        trained = label != -100
    return text
