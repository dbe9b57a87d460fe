"""`lmtune eval --tasks`: lm-evaluation-harness tasks (C-Eval, CMMLU, MMLU, GSM8K … or local task
YAMLs) on the model the engine loaded, base + adapter as lmtune loads it.

lm_eval scores the engine's model and tokenizer through its `HFLM`; for generation tasks the run's
template, as Jinja, is the tokenizer's chat template (lm_eval's `apply_chat_template`), so the model
is prompted the way it was trained. lm_eval is imported only here: `import lmtune` and the other
commands never pay for it.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import LmtuneError, first_line

INSTALL = "pip install 'lmtune[eval]' (lm-eval)"


@dataclass
class HarnessTasks:
    names: list[str]
    manager: object  # lm_eval.tasks.TaskManager, its index holding every name
    num_fewshot: int | None
    chat: dict[str, bool]  # per name: prompt through the run's template


def resolve_tasks(tasks: str, include_paths: list[Path] | None, num_fewshot: int | None, chat: bool | None) -> HarnessTasks:
    """The task names checked against lm_eval's index (and --include-path's YAMLs), before any model loads."""
    names = [n.strip() for n in tasks.split(",") if n.strip()]
    if not names:
        raise LmtuneError(f"--tasks {tasks!r}: name one or more tasks, comma-separated, e.g. --tasks mmlu,gsm8k")
    folders = [str(p) for p in include_paths or []]
    for folder in folders:
        if not Path(folder).is_dir():
            raise LmtuneError(f"--include-path {folder}: no such folder (it should hold lm_eval task YAMLs)")
    if importlib.util.find_spec("lm_eval") is None:
        raise LmtuneError(f"--tasks needs lm-evaluation-harness, which is not installed: {INSTALL}")
    _quiet_logs()
    from lm_eval.tasks import TaskManager

    # Indexing lm_eval's own ~200 task folders takes seconds: only when a name is not a local one.
    manager = TaskManager(include_path=folders, include_defaults=False) if folders else None
    if manager is None or any(n not in manager.all_tasks for n in names):
        manager = TaskManager(include_path=folders or None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        close = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = f" or in {', '.join(folders)}" if folders else " (local task YAMLs: --include-path DIR)"
        raise LmtuneError(f"--tasks {unknown[0]}: no such lm-evaluation-harness task{where}{hint}")
    # Deciding loads each task's dataset: one that is not on this machine fails before the model loads.
    decided = {name: chat if chat is not None else _generates(manager, name) for name in names}
    return HarnessTasks(names, manager, num_fewshot, decided)


def run_tasks(engine, tasks: HarnessTasks, limit: int | None, samples_file: Path) -> dict:
    """Each task's metrics ({task: {"metrics", "stderr", "samples", "higher_is_better"}}); every
    scored sample (prompt, answer, target, metrics) goes to samples_file, one JSON line each."""
    _check_model(engine)
    lm = _hflm(engine)
    results: dict = {}
    lines = []
    with _chat_template(engine), _no_progress_bars():
        for chat, names in _by_chat(tasks).items():
            out = _evaluate(lm, tasks, names, chat, limit)
            results.update(_summary(out, chat))
            lines += [{"task": task, **row} for task, rows in out.get("samples", {}).items() for row in rows]
    _write_samples(samples_file, lines)
    return results


# ---------------------------------------------------------------- running


def _check_model(engine) -> None:
    config = getattr(engine.model, "active_peft_config", None)
    if config is not None and getattr(config, "is_prompt_learning", False):
        raise LmtuneError("--tasks: a prompt-learning adapter (P-tuning, prompt tuning) prepends virtual tokens lm_eval cannot score; evaluate with --choice instead")
    if getattr(engine.model.config, "num_labels", 0) == 1 and "SequenceClassification" in type(engine.model).__name__:
        raise LmtuneError("--tasks: a reward model scores answers and writes none; evaluate its pairs with --data instead")


def _hflm(engine):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=engine.model, tokenizer=engine.tokenizer, batch_size=engine.settings.batch_size)


def _by_chat(tasks: HarnessTasks) -> dict[bool, list[str]]:
    """The names in (at most) two runs: with and without the chat template."""
    groups: dict[bool, list[str]] = {}
    for name in tasks.names:
        groups.setdefault(tasks.chat[name], []).append(name)
    return groups


def _generates(manager, name: str) -> bool:
    """Whether any task under the name writes answers (generate_until) rather than scoring choices."""
    from lm_eval.tasks import get_task_dict

    def leaves(tree):
        for value in tree.values():
            yield from leaves(value) if isinstance(value, dict) else [value]

    with _loading(name), _no_progress_bars():
        tree = get_task_dict([name], manager)
    return any(task.OUTPUT_TYPE == "generate_until" for task in leaves(tree))


@contextmanager
def _loading(names: str):
    try:
        yield
    except (OSError, ValueError, KeyError, ConnectionError) as exc:  # mostly a dataset that is not on this machine
        raise LmtuneError(
            f"--tasks {names}: {first_line(exc)} (offline, its dataset must be in the Hugging Face cache; "
            "or write a task YAML over local files and pass --include-path DIR)"
        ) from None


def _evaluate(lm, tasks: HarnessTasks, names: list[str], chat: bool, limit: int | None) -> dict:
    import lm_eval

    with _loading(",".join(names)):
        out = lm_eval.simple_evaluate(
            model=lm, tasks=names, task_manager=tasks.manager, num_fewshot=tasks.num_fewshot, limit=limit,
            apply_chat_template=chat, fewshot_as_multiturn=chat and bool(tasks.num_fewshot),
            log_samples=True, bootstrap_iters=0,  # stderr from the samples' spread; bootstrapping takes minutes
        )
    if out is None:  # simple_evaluate answers None on every rank but the first
        raise LmtuneError("--tasks: lm_eval returned no results (run lmtune eval in one process, not under torchrun)")
    return out


def _summary(out: dict, chat: bool) -> dict:
    """lm_eval's "acc,none" / "exact_match,letter" keys as {"acc": …, "exact_match,letter": …}."""
    summary = {}
    for task, values in out["results"].items():
        metrics, stderr = {}, {}
        for key, value in values.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue
            metric, _, flt = key.partition(",")
            name = metric if flt == "none" else f"{metric},{flt}"
            if metric.endswith("_stderr"):
                stderr[name.replace("_stderr", "", 1)] = value
            else:
                metrics[name] = value
        counts = out.get("n-samples", {}).get(task, {})
        higher = out.get("higher_is_better", {}).get(task, {})
        summary[task] = {
            "metrics": metrics, "stderr": stderr, "samples": counts.get("effective"),
            "higher_is_better": {m: higher.get(m.partition(",")[0], True) for m in metrics},
            "num_fewshot": out.get("n-shot", {}).get(task), "chat_template": chat,
        }
    return summary


