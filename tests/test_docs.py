"""README.md and docs/ stay true: every relative link resolves (file and #anchor, as GitHub slugs
headings), every `lmtune` command and flag they show exists, and the README stays a door (< 12,000
characters). The checks run in-process against the real command tree; nothing is downloaded."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
README_LIMIT = 12_000

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE = re.compile(r"^[ \t]{0,3}\[[^\]\n]+\]:[ \t]*<?(\S+?)>?(?:[ \t].*)?$", re.MULTILINE)
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"""<a\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto: and any other scheme
FLAG = re.compile(r"^--?[A-Za-z][\w-]*")


# --- reading Markdown -------------------------------------------------------------------------


def split_code(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The prose (code-block lines blanked, so offsets keep their line numbers) and the code-block
    lines as (line number, line)."""
    prose, code, fence = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
            prose.append("")
        elif fence is not None:
            if _closes(line, fence):
                fence = None
            else:
                code.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), code


def _closes(line: str, fence: str) -> bool:
    """A closing fence: the opening's character, at least as many, nothing after it."""
    closing = FENCE.match(line)
    return bool(closing) and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence) and line.strip() == closing.group(1)


def code_spans(prose: str) -> list[tuple[int, str]]:
    """Inline code spans as (line number, content); a span may wrap lines but not cross a paragraph."""
    spans = []
    for match in CODE_SPAN.finditer(prose):
        if "\n\n" not in match.group(2):
            spans.append((prose.count("\n", 0, match.start()) + 1, " ".join(match.group(2).split())))
    return spans


