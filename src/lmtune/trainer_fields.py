"""The fields of transformers' TrainingArguments as a table of name → type, so that checking a
config's `train:` section does not cost the import of transformers.training_args (5 s on a fast
machine, 12 s on a slow one) before a typo is reported.

The table ships for the transformers version `make install` pins (trainer_fields.json; a test
holds it to that version's TrainingArguments). Under another version it is built once from
TrainingArguments itself and kept in the user's cache, so it is never stale, only slower the first
time. Regenerate the shipped one after `make lock`: python -m lmtune.trainer_fields
"""

from __future__ import annotations

import enum
import json
import os
import types
import typing
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

SHIPPED = Path(__file__).with_name("trainer_fields.json")
_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "None": None, "list": list, "dict": dict,
          "Any": Any, "Literal": Literal}


@lru_cache(maxsize=1)
def training_argument_types() -> dict[str, Any]:
    """Field name → a type pydantic validates as it would the field's own annotation."""
    return {name: eval(expr, {"__builtins__": {}}, _NAMES) for name, expr in _table()["fields"].items()}  # noqa: S307 - our own table


def _table() -> dict:
    installed = version("transformers")
    cached = _cache_dir() / f"trainer_fields-{installed}.json"
    for path in (SHIPPED, cached):
        table = _read(path)
        if table and table["transformers"] == installed:
            return table
    table = build_table()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(table, indent=1), encoding="utf-8")
    except OSError:
        pass  # a read-only home: built again next time, still correct
    return table


def build_table() -> dict:
    """The table from the installed TrainingArguments (imports transformers)."""
    import dataclasses

    import transformers
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    fields = {f.name: describe(hints[f.name]) for f in dataclasses.fields(TrainingArguments) if f.init}
    return {"transformers": transformers.__version__, "fields": fields}


def describe(hint: Any) -> str:
    """A type annotation as an expression of builtins, Literal and Any: enums become the Literal of
    their values; classes no YAML value can be (accelerate's ParallelismConfig) become Any."""
    if hint is type(None):
        return "None"
    if hint in (int, float, bool, str, list, dict):
        return hint.__name__
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return f"Literal[{', '.join(repr(member.value) for member in hint)}]"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(describe(a) for a in args)}]"
    return "Any"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmtune"


if __name__ == "__main__":
    SHIPPED.write_text(json.dumps(build_table(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {SHIPPED}")
