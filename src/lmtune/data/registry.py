"""Datasets by name: a `dataset_info.json` in LLaMA-Factory's layout, read unchanged.

    {"belle": {"file_name": "belle.json"},
     "qa":    {"file_name": "qa.jsonl", "columns": {"prompt": "question", "response": "answer"}},
     "chats": {"file_name": "chats", "formatting": "sharegpt",
               "columns": {"messages": "messages"},
               "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}

Plain `data.path` entries become unnamed specs of their own (named by file stem), so the loader
sees one list of datasets either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmtune.config import DataConfig
from lmtune.data.readers import data_files
from lmtune.errors import DataError

REGISTRY_FILE = "dataset_info.json"
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
FORMATTING = {"alpaca": "alpaca", "sharegpt": "sharegpt", "openai": "messages"}


@dataclass
class DatasetSpec:
    name: str
    files: list[Path]
    format: str = "auto"
    columns: dict[str, str] | None = None
    tags: dict[str, str] | None = None


def resolve_datasets(data: DataConfig) -> list[DatasetSpec]:
    specs = [DatasetSpec(dataset_name(p), data_files([p]), data.format) for p in data.path]
    if data.dataset:
        registry = load_registry(Path(data.dataset_dir))
        specs += [_registry_spec(name, registry, Path(data.dataset_dir)) for name in data.dataset]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"two datasets share the name {repeated[0]!r}; rename a file so data.mix can tell them apart")
    return specs


def load_registry(dataset_dir: Path) -> dict[str, dict]:
    path = dataset_dir / REGISTRY_FILE
    if not path.is_file():
        raise DataError(f"data.dataset names datasets, but {path} does not exist (set data.dataset_dir)")
    try:
        registry = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from exc
    if not isinstance(registry, dict):
        raise DataError(f"{path}: expected an object mapping dataset names to their descriptions")
    return registry


def _registry_spec(name: str, registry: dict[str, dict], dataset_dir: Path) -> DatasetSpec:
    where = dataset_dir / REGISTRY_FILE
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        raise DataError(f"dataset '{name}' is not in {where} (it has: {known})")
    entry = registry[name]
    remote = [key for key in REMOTE_KEYS if key in entry]
    if remote and "file_name" not in entry:
        raise DataError(
            f"dataset '{name}' in {where} is remote ({remote[0]}); lmtune reads local files only: "
            "download it and give its local file as file_name"
        )
    if "file_name" not in entry:
        raise DataError(f"dataset '{name}' in {where} has no file_name")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTING:
        raise DataError(f"dataset '{name}' in {where}: formatting '{formatting}' is not one of {', '.join(FORMATTING)}")
    return DatasetSpec(
        name=name,
        files=data_files([str(dataset_dir / entry["file_name"])]),
        format=FORMATTING[formatting] if "formatting" in entry or "columns" in entry else "auto",
        columns=entry.get("columns"),
        tags=entry.get("tags"),
    )


def dataset_name(path: str | Path) -> str:
    """How data.mix refers to a file or folder given by path: its name without suffixes."""
    path = Path(path)
    return path.name.split(".")[0] if path.suffix else path.name
