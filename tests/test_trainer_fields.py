"""The shipped table of TrainingArguments' fields is the installed transformers' own, and checking a
value against it says what checking against the real annotation says."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
from pydantic import TypeAdapter, ValidationError
from transformers import TrainingArguments

from lmtune.trainer_fields import SHIPPED, build_table, describe, training_argument_types

VALUES = [0, 3, -1, 0.5, True, False, None, "no", "steps", "cosine", "adamw_torch", "tensorboard", "x", "",
          [], ["wandb"], [1], {}, {"a": 1}, {"use_reentrant": False}, "underflow_overflow"]


def test_the_shipped_table_is_the_installed_transformers_own():
    shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))
    assert shipped == build_table(), "regenerate it: python -m lmtune.trainer_fields"


def accepts(kind, value):
    try:
        return True, TypeAdapter(kind).validate_python(value)
    except ValidationError:
        return False, None


def test_the_table_accepts_and_refuses_what_the_real_annotations_do():
    hints = typing.get_type_hints(TrainingArguments)
    table = training_argument_types()
    assert set(table) == {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for name, kind in table.items():
        if describe(hints[name]).startswith("Any"):  # an object no YAML value can be (accelerate's ParallelismConfig)
            continue
        for value in VALUES:
            ok, got = accepts(kind, value)
            real_ok, real = accepts(hints[name], value)
            assert ok == real_ok, (name, value)
            assert got == (real.value if hasattr(real, "value") else real), (name, value)


@pytest.mark.parametrize(("hint", "expr"), [
    (typing.Optional[int], "int | None"),
    (typing.Union[str, list[str], None], "str | list[str] | None"),
    (dict[str, typing.Any], "dict[str, Any]"),
    (typing.Literal["a", False], "Literal['a', False]"),
    (type("Opaque", (), {}), "Any"),
])
def test_describe_writes_annotations_as_plain_expressions(hint, expr):
    assert describe(hint) == expr
