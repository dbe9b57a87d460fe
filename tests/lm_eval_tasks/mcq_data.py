"""Loads the local C-Eval, CMMLU and MMLU subsets of shared/reference/mcq for the task YAMLs beside
this file (their `custom_dataset`), so that `--include-path tests/lm_eval_tasks` works from any
working directory: `datasets`' own `data_files` are read relative to the current directory, where
these paths are relative to the reference folder."""

from __future__ import annotations

from pathlib import Path

# tests/lm_eval_tasks/ -> tests/ -> the checkout -> its parent, which holds shared/
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "mcq"


def load(data_files: dict, column_names: list | None = None, **_metadata):
    """The CSV files of each split (paths relative to shared/reference/mcq) as a DatasetDict."""
    import datasets

    if not REFERENCE.is_dir():
        raise FileNotFoundError(f"{REFERENCE}: the local multiple-choice sets are not there (see tests/lm_eval_tasks/README.md)")
    files = {split: [str(REFERENCE / p) for p in ([paths] if isinstance(paths, str) else paths)] for split, paths in data_files.items()}
    return datasets.load_dataset("csv", data_files=files, column_names=column_names)
