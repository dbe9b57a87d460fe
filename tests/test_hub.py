"""model.path as a hub id, read offline from a Hugging Face cache laid out here as huggingface_hub
lays it out: models--ORG--NAME/blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/main."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import RECORDS, lmtune, write_config
from lmtune.errors import ConfigError, ModelError
from lmtune.model.hub import is_hub_id, resolve_model

REPO = "lmtune-test/tiny-llama"
FIRST, SECOND = "1" * 40, "2" * 40


def cache_snapshot(hub: Path, repo_id: str, commit: str, files: Path, ref: str | None = "main") -> Path:
    """Put the files of one commit into the cache; `ref` (a branch) then points at that commit."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in files.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, llama_dir):
    """HF_HOME in tmp_path, nothing reachable: for the CLI through the environment, in this process
    through huggingface_hub's constants (it reads the environment once, on import)."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache_snapshot(home / "hub", REPO, FIRST, llama_dir)
    return home / "hub"


def test_training_from_a_cached_hub_id_offline_records_its_commit(tmp_path, offline_cache):
    data = tmp_path / "train.json"
    data.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    config = write_config(
        tmp_path / "run.yaml",
        model={"path": REPO},
        data={"path": str(data), "template": "alpaca", "cutoff_len": 96, "cache": False},
        train={"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 2},
    )
    result = lmtune("train", config)
    assert result.returncode == 0, result.stderr
    run = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text(encoding="utf-8"))
    assert run["model"]["path"] == REPO and run["model"]["revision"] == FIRST

    # What comes after training finds the base through run.yaml: the hub id at the recorded commit.
    answers = lmtune("generate", "--adapter", tmp_path / "out", "--data", data, "--out", tmp_path / "preds.jsonl", "--max-new-tokens", "2")
    assert answers.returncode == 0, answers.stderr
    assert len((tmp_path / "preds.jsonl").read_text(encoding="utf-8").splitlines()) == len(RECORDS)


def test_an_uncached_hub_id_offline_is_one_line_naming_it(tmp_path, offline_cache):
    config = write_config(
        tmp_path / "run.yaml",
        model={"path": "lmtune-test/never-downloaded"},
        data={"path": str(tmp_path / "train.json")},
        train={"output_dir": str(tmp_path / "out")},
    )
    (tmp_path / "train.json").write_text(json.dumps(RECORDS), encoding="utf-8")
    result = lmtune("train", config)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: 'lmtune-test/never-downloaded' is not a local folder, and with HF_HUB_OFFLINE=1")
    assert "hf download lmtune-test/never-downloaded" in line


def test_a_pinned_revision_is_the_snapshot_loaded(offline_cache, llama_dir):
    newer = cache_snapshot(offline_cache, REPO, SECOND, llama_dir)  # main moved on
    assert resolve_model(REPO) == (newer, SECOND)
    assert resolve_model(REPO, FIRST) == (newer.parent / FIRST, FIRST)
    assert resolve_model(REPO, "main") == (newer, SECOND)
    with pytest.raises(ModelError, match=f"holds no complete copy of it at revision {'3' * 40}"):
        resolve_model(REPO, "3" * 40)


def test_local_folders_win_and_take_no_revision(tmp_path, monkeypatch, llama_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert not is_hub_id("org/model") and is_hub_id("org/other") and not is_hub_id("./org/other")
    assert resolve_model(str(llama_dir)) == (llama_dir, None)
    with pytest.raises(ConfigError, match="model.revision main: applies to hub ids"):
        resolve_model(str(llama_dir), "main")
