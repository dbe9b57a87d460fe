"""`lmtune templates [show NAME]`: the prompt templates, and what each trains."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from lmtune.cli.output import out_console

templates_app = typer.Typer(help="List the prompt templates, or show one rendered with its trained spans.")


@templates_app.callback(invoke_without_command=True)
def templates(ctx: typer.Context, file: Optional[Path] = typer.Option(None, "--file", help="Your own templates (YAML).")):
    """List the templates (built-in, plus those in --file)."""
    from lmtune.templates.template import load_templates

    if ctx.invoked_subcommand:
        return
    table = Table("name", "format")
    for name, template in sorted(load_templates(file).items()):
        table.add_row(name, escape(template.description))
    out_console.print(table)


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
    out = out_console
    out.print(f"[bold]{name}[/]: {escape(template.description)}  (trained spans highlighted; <s>/</s> stand for BOS/EOS)\n")
    out.print(text, highlight=False)
    out.print(f"\nanswers end with: {' or '.join(template.end_tokens())}   extra stop strings: {list(template.stop) or 'none'}", markup=False)
