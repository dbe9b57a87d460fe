"""Datasets named by `hf_hub_url` in dataset_info.json, read through `datasets.load_dataset`.

`datasets` keeps what it downloads in its cache (HF_DATASETS_CACHE), so a dataset loaded once
reads again without a network, and with HF_DATASETS_OFFLINE=1 it never tries one. The url may
also be a local folder of data files, which load_dataset reads the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from lmtune.data.readers import RawRecord
from lmtune.errors import DataError, first_line


@dataclass(frozen=True)
class HubSource:
    url: str  # "org/name" on the Hugging Face hub, or a local folder
    subset: str | None = None  # load_dataset's name (a configuration)
    folder: str | None = None  # load_dataset's data_dir
    split: str = "train"
    revision: str | None = None

    @property
    def name(self) -> str:
        """How its records are cited: "org/name[train]:12" is the 12th row."""
        return f"{self.url}[{self.split}]"


def hub_records(source: HubSource) -> Iterator[RawRecord]:
    for row, record in enumerate(load(source), start=1):
        yield RawRecord(source.name, row, dict(record), None, None)


def fingerprint(source: HubSource) -> str:
    """What datasets itself keys its cache on: changes when the data does."""
    return load(source)._fingerprint


@lru_cache(maxsize=8)  # the cache key and the reading both need it; memory-mapped, so cheap to keep
def load(source: HubSource):
    import datasets  # imported here: only hub datasets need it, and it is slow to import

    try:
        return datasets.load_dataset(
            source.url, name=source.subset, data_dir=source.folder, split=source.split, revision=source.revision
        )
    except Exception as exc:  # noqa: BLE001 - datasets raises anything from ValueError to ConnectionError
        raise DataError(
            f"hf_hub_url '{source.url}' (split {source.split}): datasets.load_dataset cannot load it "
            f"({type(exc).__name__}: {first_line(exc)}); a hub dataset is read from the datasets cache once "
            "downloaded (also with HF_DATASETS_OFFLINE=1): download it once, or give a local copy as file_name"
        ) from exc
