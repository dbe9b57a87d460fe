"""metrics.jsonl while training, loss.png at the end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


class MetricsFile(TrainerCallback):
    """One JSON line per logging step: step, epoch, samples (training samples seen so far: packed
    runs take fewer, fuller steps, so compare runs by samples), loss, learning_rate, grad_norm,
    tokens_per_second (real tokens, padding excluded) and padding_share (of the positions the model
    computed)."""

    def __init__(self, output_dir: Path, collator, keep_until: int = 0):
        """keep_until: a resumed run keeps the lines up to its checkpoint's step and goes on from there."""
        self.path = Path(output_dir) / METRICS_FILE
        self.collator = collator  # counts the real tokens it batches (HF's count breaks on packed 4D masks)
        kept = [row for row in read_metrics(output_dir) if row["step"] <= keep_until] if keep_until else []
        self._before = kept[-1].get("samples", 0) if kept else 0  # seen before the checkpoint resumed from
        self.path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        self._last = (time.perf_counter(), 0, 0)
        self._not_trained = 0  # samples the collator batched for evaluation, not training
        self._after_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), self.collator.tokens, self.collator.slots)
        self._not_trained = self.collator.samples

    def on_step_end(self, args, state, control, **kwargs):
        self._after_step = self.collator.samples

    def on_evaluate(self, args, state, control, **kwargs):
        self._not_trained += self.collator.samples - self._after_step  # the dev set, batched since the step ended
        self._after_step = self.collator.samples

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_loss" in logs:
            self._write({"step": state.global_step, "eval_loss": logs["eval_loss"], **preference_metrics(logs, "eval_")})
        if not logs or "loss" not in logs:
            return  # the end-of-training summary has train_loss etc., not a step
        now, tokens, slots = time.perf_counter(), self.collator.tokens, self.collator.slots
        last_time, last_tokens, last_slots = self._last
        self._last = (now, tokens, slots)
        row = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 4),
            "samples": self._before + self.collator.samples - self._not_trained,
            "loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens_per_second": round((tokens - last_tokens) / max(now - last_time, 1e-9), 1),
            "padding_share": round(1 - (tokens - last_tokens) / max(slots - last_slots, 1), 4),
        }
        self._write({**row, **preference_metrics(logs)})

    def _write(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# What TRL's trainers log beside the loss. DPO (and KTO): the implicit rewards of the chosen and rejected
# answers (beta * log-ratio against the reference), their margin, the share of pairs where chosen wins;
# KTO also its KL estimate. RewardTrainer: the share of pairs scored right, the mean score gap, the mean
# score. GRPO: the mean reward of the sampled answers, its spread, and each reward function's mean.
PREFERENCE_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "kl",
                      "accuracy", "margin", "mean_reward", "reward", "reward_std")


def preference_metrics(logs: dict, prefix: str = "") -> dict:
    named = {name: logs[prefix + name] for name in PREFERENCE_METRICS if prefix + name in logs}
    per_function = {k[len(prefix):]: v for k, v in logs.items() if k.startswith(prefix + "rewards/") and k.endswith("/mean")}
    return {**named, **per_function}


class ProgressLines(TrainerCallback):
    """In a terminal, a live progress bar with loss, learning rate and ETA; in a log file or CI,
    a compact line per logging step instead (the Trainer's tqdm bar floods non-interactive logs)."""

    def __init__(self, log: Callable[[str], None], live: bool | None = None):
        from rich.console import Console

        self.log = log
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self.bar = None
        self._started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(), console=self.console,
            )
            self.task = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, status="")
            self.bar.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar:
            self.bar.update(self.task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar:
            self.bar.stop()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_loss" in logs:
            self._say(state, f"dev loss {logs['eval_loss']:.4f}")
        if not logs or "loss" not in logs:
            return
        grad = logs.get("grad_norm")
        status = f"loss {logs['loss']:.4f}  lr {logs.get('learning_rate', 0):.2e}  grad norm {'-' if grad is None else f'{grad:.3f}'}"
        if "rewards/margins" in logs:
            status += f"  margin {logs['rewards/margins']:.3f}  accuracy {logs.get('rewards/accuracies', 0):.0%}"
        if "reward" in logs:  # GRPO: the sampled answers' mean reward and its spread
            status += f"  reward {logs['reward']:.3f} ± {logs.get('reward_std', 0):.3f}"
        if self.bar:
            self.bar.update(self.task, status=status)
        else:
            self._say(state, f"{status}  eta {self._eta(state):.0f}s")

    def _say(self, state, text: str) -> None:
        line = f"step {state.global_step}/{state.max_steps}  {text}"
        self.bar.console.print(line) if self.bar else self.log(line)

    def _eta(self, state) -> float:
        elapsed = time.perf_counter() - self._started
        done = state.global_step / max(state.max_steps, 1)
        return elapsed / done - elapsed if done else 0.0


def smoothed(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with the start-up bias removed (as TensorBoard draws it)."""
    out, value = [], 0.0
    for i, x in enumerate(values, start=1):
        value = weight * value + (1 - weight) * x
        out.append(value / (1 - weight**i) if weight else x)
    return out


def read_metrics(output_dir: Path) -> list[dict]:
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss(output_dir: Path) -> Path | None:
    """Raw and exponentially smoothed training loss against step."""
    rows = read_metrics(output_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training servers
    import matplotlib.pyplot as plt

    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    if not train_rows:
        return None
    steps = [r["step"] for r in train_rows]
    losses = [r["loss"] for r in train_rows]
    weight = max(0.0, min(0.9, 1 - 10 / len(losses)))  # short runs get little or no smoothing
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, alpha=0.35 if weight else 1.0, label="loss")
    if weight:
        ax.plot(steps, smoothed(losses, weight), label=f"smoothed (EMA {weight:.2f})")
    if eval_rows:
        ax.plot([r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], "o-", label="dev loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    _set_title(ax, Path(output_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(output_dir) / LOSS_PLOT
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Fonts that carry CJK glyphs, as Debian, macOS and Windows name them. Without one, matplotlib
# prints a missing-glyph warning per character and draws boxes, so such a title is left out.
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Source Han Sans SC",
              "PingFang SC", "Microsoft YaHei", "SimHei", "AR PL UMing CN")


def _set_title(ax, title: str) -> None:
    if title.isascii():
        ax.set_title(title)
        return
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    family = next((name for name in _CJK_FONTS if name in installed), None)
    if family:
        ax.set_title(title, fontfamily=family)
