"""Datasets by name: a `dataset_info.json` in LLaMA-Factory's layout, read unchanged.

    {"belle": {"file_name": "belle.json"},
     "qa":    {"file_name": "qa.jsonl", "columns": {"prompt": "question", "response": "answer"}},
     "wiki":  {"file_name": "wiki.txt", "columns": {"prompt": "text"}},
     "chats": {"file_name": "chats", "formatting": "sharegpt",
               "columns": {"messages": "messages", "tools": "tools"},
               "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
     "orca":  {"hf_hub_url": "Open-Orca/OpenOrca", "columns": {"prompt": "question", "response": "response"}}}

Every key of an entry is either honoured or refused by name, and so is every kind of data the run's
stage cannot train (preference pairs outside data.stage: dpo/rm, KTO labels outside kto, images/videos/audios unless
data.drop_media):
one message per dataset, before anything is read. Plain `data.path` entries become unnamed specs
of their own (named by file stem), so the loader sees one list of datasets either way.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lmtune.config import DataConfig
from lmtune.data.hub import HubSource
from lmtune.data.pref import LABEL_STAGES, PAIR_STAGES
from lmtune.data.readers import data_files
from lmtune.errors import DataError
from lmtune.files import read_json

REGISTRY_FILE = "dataset_info.json"
FORMATTING = {"alpaca": "alpaca", "sharegpt": "sharegpt", "openai": "messages"}
# Every key LLaMA-Factory reads from an entry. file_sha1 is read and ignored, as LLaMA-Factory
# does: the encoded-data cache already keys on each file's content.
ENTRY_KEYS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "load_from",
              "formatting", "ranking", "columns", "tags", "subset", "folder", "split", "revision", "num_samples",
              "file_sha1")
COLUMN_KEYS = ("prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios",
               "chosen", "rejected", "kto_tag", "reasoning")  # reasoning: lmtune's, the field beside an alpaca answer
TAG_KEYS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag",
            "reasoning_tag")  # lmtune's: a message's reasoning field
MEDIA = ("images", "videos", "audios")
# Where the other sources live, for the refusal (load_from value -> the entry key that names it).
ELSEWHERE = {"ms_hub": ("ms_hub_url", "ModelScope"), "om_hub": ("om_hub_url", "Modelers (OpenMind)"),
             "script": ("script_url", "a loading script, which datasets no longer runs"),
             "cloud_file": ("cloud_file_name", "cloud storage")}


@dataclass
class DatasetSpec:
    name: str
    files: list[Path]
    format: str = "auto"
    columns: dict[str, str] | None = None
    tags: dict[str, str] | None = None
    hub: HubSource | None = None  # read through datasets.load_dataset instead of files
    num_samples: int | None = None  # LLaMA-Factory's per-dataset sample: drawn at random, repeating if larger
    txt_lines: bool = False  # .txt: one document per line, as LLaMA-Factory reads .txt datasets


def resolve_datasets(data: DataConfig) -> list[DatasetSpec]:
    specs = [DatasetSpec(dataset_name(p), data_files([p]), data.format) for p in data.path]
    if data.dataset:
        dataset_dir = Path(data.dataset_dir)
        registry = load_registry(dataset_dir)
        specs += [_registry_spec(name, registry, dataset_dir, data) for name in data.dataset]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"two datasets share the name {repeated[0]!r}; rename a file so data.mix can tell them apart")
    return specs


def load_registry(dataset_dir: Path) -> dict[str, dict]:
    path = dataset_dir / REGISTRY_FILE
    if not path.is_file():
        raise DataError(f"data.dataset names datasets, but {path} does not exist (set data.dataset_dir)")
    registry = read_json(path, DataError)
    if not isinstance(registry, dict):
        raise DataError(f"{path}: expected an object mapping dataset names to their descriptions")
    return registry


def _registry_spec(name: str, registry: dict[str, Any], dataset_dir: Path, data: DataConfig) -> DatasetSpec:
    where = f"dataset '{name}' in {dataset_dir / REGISTRY_FILE}"
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        raise DataError(f"dataset '{name}' is not in {dataset_dir / REGISTRY_FILE} (it has: {known})")
    entry = registry[name]
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with file_name or hf_hub_url, got {type(entry).__name__}")
    _check_keys(entry, where)
    formatting = _formatting(entry, where)
    _refuse_kind(entry, where, data)
    files, hub = _source(entry, where, dataset_dir)
    fmt = _format(entry, formatting)
    return DatasetSpec(name, files, fmt, entry.get("columns"), entry.get("tags"), hub, _num_samples(entry, where),
                       txt_lines=True)


# ---------------------------------------------------------------- what an entry may say


def _check_keys(entry: dict[str, Any], where: str) -> None:
    _known(entry, ENTRY_KEYS, where, "key")
    for section, known in (("columns", COLUMN_KEYS), ("tags", TAG_KEYS)):
        names = entry.get(section, {})
        if not isinstance(names, dict):
            raise DataError(f"{where}: {section} must be an object, got {type(names).__name__}")
        _known(names, known, where, f"{section} key")
        for key, value in names.items():
            if not (isinstance(value, str) and value):
                raise DataError(f"{where}: {section}.{key} must be a field name, got {json.dumps(value)}")


def _known(obj: dict[str, Any], known: tuple[str, ...], where: str, what: str) -> None:
    for key in obj:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"lmtune reads: {', '.join(known)}"
            raise DataError(f"{where}: unknown {what} '{key}'; {fix}")


def _formatting(entry: dict[str, Any], where: str) -> str:
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTING:
        raise DataError(f"{where}: formatting '{formatting}' is not one of {', '.join(FORMATTING)}")
    columns = entry.get("columns", {})
    wrong = [key for key in (("messages",) if formatting == "alpaca" else ("prompt", "query", "response", "history", "reasoning"))
             if key in columns]
    if wrong:
        raise DataError(f"{where}: columns.{wrong[0]} does not apply to formatting '{formatting}'; "
                        "alpaca reads prompt/query/response/history, sharegpt and openai read messages")
    if formatting == "alpaca" and "tags" in entry:
        raise DataError(f"{where}: tags apply to sharegpt and openai messages, and this entry is alpaca; "
                        "set formatting: sharegpt (or openai)")
    return formatting


def _format(entry: dict[str, Any], formatting: str) -> str:
    """LLaMA-Factory's pre-training entries name only a prompt column: its text is the document.
    An entry that names neither formatting nor columns is detected from its records."""
    if formatting == "alpaca" and set(entry.get("columns", {})) == {"prompt"}:
        return "text"
    return FORMATTING[formatting] if "formatting" in entry or "columns" in entry else "auto"


def _num_samples(entry: dict[str, Any], where: str) -> int | None:
    count = entry.get("num_samples")
    if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count > 0):
        raise DataError(f"{where}: num_samples must be a positive whole number, got {json.dumps(count)}")
    return count


# ---------------------------------------------------------------- where its records are


def _source(entry: dict[str, Any], where: str, dataset_dir: Path) -> tuple[list[Path], HubSource | None]:
    """hf_hub_url as LLaMA-Factory prefers it; else the local file_name (also when the entry names a
    ModelScope, Modelers, script or cloud source beside it: the local copy). load_from chooses."""
    load_from = entry.get("load_from") or ("hf_hub" if "hf_hub_url" in entry else "file" if "file_name" in entry else None)
    if load_from == "hf_hub" and "hf_hub_url" in entry:
        hub = HubSource(entry["hf_hub_url"], entry.get("subset"), entry.get("folder"), entry.get("split", "train"),
                        entry.get("revision"))
        return [], hub
    if load_from == "file" and "file_name" in entry:
        if entry.get("split", "train") != "train":
            raise DataError(f"{where}: split '{entry['split']}' selects part of a hub dataset; a local file_name is "
                            "read whole (leave split out)")
        # subset, folder and revision only apply to hub datasets, in LLaMA-Factory too.
        return data_files([str(dataset_dir / entry["file_name"])]), None
    raise DataError(_elsewhere(entry, where, load_from))


def _elsewhere(entry: dict[str, Any], where: str, load_from: str | None) -> str:
    if load_from in ("hf_hub", "file"):
        return f"{where}: load_from: {load_from} needs {'hf_hub_url' if load_from == 'hf_hub' else 'file_name'}"
    if load_from is None:
        load_from = next((kind for kind, (key, _) in ELSEWHERE.items() if key in entry), None)
    if load_from not in ELSEWHERE:
        return (f"{where}: no file_name or hf_hub_url" if load_from is None else
                f"{where}: load_from '{load_from}' is not one of file, hf_hub, {', '.join(ELSEWHERE)}")
    key, place = ELSEWHERE[load_from]
    return (f"{where} is read from {place} ({key}); lmtune reads local files and Hugging Face datasets: "
            "download it and give its local copy as file_name")


# ---------------------------------------------------------------- data this stage cannot train


def _refuse_kind(entry: dict[str, Any], where: str, data: DataConfig) -> None:
    columns = entry.get("columns", {})
    pairs = entry.get("ranking") or "chosen" in columns or "rejected" in columns
    if pairs and data.stage not in PAIR_STAGES:
        raise DataError(preference_data(where, "ranking: true" if entry.get("ranking") else "chosen/rejected columns"))
    if "kto_tag" in columns and data.stage not in LABEL_STAGES:
        raise DataError(kto_data(where, columns["kto_tag"]))
    media = [key for key in MEDIA if key in columns]
    if media and not data.drop_media:
        raise DataError(multimodal_data(where, media[0], columns[media[0]]))


def preference_data(what: str, sign: str) -> str:
    return (f"{what} is preference data ({sign}: chosen/rejected answer pairs); train it with data.stage: dpo "
            "(as SFT data its rejected answers would be lost or trained as good ones)")


def kto_data(what: str, column: str) -> str:
    return (f"{what} is KTO data (kto_tag column '{column}' labels each answer desirable or not); train it with "
            "data.stage: kto (as SFT data its undesirable answers would be trained as good ones)")


def multimodal_data(what: str, kind: str, column: str) -> str:
    return (f"{what} is multimodal ({kind} in column '{column}'); lmtune trains on text: set data.drop_media: true "
            "to train on the text alone (the media and their <image>/<video>/<audio> placeholders are dropped "
            "and counted in the load report), or leave it out")


def check_record(record: dict[str, Any], spec: DatasetSpec, data: DataConfig, where: str) -> None:
    """The same refusals for data whose kind shows only in its records (plain files, entries without
    those columns): raised at the first such record, once for the dataset, whatever data.on_error says."""
    columns = spec.columns or {}
    what = f"{where}: dataset '{spec.name}'"
    chosen, rejected = columns.get("chosen", "chosen"), columns.get("rejected", "rejected")
    if chosen in record and rejected in record and data.stage not in PAIR_STAGES:
        raise DataError(preference_data(what, f"fields '{chosen}' and '{rejected}'"))
    if data.stage not in LABEL_STAGES:
        if columns.get("kto_tag", "kto_tag") in record:
            raise DataError(kto_data(what, columns.get("kto_tag", "kto_tag")))
        if isinstance(record.get("label"), bool):  # TRL's KTO layout: an answer with label true/false
            raise DataError(kto_data(what, "label"))
    media = [(kind, column) for kind, column in media_columns(spec).items() if record.get(column)]
    if media and not data.drop_media:
        raise DataError(multimodal_data(what, *media[0]))


def media_columns(spec: DatasetSpec) -> dict[str, str]:
    """images/videos/audios -> the record field that holds them (LLaMA-Factory's names by default)."""
    return {kind: (spec.columns or {}).get(kind, kind) for kind in MEDIA}


def dataset_parts(spec: DatasetSpec) -> list[DatasetSpec]:
    """One spec per file (or the hub dataset as it is), for per-file statistics."""
    return [spec] if spec.hub else [replace(spec, files=[path]) for path in spec.files]


def dataset_name(path: str | Path) -> str:
    """How data.mix refers to a file or folder given by path: its name without suffixes."""
    path = Path(path)
    return path.name.split(".")[0] if path.suffix else path.name
