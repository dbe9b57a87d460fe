"""The few places where lmtune opens a user's file that is not data: JSON, YAML and safetensors.

Each names the file and what is wrong with it, so no reader leaks a library's traceback. The
safetensors check reads only the header (a few KB), which is where a file cut short by an
interrupted save or download shows first; loading would fail later with an error naming neither
the file nor the cause.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from lmtune.errors import LmtuneError, ModelError

CUT_SHORT = "it may have been cut short by an interrupted save or download"


def lmtune_home() -> Path:
    """Where lmtune keeps what outlives a run (knowledge bases, dequantized GGUF models): $LMTUNE_HOME, default ~/.lmtune."""
    return Path(os.environ.get("LMTUNE_HOME") or "~/.lmtune").expanduser()


def read_json(path: Path, error: type[LmtuneError] = LmtuneError) -> Any:
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise error(f"{path}: not a JSON text file (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from None


def read_yaml(path: Path, error: type[LmtuneError] = LmtuneError) -> Any:
    try:
        return yaml.safe_load(Path(path).read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise error(f"{path}: not a YAML text file (not UTF-8)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise error(f"{where}: malformed YAML: {getattr(exc, 'problem', None) or ' '.join(str(exc).split())}") from None


def check_safetensors(path: Path, error: type[LmtuneError] = ModelError) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises its own Rust-side error types, with no common base
        size = Path(path).stat().st_size
        raise error(f"{path}: not a readable safetensors file ({exc}; {size:,} bytes); {CUT_SHORT}: save or download it again") from None


def check_model_files(folder: Path) -> None:
    """config.json parses and every weight file's header reads, before transformers tries."""
    folder = Path(folder)
    config = read_json(folder / "config.json", ModelError)
    if not isinstance(config, dict):
        raise ModelError(f"{folder / 'config.json'}: expected a JSON object (a model config)")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index, ModelError).get("weight_map", {}).values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise ModelError(f"{folder}: {len(missing)} weight shard(s) named in {index.name} are missing (e.g. {missing[0]}); {CUT_SHORT}")
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights)
