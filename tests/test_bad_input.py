"""Bad input through the real CLI: one clear line naming the file, key or flag, exit status 2, no
traceback, and every file the user already had byte-identical afterwards."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import RECORDS, lmtune


@pytest.fixture
def project(tmp_path, llama_dir):
    (tmp_path / "good.json").write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    config = {
        "model": {"path": str(llama_dir)},
        "data": {"path": "good.json", "template": "alpaca", "cutoff_len": 64, "cache": False},
        "train": {"output_dir": "out", "max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the run lock's (it names the last process that held it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lmtune.lock"}


def refused(result, *needles):
    """Exit 2, no traceback, and the last line of stderr is the message, naming what it must."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------- data lost or corrupted


@pytest.mark.parametrize(
    "content",
    [b"my notes\nsecond line\n", b"one line, no newline", b"\x89PNG\r\n\x1a\n\x00\x00binary", b'{"id": 1}\n'],
    ids=["text", "one-line", "binary", "json-not-predictions"],
)
def test_generate_never_replaces_a_file_it_did_not_write(full_run, tmp_path, content):
    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    result = lmtune("generate", "--model", full_run / "out", "--data", full_run / "train.json", "--out", out)
    refused(result, str(out), "not a prediction file written by `lmtune generate`", "choose another --out")
    assert out.read_bytes() == content


def test_an_interrupted_prediction_file_is_continued(full_run, tmp_path):
    out = tmp_path / "preds.jsonl"
    first = lmtune("generate", "--model", full_run / "out", "--data", full_run / "train.json", "--out", out)
    assert first.returncode == 0, first.stderr
    rows = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(rows[:2]) + "\n" + rows[2][:15], encoding="utf-8")  # killed while writing line 3
    again = lmtune("generate", "--model", full_run / "out", "--data", full_run / "train.json", "--out", out)
    assert again.returncode == 0, again.stderr
    assert [json.loads(r)["prediction"] for r in out.read_text(encoding="utf-8").splitlines()] == [json.loads(r)["prediction"] for r in rows]


def test_a_code_page_is_never_guessed_when_candidates_read_different_letters(project):
    latin1 = project / "fr.jsonl"
    latin1.write_bytes(json.dumps({"instruction": "Dessert ?", "output": "Crème brûlée et café."}, ensure_ascii=False).encode("latin-1") + b"\n")
    before = snapshot(project)
    result = lmtune("train", "run.yaml", "data.path=fr.jsonl", cwd=project)
    message = refused(result, str(latin1), "the text encoding is ambiguous", "cp1252 reads 'Crème'", "data.encoding, or --encoding")
    assert "cp1250 reads 'Crčme'" in message
    assert snapshot(project) == {**before, **{k: v for k, v in snapshot(project).items() if k.startswith("out/")}}
    refused(lmtune("data", "convert", "fr.jsonl", "--to", "sharegpt", "--out", "fr.sharegpt.jsonl", cwd=project), "ambiguous")
    named = lmtune("data", "convert", "fr.jsonl", "--to", "sharegpt", "--out", "fr.sharegpt.jsonl", "--encoding", "cp1252", cwd=project)
    assert named.returncode == 0, named.stderr
    assert "Crème brûlée" in (project / "fr.sharegpt.jsonl").read_text(encoding="utf-8")
    trained = lmtune("train", "run.yaml", "data.path=fr.jsonl", "data.encoding=cp1252", cwd=project)
    assert trained.returncode == 0 and f"data: {latin1} read as cp1252 text" in trained.stderr


def test_declared_encoding_reads_the_file(project):
    latin1 = project / "fr.jsonl"
    latin1.write_bytes(json.dumps({"instruction": "Dessert ?", "output": "Crème brûlée."}, ensure_ascii=False).encode("cp1252") + b"\n")
    from lmtune.config import DataConfig
    from lmtune.data.load import load_data

    loaded = load_data(DataConfig(path=[str(latin1)], encoding="cp1252"))
    assert loaded.train[0].turns[-1].content == "Crème brûlée."
    assert loaded.report.files[str(latin1)].encoding == "cp1252"


