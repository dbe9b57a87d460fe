"""Cleaned text → chunks of at most chunk_size characters, cut at the largest boundary that fits.

Boundaries, largest first: a paragraph (blank line), a sentence (。！？!? or a full stop before a
space), a clause (；;，,), then a bare character cut. A Markdown heading always starts a new chunk,
so a question and its answer section under the next heading never merge. Each chunk is an exact
slice of the cleaned page (start, end), which is what lets neighbouring chunks be merged back
without repeating their overlap.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from lmtune.kb.loaders import Page

_HEADING = re.compile(r"^#{1,6}\s", re.M)
# Each level's pattern matches the end of a piece: the separator stays with the text before it.
_LEVELS = (
    re.compile(r"\n\n+"),
    re.compile(r"[。！？!?]+[”’\"')）]*\s*|\.[\"')]*\s+"),
    re.compile(r"[；;，,、]\s*"),
)


@dataclass
class Chunk:
    text: str
    source: str
    page: int | None
    position: int  # order within its source, across pages
    start: int  # offsets within the cleaned page text
    end: int

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:32]


def clean(text: str) -> str:
    """One kind of line break, no trailing spaces, at most one blank line in a row, no zero-width marks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "").replace("\u200b", "")
    text = re.sub(r"[ \t\u3000]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def chunk_pages(pages: list[Page], source: str, chunk_size: int, overlap: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for page in pages:
        text = clean(page.text)
        for start, end in split_spans(text, chunk_size, overlap):
            chunks.append(Chunk(text[start:end], source, page.page, len(chunks), start, end))
    return chunks


def split_text(text: str, chunk_size: int, overlap: int) -> list[str]:
    return [text[start:end] for start, end in split_spans(text, chunk_size, overlap)]


def split_spans(text: str, chunk_size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) of each chunk: sections at headings, each packed from its smallest pieces."""
    cuts = [0, *(m.start() for m in _HEADING.finditer(text) if m.start() > 0), len(text)]
    spans = []
    for a, b in zip(cuts, cuts[1:]):
        pieces = _pieces(text, a, b, chunk_size, 0)
        spans += _pack(text, pieces, chunk_size, overlap)
    return spans


def _pieces(text: str, a: int, b: int, size: int, level: int) -> list[tuple[int, int]]:
    """Split text[a:b] at this level's boundaries, going a level finer only for pieces still too long."""
    if b - a <= size:
        return [(a, b)]
    if level == len(_LEVELS):
        return [(i, min(i + size, b)) for i in range(a, b, size)]
    ends = [m.end() for m in _LEVELS[level].finditer(text, a, b) if m.end() < b] + [b]
    pieces, start = [], a
    for end in ends:
        if end > start:
            pieces += _pieces(text, start, end, size, level + 1)
            start = end
    return pieces


def _pack(text: str, pieces: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Greedy: add pieces while they fit; a new chunk starts with the previous chunk's last pieces
    that fit in `overlap` (whole pieces, so it starts at a boundary), or its last `overlap` characters."""
    spans: list[tuple[int, int]] = []
    start, end = pieces[0][0], pieces[0][0]
    for a, b in pieces:
        if b - start > size and end > start:
            spans.append((start, end))
            start = _overlap_start(pieces, start, end, overlap, b - size)
        end = b
    spans.append((start, end))
    return [span for span in (_stripped(text, s, e) for s, e in spans) if span[1] > span[0]]


def _overlap_start(pieces: list[tuple[int, int]], start: int, end: int, overlap: int, earliest: int) -> int:
    """Where the next chunk starts: inside the finished chunk (start, end), at most `overlap` back
    from its end, and never before `earliest`, so the next piece still fits."""
    lowest = max(end - overlap, earliest, start + 1)
    boundaries = [a for a, _ in pieces if lowest <= a < end]
    return min(boundaries) if boundaries else max(lowest, end - overlap) if overlap else end


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
