"""The `lmtune` command. Each group of commands lives in its own module, a thin layer that parses
flags and calls into the packages; this one puts them together. Nothing heavy is imported until a
command runs, and the commands check their input before they import torch or transformers."""

from __future__ import annotations

import typer

from lmtune.cli import output
from lmtune.cli.data import data_app
from lmtune.cli.doctor import doctor, env
from lmtune.cli.infer import chat, eval_app, generate
from lmtune.cli.kb import kb_app
from lmtune.cli.serve import serve
from lmtune.cli.templates import templates_app
from lmtune.cli.train import demo, export, tokenizer_app, train

app = typer.Typer(
    cls=output.Commands,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune open causal language models from one YAML config; evaluate, chat with and serve them, grounded in your documents.",
)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs.")):
    output.setup(debug)


app.command()(train)
app.add_typer(data_app, name="data")
app.command()(chat)
app.command()(generate)
app.add_typer(eval_app, name="eval")
app.add_typer(kb_app, name="kb")
app.command()(doctor)
app.command()(env)
app.command()(export)
app.command()(serve)
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(templates_app, name="templates")
app.command()(demo)


def main(argv: list[str] | None = None) -> None:
    """The console script; also the tests' way in: main([...]) exits as the command would (SystemExit)."""
    app(args=argv, prog_name="lmtune")
