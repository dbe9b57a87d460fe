"""Kill a training process with SIGKILL, resume with train.resume=auto, get the same losses."""

import json
import signal
import subprocess
import sys
import time

import yaml

from lmtune.train.checkpoints import MARKER, resume_point

STEPS = 60  # the kill comes at checkpoint-20: 40 steps left is a second or more of margin, and the suite stays short


def lmtune_args(config, *overrides):
    return [sys.executable, "-m", "lmtune", "train", str(config), *overrides]


def losses(folder):
    return {r["step"]: r["loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def test_sigkill_then_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path, llama_dir, data_file):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(llama_dir)},
                "data": {"path": str(data_file), "template": "alpaca", "cutoff_len": 96, "cache_dir": str(tmp_path / "cache")},
                "finetune": {"method": "lora", "lora": {"dropout": 0.1}},  # dropout: the RNG state must resume too
                "train": {
                    "max_steps": STEPS, "learning_rate": 1e-3, "per_device_train_batch_size": 2, "logging_steps": 1,
                    "save_strategy": "steps", "save_steps": 10,
                },
            }
        ),
        encoding="utf-8",
    )
    reference = tmp_path / "reference"
    done = subprocess.run(lmtune_args(config, f"train.output_dir={reference}"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(lmtune_args(config, f"train.output_dir={interrupted}"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # generous: only a slow, loaded machine gets near it
    while not (interrupted / "checkpoint-20" / MARKER).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (interrupted / "adapter_model.safetensors").exists()
    resumed_from = resume_point(interrupted, "auto")
    assert resumed_from is not None and int(resumed_from.name.split("-")[1]) >= 20

    again = subprocess.run(lmtune_args(config, f"train.output_dir={interrupted}", "train.resume=auto"), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {resumed_from}" in again.stderr
    expected, got = losses(reference), losses(interrupted)
    assert sorted(got) == list(range(1, STEPS + 1))  # metrics.jsonl continues where the checkpoint left off
    for step in range(int(resumed_from.name.split("-")[1]) + 1, STEPS + 1):
        assert abs(got[step] - expected[step]) < 1e-6, step


def test_a_checkpoint_without_its_marker_is_never_resumed(tmp_path):
    for step, complete in ((50, True), (100, False)):  # 100: killed while being written
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        if complete:
            (folder / MARKER).write_text(str(step))
    assert resume_point(tmp_path, "auto") == tmp_path / "checkpoint-50"
    assert resume_point(tmp_path, None) is None
