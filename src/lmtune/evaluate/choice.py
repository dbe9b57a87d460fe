"""Multiple-choice benchmarks (C-Eval, CMMLU, MMLU) scored from local CSV files.

The model is not asked to write an answer: we read its next-token distribution right after the
prompt ("…答案：" / "…Answer:") and compare the four option letters, as the benchmarks' own
harnesses do. That is one forward pass per question, deterministic, and never fails to parse.
A letter can arrive as two different tokens: byte-level BPE has both "B" and " B", while
sentencepiece folds the space into "▁B". A letter's score is therefore the probability mass of
all its variants (logsumexp of their log-probabilities).

Prompts are batched with left padding, so the last position of every row is the one that
predicts the answer. The three layouts on disk:
  C-Eval  header id,question,A,B,C,D,answer[,explanation]; <subject>_{val,dev,test}.csv
  CMMLU   header ,Question,A,B,C,D,Answer;                  {dev,test}/<subject>.csv
  MMLU    no header: question,A,B,C,D,answer;               {dev,val,test}/<subject>_<split>.csv
"""

from __future__ import annotations

import csv
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune.data.encode import pad_batch
from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.errors import DataError
from lmtune.evaluate.metrics import HAN

log = logging.getLogger(__name__)

LETTERS = ("A", "B", "C", "D")
COLUMNS = ("question", *LETTERS, "answer")  # the MMLU order, also the names a header must use
SPLIT = re.compile(r"_(val|dev|test)$")


@dataclass
class Question:
    subject: str
    question: str
    options: dict[str, str]  # {"A": ..., "B": ..., "C": ..., "D": ...}
    answer: str  # "A".."D"
    source: str  # "path:line"; the path also locates the subject's few-shot (dev) file

    @property
    def file(self) -> Path:
        return Path(self.source.rsplit(":", 1)[0])


# ---------------------------------------------------------------- reading


def subject_of(path: Path) -> str:
    return SPLIT.sub("", path.stem)


def read_questions(path: str | Path) -> dict[str, list[Question]]:
    """Questions by subject from one CSV file, or from every CSV under a folder except the
    few-shot files (*_dev.csv, anything under a dev/ folder) and files without answers (test splits)."""
    path = Path(path)
    if path.is_file():
        questions = _read_csv(path, subject_of(path))
        if questions is None:
            raise DataError(f"{path}: no answers (the answer column is missing or empty: a test split?); "
                            "score a split that has answers (val for C-Eval, test for CMMLU and MMLU)")
        return {subject_of(path): questions}
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder; pass a benchmark CSV file or a folder of them")
    found: dict[str, list[Question]] = {}
    skipped = []
    for file in sorted(path.rglob("*.csv")):
        if file.name.endswith("_dev.csv") or "dev" in file.relative_to(path).parts[:-1]:
            continue
        questions = _read_csv(file, subject_of(file))
        if questions is None:
            skipped.append(file)
        else:
            found.setdefault(subject_of(file), []).extend(questions)
    if skipped:
        log.warning("skipped %d CSV file(s) without answers (test splits?), e.g. %s", len(skipped), skipped[0])
    if not found:
        raise DataError(f"{path}: no CSV file with answers under this folder (dev files hold few-shot examples, "
                        "not questions); pass the folder of the split to score, e.g. val/ for C-Eval")
    return dict(sorted(found.items()))


