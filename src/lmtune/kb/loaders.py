"""Files → pages of plain text, each with its source and page number.

Text files go through the data readers' encoding detection (UTF-8, BOM, GBK/GB18030, UTF-16, Big5);
instruction data (.json/.jsonl) becomes one passage per record. A file that cannot be read is
reported with its reason, never fatal: the rest of a folder is still ingested.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
import re
from html.parser import HTMLParser
from pathlib import Path

from lmtune.errors import KbError, LmtuneError, first_line

SUFFIXES = (".txt", ".md", ".markdown", ".pdf", ".docx", ".html", ".htm", ".json", ".jsonl")


@dataclass
class Page:
    text: str
    page: int | None = None  # 1-based page of a PDF, record line of instruction data; None for whole files


def collect_files(paths: list[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to ingest, [(file, why it is skipped)]) from files and folders, folders recursively.
    A path that does not exist is the user's mistake, not a file to skip: it stops the command."""
    found, skipped = [], []
    for path in map(Path, paths):
        if not path.exists():
            raise KbError(f"{path}: no such file or folder")
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in candidates:
            if file.suffix.lower() in SUFFIXES:
                found.append(file.resolve())
            else:
                skipped.append((file, f"unsupported file type '{file.suffix or file.name}' (supported: {' '.join(SUFFIXES)})"))
    return list(dict.fromkeys(found)), skipped


def load_file(path: Path) -> list[Page]:
    """The file's text, page by page; KbError with the reason if it cannot be read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdf":
            return _pdf(path)
        if suffix == ".docx":
            return [Page(_docx(path))]
        if suffix in (".json", ".jsonl"):
            return list(_records(path))
        text = _text(path)
        return [Page(_html_text(text) if suffix in (".html", ".htm") else text)]
    except LmtuneError as exc:
        raise KbError(str(exc).removeprefix(f"{path}: ")) from None
    except Exception as exc:  # pypdf and python-docx raise many types of their own on a damaged file
        raise KbError(f"not a readable {suffix} file ({first_line(exc)})") from None


def _text(path: Path) -> str:
    from lmtune.data.readers import detect_encoding

    encoding = detect_encoding(path)
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise KbError(f"not valid {encoding} text ({exc.reason}); save it as UTF-8") from None


def _pdf(path: Path) -> list[Page]:
    from pypdf import PdfReader

    reader = PdfReader(path)
    return [Page(page.extract_text() or "", number) for number, page in enumerate(reader.pages, 1)]


def _docx(path: Path) -> str:
    import docx

    document = docx.Document(str(path))
    paragraphs = [p.text for p in document.paragraphs]
    for table in document.tables:  # table cells are not paragraphs of the body; FAQs often live in tables
        paragraphs += ["\t".join(cell.text for cell in row.cells) for row in table.rows]
    return "\n\n".join(paragraphs)


def _records(path: Path) -> Iterator[Page]:
    """One passage per instruction record: system, then each turn on its own line."""
    from lmtune.data.readers import read_conversations

    for conv, _record in read_conversations(path):
        lines = [conv.system] if conv.system else []
        lines += [f"{turn.content}\n{turn.input}".strip() for turn in conv.turns]
        yield Page("\n".join(lines), int(conv.source.rsplit(":", 1)[1]))


class _VisibleText(HTMLParser):
    """Text a browser shows: script, style and the head's metadata are skipped; block tags break lines."""

    HIDDEN = {"script", "style", "head", "template", "noscript", "svg"}
    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "table", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in self.HIDDEN
        if tag in self.BLOCKS:
            self.parts.append("\n\n")
        if tag.startswith("h") and tag[1:].isdigit() and not self.hidden:
            self.parts.append("#" * int(tag[1:]) + " ")  # headings become Markdown ones, so they start a chunk

    def handle_endtag(self, tag):
        self.hidden = max(0, self.hidden - (tag in self.HIDDEN))
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))  # HTML collapses whitespace; inline tags keep their spaces


def _html_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)
