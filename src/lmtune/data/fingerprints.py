"""What the records a run reads depend on, as one key: each file's bytes, how each dataset is read,
the data settings and the seed. The encoded-samples cache is keyed on it (with the template and
tokenizer), and keeps it beside the samples: records that were read and encoded once before need
no second check before training starts. Light on purpose: `lmtune train` asks before importing torch."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from lmtune import __version__
from lmtune.config import DataConfig
from lmtune.data.hub import fingerprint
from lmtune.data.registry import resolve_datasets

CACHE_FORMAT = 1  # bump when the encoding of samples changes
READ_KEY_FILE = "read.key"
# Settings that change neither which records are read nor how (the template is keyed with the encoder).
_IGNORED = {"cache", "cache_dir", "streaming", "template", "path", "dataset_dir", "packing"}


def read_key(data: DataConfig, seed: int) -> str:
    specs = resolve_datasets(data)
    files = [(str(f), _file_digest(f)) for spec in specs for f in spec.files]
    files += [(spec.hub.name, fingerprint(spec.hub)) for spec in specs if spec.hub]
    parts = {
        "lmtune": [__version__, CACHE_FORMAT],
        "files": files,
        # How each dataset is read (dataset_info.json's columns, tags, num_samples …), not just its bytes.
        "datasets": [asdict(spec) for spec in specs],
        "data": data.model_dump(mode="json", exclude=_IGNORED),
        "seed": seed,
    }
    return digest(parts)


def read_before(data: DataConfig, seed: int) -> bool:
    """Whether the cache holds samples encoded from exactly these records."""
    key = read_key(data, seed)
    return any(f.read_text(encoding="utf-8") == key for f in (Path(data.cache_dir) / "encoded").glob(f"*/{READ_KEY_FILE}"))


def digest(parts: dict) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