def test_a_jsonl_mixing_encodings_names_the_first_line_that_does_not_fit(project):
    mixed = project / "mixed.jsonl"
    lines = [json.dumps({"instruction": "问题", "output": "答案"}, ensure_ascii=False) + "\n"] * 3
    mixed.write_bytes(lines[0].encode("utf-8") + b'{"instruction": "a", "output": "b"}\n' + lines[1].encode("gbk") + lines[2].encode("utf-8"))
    result = lmtune("train", "run.yaml", "data.path=mixed.jsonl", cwd=project)
    refused(result, f"{mixed}:3: this line is not UTF-8, while line 1 is: the file mixes text encodings")


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(project):
    first = subprocess.Popen(
        [sys.executable, "-m", "lmtune", "train", "run.yaml", "train.max_steps=400"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lock = project / "out" / ".lmtune.lock"
        deadline = time.time() + 600  # generous: only a slow, loaded machine gets near it
        while not (lock.is_file() and lock.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        second = lmtune("train", "run.yaml", cwd=project)
        refused(second, f"another lmtune train (process {first.pid}) is writing to {project / 'out'}")
    finally:
        first.kill()
        first.wait()


def test_a_finished_run_is_replaced_only_with_overwrite(project):
    assert lmtune("train", "run.yaml", cwd=project).returncode == 0
    adapter = snapshot(project / "out")
    again = lmtune("train", "run.yaml", cwd=project)
    refused(again, "already holds an earlier run (adapter_model.safetensors)", "--overwrite")
    assert snapshot(project / "out") == adapter
    replaced = lmtune("train", "run.yaml", "--overwrite", "train.seed=7", cwd=project)
    assert replaced.returncode == 0, replaced.stderr
    assert snapshot(project / "out")["adapter_model.safetensors"] != adapter["adapter_model.safetensors"]


def _as_from_a_shell() -> None:
    """The child starts with SIGINT delivered and handled by default, as from a terminal: a test
    runner's worker thread may have it blocked or ignored, and a child inherits both."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(project):
    run = subprocess.Popen(
        [sys.executable, "-m", "lmtune", "train", "run.yaml", "train.max_steps=100000"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_shell,
    )
    metrics = project / "out" / "metrics.jsonl"
    deadline = time.time() + 600  # generous: only a slow, loaded machine gets near it
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    try:
        _, stderr = run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail(f"Ctrl-C did not stop the run within 120 s; its stderr:\n{run.communicate()[1][-3000:]}")
    assert run.returncode == 130, stderr[-2000:]
    saved = sorted((project / "out").glob("checkpoint-*"))
    assert len(saved) == 1 and (saved[0] / "COMPLETE").is_file()
    step = int(saved[0].name.split("-")[1])
    assert f"interrupted at step {step}: saved out/{saved[0].name}; continue with train.resume=auto" in stderr
    resumed = lmtune("train", "run.yaml", "train.resume=auto", f"train.max_steps={step + 1}", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from out/{saved[0].name} (step {step})" in resumed.stderr


def test_resume_auto_says_when_it_found_nothing(project):
    result = lmtune("train", "run.yaml", "train.resume=auto", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "resume: auto found no complete checkpoint in out; starting at step 1" in result.stderr


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_eval_counts_must_be_positive(full_run, limit):
    result = lmtune("eval", "--model", full_run / "out", "--data", full_run / "train.json", "--max-samples", limit)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Invalid value for '--max-samples'" in result.stderr


def test_eval_of_an_empty_dev_set_reports_no_score(full_run, tmp_path):
    empty = tmp_path / "dev.json"
    empty.write_text("[]", encoding="utf-8")
    result = lmtune("eval", "--model", full_run / "out", "--data", empty)
    refused(result, "nothing to evaluate", "holds no records")


# ---------------------------------------------------------------- config values


@pytest.mark.parametrize(
    "override, problem",
    [
        ("train.per_device_train_batch_size=0", "train.per_device_train_batch_size: must be at least 1 (got 0)"),
        ("train.weight_decay=abc", "train.weight_decay: Input should be a valid number"),
        ("train.gradient_accumulation_steps=two", "train.gradient_accumulation_steps: Input should be a valid integer"),
    ],
)
def test_train_values_are_checked_with_every_other_problem(project, override, problem):
    result = lmtune("train", "run.yaml", override, "data.cutof_len=3", cwd=project)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "2 problem(s)" in result.stderr and problem in result.stderr and "data.cutof_len: unknown key" in result.stderr


def test_yaml_no_is_the_string_no(project):
    config = yaml.safe_load((project / "run.yaml").read_text())
    (project / "run.yaml").write_text(yaml.safe_dump(config) + "", encoding="utf-8")
    text = (project / "run.yaml").read_text().replace("output_dir: out", "output_dir: out\n  save_strategy: no\n  eval_strategy: no")
    (project / "run.yaml").write_text(text, encoding="utf-8")
    result = lmtune("train", "run.yaml", cwd=project)
    assert result.returncode == 0, result.stderr


def test_output_dir_that_is_a_file(project):
    (project / "out").write_text("not a folder", encoding="utf-8")
    refused(lmtune("train", "run.yaml", cwd=project), "train.output_dir: out is a file, not a folder")
    assert (project / "out").read_text() == "not a folder"


def test_output_dir_that_cannot_be_created(project):
    before = snapshot(project)
    result = lmtune("train", "run.yaml", "train.output_dir=good.json/out", cwd=project)
    refused(result, "train.output_dir: cannot write to good.json/out (Not a directory)")
    assert snapshot(project) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "run.yaml", "cutoff_len=32"], "error: override 'cutoff_len=32': name the section too, e.g. data.cutoff_len=32"),
        (["train", "run.yaml", "data.path=[a"], "error: override 'data.path=[a': the value is not valid YAML"),
        (["train", "binary.yaml"], "error: binary.yaml: not a text file (not UTF-8); a run config is YAML or JSON"),
        (["train", "run.yaml", "data.val_size=3.5"], "  - data.val_size: 3.5 is neither a share (< 1) nor a whole count of records"),
        (["train", "run.yaml", "--nproc", "0"], "Invalid value for '--nproc'"),
        (["data", "split", "good.json", "--val-size", "-1", "--out-dir", "split"], "error: --val-size must be ≥ 0.0 (got -1.0)"),
        (
            ["data", "filter", "good.json", "--language", "fr", "--dedup", "nearly", "--out", "f.jsonl"],
            "error: --language: choose one of zh, en (got 'fr'); --dedup: choose one of none, exact, near (got 'nearly')",
        ),
        (["chat", "--model", "nowhere", "--temperature", "-1"], "error: --temperature must be ≥ 0.0 (got -1.0)"),
        (["data", "mix", "good.json=-5", "--out", "m.jsonl"], "error: FILE=SHARE|COUNT: good=-5.0: each dataset needs a share or count above 0"),
        (["tokenizer", "extend", "--base", "m", "--corpus", "good.json", "--add", "0", "--out", "x"], "Invalid value for '--add'"),
        (
            ["tokenizer", "extend", "--base", "m", "--corpus", "empty.txt", "--add", "5", "--out", "x"],
            "error: --corpus empty.txt: no text to learn tokens from",
        ),
        (["generate", "--model", "nowhere", "--data", "good.json", "--out", "p.jsonl", "--top-p", "2"], "error: --top-p must be ≤ 1.0 (got 2.0)"),
    ],
)
def test_flags_and_config_values_get_one_line_naming_them(project, args, message):
    (project / "binary.yaml").write_bytes(b"\x00\x01\xff\xfe\x89PNG")
    (project / "empty.txt").write_text("", encoding="utf-8")
    before = snapshot(project)
    result = lmtune(*args, cwd=project)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "pydantic" not in result.stderr
    assert message in result.stderr
    assert snapshot(project) == before


def test_a_chinese_output_folder_plots_without_glyph_warnings(project):
    result = lmtune("train", "run.yaml", "train.output_dir=运行结果", cwd=project)
    assert result.returncode == 0, result.stderr
    assert (project / "运行结果" / "loss.png").is_file()
    assert "missing from" not in result.stderr and "Glyph" not in result.stderr


def test_relative_paths_in_a_config_file_are_found_beside_it(project, tmp_path_factory):
    nested = project / "configs"
    nested.mkdir()
    config = yaml.safe_load((project / "run.yaml").read_text())
    config["data"]["path"] = "../good.json"
    config["train"]["output_dir"] = str(project / "nested-out")
    (nested / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    result = lmtune("train", nested / "run.yaml", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((project / "nested-out" / "run.yaml").read_text())
    assert saved["data"]["path"] == [str(project / "good.json")]  # written absolute, for every later command


# ---------------------------------------------------------------- damaged model and adapter folders


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, llama_dir):
    """A trained adapter, then copies of it and of its base, each damaged one way."""
    import shutil

    root = tmp_path_factory.mktemp("damaged")
    (root / "d.json").write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    config = {
        "model": {"path": str(llama_dir)},
        "data": {"path": str(root / "d.json"), "template": "alpaca", "cutoff_len": 64, "cache": False},
        "train": {"output_dir": str(root / "ad"), "max_steps": 2, "per_device_train_batch_size": 2},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert lmtune("train", root / "run.yaml").returncode == 0
    damage = {
        "ad_truncated": ("ad", "adapter_model.safetensors", lambda b: b[:100]),
        "ad_empty": ("ad", "adapter_model.safetensors", lambda b: b""),
        "ad_no_weights": ("ad", "adapter_model.safetensors", None),
        "ad_bad_config": ("ad", "adapter_config.json", lambda b: b"{oops"),
        "base_truncated": (llama_dir, "model.safetensors", lambda b: b[:100]),
        "base_bad_config": (llama_dir, "config.json", lambda b: b"{oops"),
    }
    for name, (source, file, change) in damage.items():
        shutil.copytree(root / source if isinstance(source, str) else source, root / name)
        if change is None:
            (root / name / file).unlink()
        else:
            (root / name / file).write_bytes(change((root / name / file).read_bytes()))
    return root


TRUNCATED = "not a readable safetensors file"
CASES_DAMAGED = [
    (["chat", "--adapter", "ad_truncated"], f"ad_truncated/adapter_model.safetensors: {TRUNCATED}"),
    (["chat", "--adapter", "ad_empty"], f"ad_empty/adapter_model.safetensors: {TRUNCATED}"),
    (["chat", "--adapter", "ad_no_weights"], "'ad_no_weights' has adapter_config.json but no weights"),
    (["chat", "--adapter", "ad_bad_config"], "ad_bad_config/adapter_config.json:1:2: malformed JSON"),
    (["chat", "--model", "base_bad_config", "--template", "alpaca"], "base_bad_config/config.json:1:2: malformed JSON"),
    (["chat", "--model", "base_truncated", "--template", "alpaca"], f"base_truncated/model.safetensors: {TRUNCATED}"),
    (["chat", "--adapter", "no/such/dir"], "error: --adapter no/such/dir: no such folder"),
    (["generate", "--adapter", "ad_truncated", "--data", "d.json", "--out", "p.jsonl"], TRUNCATED),
    (["export", "--adapter", "ad_truncated", "--out", "merged"], TRUNCATED),
    (["export", "--adapter", "ad", "--out", "merged", "--max-shard-size", "12XB"], "--max-shard-size 12XB: give a size in KB, MB, GB or TB"),
    (["export", "--adapter", "ad", "--out", "d.json"], "--out d.json: already exists and is not an empty folder"),
    (["train", "run.yaml", "finetune.adapter=ad_truncated", "train.output_dir=out2"], TRUNCATED),
    (["train", "run.yaml", "model.path=base_truncated", "train.output_dir=out3"], TRUNCATED),
    (["train", "run.yaml", "model.path=d.json", "train.output_dir=out4"], "is a file; give the model's folder"),
]


@pytest.mark.parametrize("args, needle", CASES_DAMAGED)
def test_damaged_folders_are_named_in_one_line(damaged, args, needle):
    def inputs():  # what the user had; a refused train run may still leave its run.yaml in its own output_dir
        return {k: v for k, v in snapshot(damaged).items() if not k.startswith("out")}

    before = inputs()
    refused(lmtune(*args, stdin="", cwd=damaged), needle)
    assert not (damaged / "merged").exists() and not any(damaged.glob(".merged*"))
    assert inputs() == before


def test_a_moved_base_model_is_named_with_the_fix(damaged, tmp_path):
    import shutil

    moved = tmp_path / "ad"
    shutil.copytree(damaged / "ad", moved)
    run = yaml.safe_load((moved / "run.yaml").read_text())
    run["model"]["path"] = str(tmp_path / "gone")
    (moved / "run.yaml").write_text(yaml.safe_dump(run), encoding="utf-8")
    refused(lmtune("chat", "--adapter", moved, stdin=""), f"the base model named in {moved / 'run.yaml'} is not at {tmp_path / 'gone'} any more; pass --model DIR")


def test_a_malformed_template_file_names_its_line(project):
    (project / "mine.yaml").write_text("mine:\n  user: [oops\n", encoding="utf-8")
    refused(lmtune("train", "run.yaml", "data.template_file=mine.yaml", cwd=project), "mine.yaml:3: malformed YAML")
