"""A knowledge base on disk: $LMTUNE_HOME/kb/NAME (default ~/.lmtune/kb/NAME).

    kb.json          settings, the embedding model's signature (model, dimension, backend), the current version folder
    lock             held (flock) by the one process changing the knowledge base; names it
    embedded-so-far.sqlite  vectors of an unfinished add, for the next one to resume from (pending.py)
    vN/chunks.sqlite chunk text and metadata
    vN/index.faiss   the vectors
    vN/bm25/         the keyword index

Every change is built into a fresh folder, renamed to the next version, and only then made
current by replacing kb.json (os.replace, atomic). A crash at any point leaves kb.json naming the
previous version, whole and searchable; the half-built folder is swept away on the next change.
One process changes a knowledge base at a time: a second `add`/`rm`/`rebuild` is refused with a
line naming the first, before it loads a model, and nothing of either is lost.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


from lmtune.config import KbConfig
from lmtune.errors import KbError
from lmtune.kb.chunks import ChunkTable
from lmtune.files import lmtune_home
from lmtune.kb.keywords import KeywordIndex
from lmtune.kb.store import FaissStore

_NAME = re.compile(r"[\w.-]+")


def kb_home() -> Path:
    return lmtune_home() / "kb"


def kb_names() -> list[str]:
    home = kb_home()
    return sorted(p.name for p in home.iterdir() if (p / "kb.json").is_file()) if home.is_dir() else []


@dataclass
class Version:
    """One version's files, opened: the store, the chunk table and the keyword index."""

    folder: Path
    store: FaissStore
    chunks: ChunkTable
    keywords: KeywordIndex = field(repr=False)