def _write_samples(path: Path, lines: list[dict]) -> None:
    from lm_eval.utils import handle_non_serializable

    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, default=handle_non_serializable) + "\n")
    tmp.replace(path)


@contextmanager
def _chat_template(engine):
    """The run's template as the tokenizer's chat template, while lm_eval runs."""
    from lmtune.templates.jinja import to_jinja

    tokenizer, before = engine.tokenizer, engine.tokenizer.chat_template
    tokenizer.chat_template = to_jinja(engine.template)
    try:
        yield
    finally:
        tokenizer.chat_template = before


@contextmanager
def _no_progress_bars():
    import datasets

    datasets.disable_progress_bars()  # the local CSVs load in milliseconds: a bar per split is noise
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _quiet_logs() -> None:
    import logging

    # lm_eval logs every task it builds at INFO and warns about custom datasets; lmtune prints the results.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


# ---------------------------------------------------------------- the table


def table_rows(results: dict[str, dict]) -> list[tuple[str, list[float | None], bool]]:
    """(metric, value per model, higher is better) for every harness task and metric, in % (as
    lmtune's own accuracies), in the order lm_eval reported them."""
    keys = {}
    for result in results.values():
        for task, entry in result.get("harness", {}).items():
            for metric in entry["metrics"]:
                keys.setdefault((task, metric), entry["higher_is_better"][metric])
    rows = []
    for (task, metric), higher in keys.items():
        values = [r.get("harness", {}).get(task, {}).get("metrics", {}).get(metric) for r in results.values()]
        scale = 100 if metric.partition(",")[0] in PERCENT else 1
        rows.append((f"{task} {metric}{' %' if scale == 100 else ''}", [None if v is None else v * scale for v in values], higher))
    return rows


PERCENT = {"acc", "acc_norm", "exact_match", "f1", "mc1", "mc2", "em"}