def _read_csv(path: Path, subject: str) -> list[Question] | None:
    """The file's questions, or None when it has no answers at all (a benchmark's test split)."""
    rows = _rows(path)
    if not rows:
        raise DataError(f"{path}: no rows; remove the file or fill it")
    names = [cell.strip().lower() for cell in rows[0][1]]
    if {"question", "a", "b", "c", "d"} <= set(names):  # C-Eval, CMMLU
        columns = {key: names.index(key.lower()) for key in COLUMNS if key.lower() in names}
        width, rows = len(names), rows[1:]
    else:  # MMLU has no header
        columns, width = {key: i for i, key in enumerate(COLUMNS)}, len(COLUMNS)
    if "answer" not in columns or not any(_cell(cells, columns["answer"]) for _, cells in rows):
        return None
    return [_question(cells, columns, width, subject, f"{path}:{line}") for line, cells in rows]


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(first line, cells) of every non-blank row; a quoted question may span several lines."""
    rows, end = [], 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops a BOM
            reader = csv.reader(f)
            for cells in reader:
                start, end = end + 1, reader.line_num
                if any(cell.strip() for cell in cells):
                    rows.append((start, cells))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); re-save the file as UTF-8") from exc
    except csv.Error as exc:
        raise DataError(f"{path}:{end + 1}: unreadable CSV ({exc}); check the quoting on that line") from exc
    return rows


def _question(cells: list[str], columns: dict[str, int], width: int, subject: str, where: str) -> Question:
    if len(cells) != width:
        raise DataError(f"{where}: {len(cells)} columns, expected {width} (question, A, B, C, D, answer); "
                        "is an option missing, or a comma left unquoted?")
    answer = cells[columns["answer"]].strip().upper()
    if answer not in LETTERS:
        raise DataError(f"{where}: answer '{cells[columns['answer']]}' is not one of A, B, C, D; fix or remove the row")
    question = cells[columns["question"]].strip()
    if not question:
        raise DataError(f"{where}: empty question; fix or remove the row")
    options = {letter: cells[columns[letter]].strip() for letter in LETTERS}
    return Question(subject, question, options, answer, where)


def _cell(cells: list[str], index: int) -> str:
    return cells[index].strip() if index < len(cells) else ""


def few_shot_examples(question_file: str | Path, subject: str, k: int) -> list[Question]:
    """The first k questions of the subject's dev file, looked for beside the question file and in
    the dev/ folder next to its folder (C-Eval and MMLU name it <subject>_dev.csv, CMMLU <subject>.csv)."""
    if k <= 0:
        return []
    here, dev = Path(question_file).parent, Path(question_file).parent.parent / "dev"
    candidates = [here / f"{subject}_dev.csv", dev / f"{subject}_dev.csv", dev / f"{subject}.csv"]
    for file in candidates:
        if file.is_file():
            examples = _read_csv(file, subject)
            if not examples:
                raise DataError(f"{file}: the few-shot file has no answers; fill its answer column or pass --shots 0")
            if len(examples) < k:
                log.warning("%s: %d few-shot examples, fewer than the %d asked for", file, len(examples), k)
            return examples[:k]
    raise DataError(f"no few-shot examples for subject '{subject}': looked for {', '.join(map(str, candidates))}; "
                    "put the benchmark's dev files there or pass --shots 0")


# ---------------------------------------------------------------- prompting


def build_prompt(question: Question, examples: list[Question]) -> Conversation:
    """Few-shot examples as earlier user/assistant turns (the answer is the letter alone), then the
    question; the template renders it up to where the answer letter starts."""
    chinese = bool(HAN.search(question.question))
    turns = []
    for example in examples:
        turns += [Turn(USER, _body(example, chinese)), Turn(ASSISTANT, example.answer)]
    turns.append(Turn(USER, _body(question, chinese)))
    readable = question.subject.replace("_", " ")
    system = (f"以下是中国关于{readable}考试的单项选择题，请选出其中的正确答案。" if chinese
              else f"The following are multiple choice questions about {readable}.")
    return Conversation(turns, system=system, source=question.source)


def _body(question: Question, chinese: bool) -> str:
    options = "".join(f"\n{letter}. {question.options[letter]}" for letter in LETTERS)
    return f"{question.question}{options}\n{'答案：' if chinese else 'Answer:'}"


# ---------------------------------------------------------------- scoring


def score_choices(
    engine,
    questions: dict[str, list[Question]],
    shots: int = 0,
    batch_size: int = 8,
    question_files: dict[str, str | Path] | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> dict:
    """Accuracy per subject and overall (micro: all questions count alike; macro: all subjects do).
    Few-shot examples come from the dev file beside question_files[subject], by default the file of
    the subject's first question. progress(n) is called after each batch of n questions."""
    letter_ids = letter_token_ids(engine.tokenizer)
    subjects = {}
    for subject, items in questions.items():
        file = (question_files or {}).get(subject) or items[0].file
        examples = few_shot_examples(file, subject, shots)
        prompts = [engine.encoder.prompt_ids(build_prompt(q, examples)) for q in items]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # alike lengths pad little
        predicted = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            best = letter_scores(engine, [prompts[i] for i in chunk], letter_ids).argmax(-1).tolist()
            predicted.update({i: LETTERS[b] for i, b in zip(chunk, best)})
            progress(len(chunk))
        subjects[subject] = _accuracy(sum(predicted[i] == q.answer for i, q in enumerate(items)), len(items))
    overall = _accuracy(sum(s["correct"] for s in subjects.values()), sum(s["total"] for s in subjects.values()))
    overall["macro_accuracy"] = sum(s["accuracy"] for s in subjects.values()) / len(subjects) if subjects else 0.0
    return {"subjects": subjects, "overall": overall, "shots": shots}


def _accuracy(correct: int, total: int) -> dict:
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total}


def letter_token_ids(tokenizer) -> dict[str, list[int]]:
    """Each letter's possible next tokens: the last token of "B" and of " B"."""
    ids = {}
    for letter in LETTERS:
        variants = [tokenizer.encode(text, add_special_tokens=False) for text in (letter, " " + letter)]
        ids[letter] = sorted({v[-1] for v in variants if v})
    return ids


def letter_scores(engine, prompts: list[list[int]], letter_ids: dict[str, list[int]]) -> torch.Tensor:
    """[len(prompts), 4] log-probabilities of A..D as the next token after each prompt."""
    model = engine.model
    batch = pad_batch([{"input_ids": p} for p in prompts], engine.tokenizer.pad_token_id, side="left")
    mask = batch["attention_mask"].to(model.device)
    inputs = {"input_ids": batch["input_ids"].to(model.device), "attention_mask": mask}
    base_forward = inspect.signature((model.get_base_model() if hasattr(model, "get_base_model") else model).forward)
    if "position_ids" in base_forward.parameters:
        # Without them forward counts positions from the padding: harmless under RoPE (relative),
        # wrong for absolute position embeddings. generate() does the same.
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if "logits_to_keep" in base_forward.parameters:
        inputs["logits_to_keep"] = 1  # a [batch, length, vocab] tensor of a 150k vocabulary is gigabytes
    with torch.inference_mode():
        logprobs = model(**inputs).logits[:, -1, :].float().log_softmax(-1)
    return torch.stack([logprobs[:, letter_ids[letter]].logsumexp(-1) for letter in LETTERS], dim=1).cpu()
