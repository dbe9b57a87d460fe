"""Chunk text and metadata in SQLite: one row per chunk, its id the vector's id in the store.

SQLite, never pickle: the file is plain data that any tool can open, and loading it runs no code.
The BM25 tokens are kept beside the text so the keyword index can be rebuilt without segmenting
every chunk again.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lmtune.kb.split import Chunk

SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, page INTEGER, position INTEGER NOT NULL,
    start INTEGER NOT NULL, end INTEGER NOT NULL, hash TEXT NOT NULL, text TEXT NOT NULL, tokens TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS by_source ON chunks (source, position);
CREATE INDEX IF NOT EXISTS by_hash ON chunks (source, hash);
"""
COLUMNS = "id, source, page, position, start, end, hash, text"


class ChunkTable:
    def __init__(self, path: Path):
        self.db = sqlite3.connect(str(path))
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def next_id(self) -> int:
        return (self.db.execute("SELECT MAX(id) FROM chunks").fetchone()[0] or 0) + 1

    def hashes(self, source: str) -> dict[str, int]:
        """hash → id of the chunks already stored for this file."""
        return {row["hash"]: row["id"] for row in self.db.execute("SELECT id, hash FROM chunks WHERE source = ?", (source,))}

    def insert(self, rows: list[tuple[int, Chunk, str]]) -> None:
        """(id, chunk, space-joined BM25 tokens) rows."""
        self.db.executemany(
            "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(i, c.source, c.page, c.position, c.start, c.end, c.hash, c.text, tokens) for i, c, tokens in rows],
        )

    def move(self, chunk_id: int, chunk: Chunk) -> None:
        """An unchanged chunk of an edited file: same text and vector, new place in the file."""
        self.db.execute(
            "UPDATE chunks SET page = ?, position = ?, start = ?, end = ? WHERE id = ?",
            (chunk.page, chunk.position, chunk.start, chunk.end, chunk_id),
        )

    def delete(self, ids: list[int]) -> None:
        self.db.executemany("DELETE FROM chunks WHERE id = ?", [(i,) for i in ids])

    def ids_under(self, path: str) -> list[int]:
        """Chunks of this file, or of every file under this folder."""
        rows = self.db.execute("SELECT id FROM chunks WHERE source = ? OR source LIKE ? ESCAPE '\\'", (path, _like_prefix(path)))
        return [row[0] for row in rows]

    def rows(self, ids: list[int]) -> dict[int, sqlite3.Row]:
        found = {}
        for at in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            part = ids[at : at + 500]
            query = f"SELECT {COLUMNS} FROM chunks WHERE id IN ({','.join('?' * len(part))})"
            found.update({row["id"]: row for row in self.db.execute(query, part)})
        return found

    def around(self, source: str, first: int, last: int) -> list[sqlite3.Row]:
        return list(self.db.execute(
            f"SELECT {COLUMNS} FROM chunks WHERE source = ? AND position BETWEEN ? AND ? ORDER BY position", (source, first, last)
        ))

    def all_tokens(self) -> tuple[list[int], list[list[str]]]:
        ids, tokens = [], []
        for row in self.db.execute("SELECT id, tokens FROM chunks ORDER BY id"):
            ids.append(row[0])
            tokens.append(row[1].split(" ") if row[1] else [])
        return ids, tokens

    def sources(self) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in self.db.execute("SELECT source, COUNT(*) FROM chunks GROUP BY source ORDER BY source")]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]


def _like_prefix(folder: str) -> str:
    escaped = folder.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"