class KnowledgeBase:
    def __init__(self, name: str):
        self.name, self.folder = name, kb_home() / name
        if not (self.folder / "kb.json").is_file():
            known = ", ".join(kb_names()) or "none yet"
            raise KbError(f"no knowledge base '{name}' in {kb_home()} (known: {known}); create it with: lmtune kb create {name}")
        self._lock = None
        self._read_manifest()

    def _read_manifest(self, settings: bool = True) -> None:
        data = json.loads((self.folder / "kb.json").read_text())
        if settings:
            self.config = KbConfig(**data["config"])
        self.signature: dict | None = data["embedding"]  # None until the first chunk is embedded
        self.version: str = data["version"]

    @property
    def backend(self) -> str:
        """What embeds its texts: the backend its chunks were embedded with (torch before backends were recorded)."""
        if self.signature:
            return self.signature.get("backend", "torch")
        return self.config.backend

    @classmethod
    def create(cls, name: str, config: KbConfig) -> KnowledgeBase:
        if not _NAME.fullmatch(name):
            raise KbError(f"knowledge base name '{name}': use letters, digits, '.', '-' and '_' only")
        folder = kb_home() / name
        if (folder / "kb.json").exists():
            raise KbError(f"knowledge base '{name}' already exists in {folder}; add files with: lmtune kb add {name} PATH")
        if Path(config.embedding).expanduser().exists():  # a local folder is remembered absolutely
            config = config.model_copy(update={"embedding": str(Path(config.embedding).expanduser().resolve())})
        folder.mkdir(parents=True, exist_ok=True)
        _write_manifest(folder, config, None, _empty_version(folder))
        return cls(name)

    # ---------------------------------------------------------------- reading

    @contextmanager
    def open(self) -> Iterator[Version]:
        folder = self.folder / self.version
        chunks = ChunkTable(folder / "chunks.sqlite")
        try:
            store = FaissStore.load(folder / "index.faiss", self.config.flat_limit) if (folder / "index.faiss").exists() else None
            yield Version(folder, store, chunks, KeywordIndex.load(folder / "bm25"))
        finally:
            chunks.close()

    def check_model(self, signature: dict) -> None:
        built = self.signature
        if built and signature.get("backend") not in (None, self.backend):
            raise KbError(
                f"knowledge base '{self.name}' was embedded with the {self.backend} backend; embedding its queries with "
                f"{signature['backend']} would not give the same vectors. Load the model with backend '{self.backend}'."
            )
        if built and (built["model"] != signature["model"] or signature.get("dimension") not in (None, built["dimension"])):
            raise KbError(
                f"knowledge base '{self.name}' was built with embedding model {self.signature['model']} "
                f"({self.signature['dimension']} dimensions); querying it with {signature['model']} "
                "compares unrelated vectors. Use the same model, or rebuild: "
                f"lmtune kb rebuild {self.name} --embedding {signature['model']}"
            )

    # ---------------------------------------------------------------- changing

    @contextmanager
    def writing(self) -> Iterator[None]:
        """This process alone changes the knowledge base until the block ends; another one holding it is named and refused."""
        if self._lock is not None:  # already held here (the CLI takes it before loading a model)
            yield
            return
        import fcntl

        lock = open(self.folder / "lock", "a+", encoding="utf-8")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise KbError(f"knowledge base '{self.name}' is being changed by {holder}; run this again when it has finished") from None
        lock.truncate(0)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:120]
        lock.write(f"process {os.getpid()} ({command}, since {time.strftime('%H:%M:%S')})")
        lock.flush()
        self._lock = lock
        try:
            self._read_manifest(settings=False)  # another process may have published a version since this one read kb.json
            yield
        finally:
            self._lock = None
            lock.truncate(0)
            lock.close()  # closing releases the flock; a killed process's is released by the kernel

    @contextmanager
    def change(self, signature: dict | None = None, fresh: bool = False) -> Iterator[Version]:
        """A copy of the current version to change; made current only when the block ends without error."""
        with self.writing(), self._changed(signature, fresh) as version:
            yield version

    @contextmanager
    def _changed(self, signature: dict | None, fresh: bool) -> Iterator[Version]:
        self._sweep()
        work = self.folder / f".tmp-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        if not fresh:
            shutil.copy2(self.folder / self.version / "chunks.sqlite", work / "chunks.sqlite")
        chunks = ChunkTable(work / "chunks.sqlite")
        try:
            with self.open() as current:
                store = current.store if (current.store and not fresh) else None
            dimension = (signature or self.signature or {}).get("dimension")
            if store is None and dimension:
                store = FaissStore.new(dimension, self.config.flat_limit)
            version = Version(work, store, chunks, None)
            yield version
            if version.store is not None:
                version.store.save(work / "index.faiss")
            KeywordIndex.build(*chunks.all_tokens()).save(work / "bm25")
            chunks.db.commit()
        finally:
            chunks.close()
        self._publish(work, signature or self.signature)

    def _publish(self, work: Path, signature: dict | None) -> None:
        number = int(self.version[1:]) + 1
        target = self.folder / f"v{number}"
        os.replace(work, target)
        old = self.version
        _write_manifest(self.folder, self.config, signature, target.name)
        self.version, self.signature = target.name, signature
        shutil.rmtree(self.folder / old, ignore_errors=True)

    def _sweep(self) -> None:
        """Folders a crashed change left behind: anything but the current version."""
        for path in self.folder.iterdir():
            if path.is_dir() and path.name != self.version:
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith("kb.json.") or path.name.startswith(".tmp-"):
                path.unlink()

    def set_embedding(self, model: str | None = None, backend: str | None = None) -> None:
        """The model and backend a rebuild embeds with; saved when the rebuilt version is published."""
        update = {"embedding": model, "backend": backend}
        self.config = self.config.model_copy(update={k: v for k, v in update.items() if v})


def _empty_version(folder: Path) -> str:
    version = folder / "v0"
    version.mkdir(exist_ok=True)
    ChunkTable(version / "chunks.sqlite").close()
    KeywordIndex.build([], []).save(version / "bm25")
    return version.name


def _write_manifest(folder: Path, config: KbConfig, signature: dict | None, version: str) -> None:
    manifest = {"config": config.model_dump(), "embedding": signature, "version": version}
    temporary = folder / f"kb.json.{uuid.uuid4().hex[:8]}"
    temporary.write_text(json.dumps(manifest, ensure_ascii=False, indent=2))
    os.replace(temporary, folder / "kb.json")