def without_code_spans(prose: str) -> str:
    """The prose with code spans blanked (newlines kept): a link shown as code is not a link."""
    return CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)) if "\n\n" not in m.group(2) else m.group(0), prose)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading (github-slugger): the rendered text lowercased, punctuation
    dropped except hyphens and underscores, each space a hyphen. Letters of any script (CJK too)
    stay; code spans keep their text, without the backticks."""
    parts = []
    for i, piece in enumerate(re.split(r"(`+[^`]*?`+)", heading)):
        if i % 2:  # a code span: its text as it is
            parts.append(piece.strip("`").strip())
            continue
        piece = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", piece)  # a link shows its text
        piece = re.sub(r"<[^>]+>", "", piece)  # HTML tags
        piece = re.sub(r"\*+|(?<!\w)_+|_+(?!\w)", "", piece)  # emphasis markers
        parts.append(piece)
    text = "".join(parts).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page has: its headings' slugs (repeats numbered -1, -2 … as GitHub does) and
    explicit <a id/name> anchors."""
    prose, _ = split_code(text)
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose.splitlines():
        if heading := HEADING.match(line):
            slug = github_slug(heading.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(HTML_ANCHOR.findall(prose))
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline, reference-style and HTML link outside code."""
    prose = without_code_spans(split_code(text)[0])
    found = []
    for pattern in (LINK, REFERENCE, HTML_LINK):
        for match in pattern.finditer(prose):
            found.append((prose.count("\n", 0, match.start()) + 1, match.group(1)))
    return sorted(found)


# --- the checks -------------------------------------------------------------------------------


def link_problems(page: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of a page whose file, or whose #anchor in that file, does not exist."""
    problems = []
    for line, target in links(page.read_text(encoding="utf-8")):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        path = unquote(path)
        where = f"{_name(page, root)}:{line}: link '{target}'"
        if not path:
            file = page
        elif path.startswith("/"):  # GitHub reads a leading slash as the repository's root
            file = root / path.lstrip("/")
        else:
            file = page.parent / path
        if not path and not anchor:
            problems.append(f"{where}: empty link")
        elif not file.exists():
            problems.append(f"{where}: no such file {_name(file, root)}")
        elif anchor and file.suffix.lower() != ".md":
            problems.append(f"{where}: #{anchor} points into {file.name}, which is not a Markdown page")
        elif anchor and unquote(anchor) not in anchors(file.read_text(encoding="utf-8")):
            problems.append(f"{where}: {_name(file, root)} has no heading with the anchor #{unquote(anchor)}")
    return problems


def command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every `lmtune …` shown: code-block lines (backslash continuations
    joined) and inline code spans that start with `lmtune ` or `$ lmtune `, and each part of a line
    after `&&` that does."""
    prose, code = split_code(text)
    candidates: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in code:
        if pending:
            number, line = pending[0], pending[1] + " " + line.strip()
            pending = None
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        candidates.append((number, line))
    if pending:
        candidates.append(pending)
    candidates = sorted([*candidates, *code_spans(prose)], key=lambda c: c[0])
    found = []
    for number, line in candidates:
        for part in line.split("&&"):
            part = part.strip()
            part = part[2:].lstrip() if part.startswith("$ ") else part
            if part == "lmtune" or part.startswith("lmtune "):
                found.append((number, part))
    return found


@lru_cache(maxsize=1)
def command_tree():
    import typer.main

    from lmtune.cli import app

    return typer.main.get_command(app)


@lru_cache(maxsize=None)
def help_exit_code(path: tuple[str, ...]) -> int:
    """`lmtune PATH --help`, in-process through the real entry point."""
    from typer.testing import CliRunner

    from lmtune.cli import app

    return CliRunner().invoke(app, [*path, "--help"]).exit_code


def _options(command) -> dict[str, object]:
    """The flags `--help` lists for a command: each option's names, negative forms included."""
    options = {"--help": None}
    for param in command.params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            for name in (*param.opts, *param.secondary_opts):
                options[name] = param
    return options


def _takes_value(param) -> bool:
    return param is not None and not getattr(param, "is_flag", False) and not getattr(param, "count", False)


def _shown(path: list[str]) -> str:
    return " ".join(["lmtune", *path])


def parse_command(line: str) -> tuple[list[str], list[str]]:
    """The command path of one `lmtune …` line, and what is wrong with it: a word where a subcommand
    should be that names none, or a flag its command does not have. Words after `lmtune` are
    subcommands while they name one of the current group's; a flag belongs to the command reached
    where it appears, and one that takes a value takes the next word with it."""
    words = re.findall(r'"[^"]*"|\'[^\']*\'|\S+', line)[1:]
    comment = next((i for i, w in enumerate(words) if w.startswith("#")), len(words))
    words, remarks = words[:comment], words[comment:]
    command, path, problems = command_tree(), [], []

    def check_flag(word: str) -> object:
        flag = FLAG.match(word.strip("[](),;"))
        options = _options(command)
        if flag.group(0) not in options:
            problems.append(f"'{_shown(path)}' has no flag {flag.group(0)}")
            return None
        return options[flag.group(0)]

    skip = False
    for word in words:
        if skip:
            skip = False
        elif FLAG.match(word.strip("[](),;")):
            skip = "=" not in word and _takes_value(check_flag(word))
        elif hasattr(command, "commands") and word not in ("…", "...", "[…]"):
            if word not in command.commands:
                known = ", ".join(sorted(command.commands))
                problems.append(f"'{_shown([*path, word])}': no such command ('{_shown(path)}' has: {known})")
                break
            command = command.commands[word]
            path.append(word)
    for word in remarks:  # flags named in a comment must be the command's too
        if FLAG.match(word.strip("[](),;")):
            check_flag(word)
    if code := help_exit_code(tuple(path)):
        problems.append(f"'{_shown([*path, '--help'])}' exits with {code}")
    return path, problems


def command_problems_in(page: Path, root: Path = ROOT) -> list[str]:
    return [
        f"{_name(page, root)}:{number}: {problem} in: {line}"
        for number, line in command_lines(page.read_text(encoding="utf-8"))
        for problem in parse_command(line)[1]
    ]


def _name(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# --- the tests --------------------------------------------------------------------------------


def test_every_relative_link_resolves():
    problems = [p for page in PAGES for p in link_problems(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_command_and_flag_shown_exists():
    problems = [p for page in PAGES for p in command_problems_in(page)]
    assert not problems, "commands or flags that lmtune does not have:\n" + "\n".join(problems)


def test_readme_shows_every_command():
    """One example per command on the door, so the command check has something to check too."""
    shown = {tuple(parse_command(line)[0][:1]) for _, line in command_lines(README.read_text(encoding="utf-8"))}
    missing = sorted(name for name in command_tree().commands if (name,) not in shown)
    assert not missing, f"README.md shows no example of: {', '.join('lmtune ' + m for m in missing)}"


def test_readme_is_a_door():
    text = README.read_text(encoding="utf-8")
    assert len(text) < README_LIMIT, f"README.md has {len(text):,} characters; keep it under {README_LIMIT:,} and move reference to docs/"
    first_screen = "\n".join(text.splitlines()[:30])
    assert "make demo" in first_screen and "make test" in first_screen


def test_every_docs_page_is_in_the_index():
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / unquote(t.partition("#")[0])).resolve() for _, t in links(index.read_text(encoding="utf-8"))}
    missing = [_name(p, ROOT) for p in PAGES if p not in (README, index) and p.resolve() not in linked]
    assert not missing, f"docs pages not linked from docs/README.md: {missing}"


# --- the checker itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Preference training (`data.stage: dpo`)", "preference-training-datastage-dpo"),
        ("`lmtune chat --adapter DIR` / `--model DIR`", "lmtune-chat---adapter-dir----model-dir"),
        ("LLaMA-Factory's `data/` folder", "llama-factorys-data-folder"),
        ("Grounded answers: `--kb`", "grounded-answers---kb"),
        ("数据 格式：训练", "数据-格式训练"),
        ("Settings (`KbConfig`) and **bold** [a link](x.md)", "settings-kbconfig-and-bold-a-link"),
        ("`train_on` and _cutting_", "train_on-and-cutting"),
    ],
)
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_bad_links_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## 数据 格式\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n"
        "[ok](docs/other.md) [ok](docs/other.md#other-page) [ok](docs/other.md#数据-格式) [ok](docs/other.md#twice-1)\n"
        "[ok](#top) [ok](https://example.com/nowhere.md) [ok](mailto:a@b.c) `[not a link](gone.md)`\n"
        "[gone](docs/missing.md)\n"
        "[bad anchor](docs/other.md#no-such-heading)\n"
        "[bad](#nowhere)\n\n"
        "```\n[in code](also-gone.md)\n```\n\n"
        "[ref]: docs/absent.md\n",
        encoding="utf-8",
    )
    problems = link_problems(page, tmp_path)
    assert len(problems) == 4, problems
    assert problems[0].startswith("README.md:5: link 'docs/missing.md': no such file")
    assert problems[1].startswith("README.md:6: link 'docs/other.md#no-such-heading'") and "#no-such-heading" in problems[1]
    assert problems[2].startswith("README.md:7: link '#nowhere'")
    assert problems[3].startswith("README.md:13: link 'docs/absent.md'")


