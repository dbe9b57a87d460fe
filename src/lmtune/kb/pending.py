"""Vectors an unfinished `kb add` has embedded so far, so an interrupted add resumes where it stopped.

A change is built in a folder that only becomes the knowledge base when it is whole (base.py), so a
killed `add` leaves the knowledge base as it was, and the vectors it had computed would be lost with
the half-built folder. They are kept here instead, beside kb.json, keyed by chunk text hash and
committed after every slice; the next `add` (or `rebuild`) takes them instead of embedding again.
They are kept only for the embedding signature that made them, and dropped once a change is published.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

FILE = "embedded-so-far.sqlite"


class EmbeddedSoFar:
    def __init__(self, folder: Path, signature: dict):
        self.path = folder / FILE
        self.db = sqlite3.connect(str(self.path))
        self.db.executescript("CREATE TABLE IF NOT EXISTS vectors (hash TEXT PRIMARY KEY, vector BLOB NOT NULL);"
                              "CREATE TABLE IF NOT EXISTS made_by (signature TEXT NOT NULL);")
        made_by = self.db.execute("SELECT signature FROM made_by").fetchone()
        wanted = json.dumps(signature, sort_keys=True)
        if made_by is None or made_by[0] != wanted:  # another model or backend: its vectors are of no use
            self.db.executescript("DELETE FROM vectors; DELETE FROM made_by;")
            self.db.execute("INSERT INTO made_by VALUES (?)", (wanted,))
            self.db.commit()

    def get(self, hashes: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for at in range(0, len(hashes), 500):  # SQLite's limit on bound parameters
            part = hashes[at : at + 500]
            rows = self.db.execute(f"SELECT hash, vector FROM vectors WHERE hash IN ({','.join('?' * len(part))})", part)
            found.update({h: np.frombuffer(blob, np.float32) for h, blob in rows})
        return found

    def put(self, hashes: list[str], vectors: np.ndarray) -> None:
        self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", [(h, v.tobytes()) for h, v in zip(hashes, vectors)])
        self.db.commit()

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def discard(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.db.close()