def test_bad_commands_and_flags_are_reported(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `lmtune train run.yaml --no-such-flag` or `lmtune kb frobnicate faq`.\n\n"
        "```bash\n"
        "lmtune train run.yaml train.max_steps=1 --overwrite\n"
        "$ lmtune eval --adapter runs/x --data pairs.jsonl --json\n"
        "lmtune eval compare a.jsonl b.jsonl \\\n    --names a,b --bogus\n"
        "lmtune doctor --config run.yaml && lmtune train run.yaml --nproc 2 --typo   # --also-bad\n"
        "lmtune kb search faq \"--not-a-flag inside a query\" -k 2 --no-hybrid\n"
        "lmtune data encode --data x.json --template alpaca --tokenizer t --out o.jsonl --show 2\n"
        "lmtune serve --kb faq [--kb other …]\n"
        "```\n",
        encoding="utf-8",
    )
    problems = command_problems_in(page, tmp_path)
    assert len(problems) == 5, "\n".join(problems)
    assert problems[0].startswith("page.md:1: 'lmtune train' has no flag --no-such-flag")
    assert problems[1].startswith("page.md:1: 'lmtune kb frobnicate': no such command")
    assert problems[2].startswith("page.md:6: 'lmtune eval compare' has no flag --bogus")
    assert problems[3].startswith("page.md:8: 'lmtune train' has no flag --typo")
    assert problems[4].startswith("page.md:8: 'lmtune train' has no flag --also-bad")
