"""A thinking model's reasoning kept apart from its answer in chat, generate (and its distillation
sets) and eval, on a tiny model that has memorised two `<think>…</think>` answers: one prompted
by a template whose prompt leaves the think block to the model (alpaca), one by a template whose
prompt opens it, as DeepSeek-R1's does (`<think>\\n` at the end of the user format)."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from conftest import lmtune, write_json
from lmtune.data.readers import read_conversations
from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.evaluate.metrics import parse_prediction, score
from lmtune.evaluate.report import write_comparison
from lmtune.infer.chat import REASONING_STYLE, chat_loop
from lmtune.infer.generate import read_items, write_dataset

# (question, reasoning, answer): the model learns to write the reasoning in a think block, then the answer
EXAMPLES = [
    ("Name the capital of France.", "The question asks for a city. France's capital is Paris.", "Paris."),
    ("What is two plus two?", "Two and two make four, so the sum is four.", "Four."),
]
OPENING = {  # a user template (data.template_file) whose generation prompt opens the think block
    "r1ish": {
        "description": "alpaca with DeepSeek-R1's opened think block",
        "system": "{content}\n\n",
        "user": "### Instruction:\n{content}\n\n### Response:\n<think>\n",
        "assistant": "{content}{eos}",
        "separator": "\n\n",
        "stop": ["### Instruction:"],
    }
}
TEMPLATES = ["alpaca", "r1ish"]
GREEDY = {"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 64}
CUT = 12  # new tokens: past `<think>\n` (7 tokens here), well before `</think>` (some 40)


@pytest.fixture(scope="module")
def thinker(tmp_path_factory, llama_dir, tokenizer):
    """{template: model folder}; one model, trained for both prompts on prompt ids exactly as the
    engine builds them (a direct loop: a second, not a training run), with a run.yaml naming the
    template and the generate settings."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmtune.data.encode import Encoder
    from lmtune.templates.template import get_template

    tmp = tmp_path_factory.mktemp("thinker")
    template_file = tmp / "templates.yaml"
    template_file.write_text(yaml.safe_dump(OPENING), encoding="utf-8")
    data = write_json(tmp / "questions.json", questions())
    rows = []
    for name in TEMPLATES:
        encoder = Encoder(tokenizer, get_template(name, template_file), cutoff_len=2**31)
        opened = encoder.opens_reasoning(Conversation([Turn(USER, EXAMPLES[0][0])]))
        for question, reasoning, answer in EXAMPLES:
            prompt = encoder.prompt_ids(Conversation([Turn(USER, question)]))
            text = ("" if opened else "<think>\n") + f"{reasoning}\n</think>\n\n{answer}"
            rows.append((prompt, tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        ids[i, :n], labels[i, len(prompt) : n], mask[i, :n] = torch.tensor(prompt + answer), torch.tensor(answer), 1
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small: more threads cost six times the CPU time for nothing
    try:
        for _ in range(120):  # memorised: the loss ends near 0.005, far from any tie between tokens
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    folders = {}
    for name in TEMPLATES:
        folder = tmp / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        run = {
            "model": {"path": str(folder)},
            "data": {"path": str(data), "template": name, "template_file": str(template_file)},
            "train": {"output_dir": str(folder)},
            "generate": GREEDY,
        }
        (folder / "run.yaml").write_text(yaml.safe_dump(run), encoding="utf-8")
        folders[name] = folder
    return folders


def questions() -> list[dict]:
    """The questions, with the answer alone as the reference: eval must score the answer, not the reasoning."""
    return [{"instruction": q, "input": "", "output": a} for q, _, a in EXAMPLES]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- generate


@pytest.mark.parametrize("template", TEMPLATES)
def test_generate_writes_reasoning_and_answer_apart(thinker, template, tmp_path):
    out = tmp_path / "preds.jsonl"
    result = lmtune("generate", "--model", thinker[template], "--data", write_json(tmp_path / "q.json", questions()), "--out", out)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    assert [(r["reasoning"], r["prediction"], r["reasoning_closed"], r["finish_reason"]) for r in rows] == [
        (reasoning, answer, True, "stop") for _, reasoning, answer in EXAMPLES
    ]


def test_a_distillation_set_keeps_the_teachers_reasoning_apart(thinker, tmp_path):
    out, data = tmp_path / "teacher.jsonl", write_json(tmp_path / "q.json", questions())
    result = lmtune("generate", "--model", thinker["r1ish"], "--data", data, "--out", out,
                    "--as-dataset", "messages", "--thinking", "on")
    assert result.returncode == 0, result.stderr
    assert [r["messages"][-1] for r in read_jsonl(tmp_path / "teacher.messages.jsonl")] == [
        {"role": "assistant", "content": a, "reasoning_content": r} for _, r, a in EXAMPLES  # as DeepSeek's API returns it
    ]
    items = read_items(data, thinking=True)
    for fmt in ("alpaca", "sharegpt"):  # the same answers in the other formats (the think block opens the answer)
        write_dataset(items, read_jsonl(out), fmt, tmp_path / f"teacher.{fmt}.jsonl")
    for fmt in ("alpaca", "sharegpt", "messages"):  # read back with the reasoning apart: a student learns to think, then answer
        convs = [conv for conv, _ in read_conversations(tmp_path / f"teacher.{fmt}.jsonl")]
        answers = [(c.turns[-1].role, c.turns[-1].content, c.turns[-1].reasoning) for c in convs]
        assert answers == [(ASSISTANT, a, r) for _, r, a in EXAMPLES]
        assert all(c.thinking is True for c in convs)  # --thinking on, kept with each record


def test_an_answer_cut_off_inside_its_reasoning_is_marked_and_never_trained_on(thinker, tmp_path):
    out = tmp_path / "preds.jsonl"
    result = lmtune("generate", "--model", thinker["alpaca"], "--data", write_json(tmp_path / "q.json", questions()),
                    "--out", out, "--max-new-tokens", CUT, "--as-dataset", "messages")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    assert [(r["prediction"], r["reasoning_closed"], r["finish_reason"]) for r in rows] == [("", False, "length")] * 2
    assert all(r["reasoning"] and r["reasoning"] in reasoning for r, (_, reasoning, _) in zip(rows, EXAMPLES))
    assert read_jsonl(tmp_path / "preds.messages.jsonl") == []
    assert "2 left out" in result.stderr


# ---------------------------------------------------------------- eval


def test_eval_scores_the_answer_and_counts_think_blocks_that_never_closed(thinker, tmp_path):
    # references with their reasoning, as R1-distill data has them: scored on the answer after it
    dev = [{**q, "output": f"<think>\n{r}\n</think>\n\n{a}"} for q, (_, r, a) in zip(questions(), EXAMPLES)]
    data = write_json(tmp_path / "dev.json", dev)
    whole = lmtune("eval", "--model", thinker["r1ish"], "--data", data, "--out", tmp_path / "whole", "--json")
    assert whole.returncode == 0, whole.stderr
    generation = json.loads(whole.stdout)["model"]["generation"]
    assert generation["rouge-l"] == generation["rouge-1"] == 100  # the answer alone matches the reference
    assert (generation["with_reasoning"], generation["reasoning_unclosed"]) == (2, 0)
    cut = lmtune("eval", "--model", thinker["alpaca"], "--data", data, "--out", tmp_path / "cut", "--max-new-tokens", CUT)
    assert cut.returncode == 0, cut.stderr
    generation = json.loads((tmp_path / "cut" / "results.json").read_text(encoding="utf-8"))["model"]["generation"]
    assert (generation["with_reasoning"], generation["reasoning_unclosed"], generation["rouge-l"]) == (2, 1.0, 0)
    line = next(line for line in cut.stdout.splitlines() if "think block never closed %" in line)
    assert "100.00" in line


def test_the_share_of_unclosed_blocks_is_reported_only_where_some_output_reasoned():
    plain = score([{"prediction": "Paris.", "output": "Paris.", "finish_reason": "stop"}])
    assert "reasoning_unclosed" not in plain and "with_reasoning" not in plain


def test_predictions_from_elsewhere_are_scored_on_their_answer(tmp_path):
    """A prediction file that still holds think blocks: one opened by the model, one whose prompt
    opened it (only the `</think>` is in the output), one cut off inside it."""
    rows = [
        {"instruction": "a", "output": "Paris.", "prediction": "<think>\nParis, surely.\n</think>\n\nParis."},
        {"instruction": "b", "output": "Four.", "prediction": "Two and two.\n</think>\n\nFour."},
        {"instruction": "c", "output": "Tea.", "prediction": "<think>\nHmm, tea or", "finish_reason": "length"},
    ]
    result = score(rows)
    assert (result["with_reasoning"], result["reasoning_unclosed"]) == (3, pytest.approx(1 / 3))
    assert result["rouge-1"] == pytest.approx(200 / 3)
    cli = lmtune("eval", "--predictions", write_json(tmp_path / "p.jsonl", rows, jsonl=True), "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["with_reasoning"] == 3


def test_parse_prediction_without_the_prompt_ends_reasoning_at_a_bare_close():
    assert (parse_prediction("R\n</think>\n\nA").reasoning, parse_prediction("R\n</think>\n\nA").answer) == ("R", "A")
    assert parse_prediction("R\n</think>\n\nA", opened=False).reasoning is None  # the prompt did not open one
    assert parse_prediction("just an answer") == parse_prediction("just an answer", opened=False)
    assert not parse_prediction("<think>\nstill thinking").closed


def test_the_comparison_page_folds_reasoning_away_and_flags_unclosed_blocks(tmp_path):
    base = [{"instruction": "a", "output": "Paris.", "prediction": "Lyon.", "finish_reason": "stop"}]
    thinking = [{"instruction": "a", "output": "Paris.", "prediction": "", "reasoning": "France… its capital",
                 "reasoning_closed": False, "finish_reason": "length"}]
    pair = write_json(tmp_path / "a.jsonl", base, jsonl=True), write_json(tmp_path / "b.jsonl", thinking, jsonl=True)
    summary = write_comparison(*pair, tmp_path / "compare.html")
    assert summary["difference"]["reasoning_unclosed"] == 1.0
    page = (tmp_path / "compare.html").read_text(encoding="utf-8")
    assert "<details><summary>reasoning</summary>" in page and "France… its capital" in page
    assert '<span class="flag">think block never closed</span>' in page and "<th>think block never closed</th>" in page
    plain = write_comparison(pair[0], pair[0], tmp_path / "same.html")
    assert "reasoning_unclosed" not in plain["difference"]
    assert "think block never closed" not in (tmp_path / "same.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------- chat


@pytest.mark.parametrize("template", TEMPLATES)
def test_chat_shows_the_reasoning_apart_then_the_answer(thinker, template):
    stdin = "".join(f"{q}\n/clear\n" for q, _, _ in EXAMPLES) + "/exit\n"
    result = lmtune("chat", "--model", thinker[template], "--thinking", "off", stdin=stdin)
    assert result.returncode == 0, result.stderr
    for _, reasoning, answer in EXAMPLES:
        assert f"thinking> {reasoning}\nassistant> {answer}\n" in result.stdout


def test_chat_streams_reasoning_in_its_style_and_keeps_it_out_of_the_answer(thinker):
    from lmtune.config import GenerateConfig
    from lmtune.infer.engine import load_engine

    engine = Recording(load_engine(str(thinker["r1ish"]), settings=GenerateConfig(**GREEDY)))
    lines = iter([EXAMPLES[0][0], EXAMPLES[1][0]])
    shown: list[tuple[str, str | None]] = []

    def read(_prompt):
        shown.append(("", "read"))  # where one reply ends and the next question is read
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    chat_loop(engine, read, lambda text, style=None: shown.append((text, style)), thinking=True)
    question, reasoning, answer = EXAMPLES[0]
    second = engine.asked[1]
    assert second.thinking is True
    assert second.turns[:2] == [Turn(USER, question), Turn(ASSISTANT, answer, reasoning=reasoning)]
    prompt = "".join(s.text for s in engine.encoder.render(second))
    assert reasoning not in prompt and answer in prompt  # the template drops past reasoning, as R1's does
    reads = [i for i, (_, style) in enumerate(shown) if style == "read"]
    first_reply = shown[reads[0] + 1 : reads[1]]
    assert "".join(text for text, style in first_reply if style == REASONING_STYLE) == reasoning
    assert "".join(text for text, style in first_reply if style is None) == f"thinking> \nassistant> {answer}\n"


class Recording:
    """The engine, keeping a copy of every conversation it is asked to answer."""

    def __init__(self, engine):
        self.engine, self.encoder, self.settings, self.asked = engine, engine.encoder, engine.settings, []

    def chat(self, conv, on_text=None):
        self.asked.append(copy.deepcopy(conv))
        return self.engine.chat(conv, on_text)


@pytest.mark.parametrize("command", ["chat", "generate"])
def test_a_bad_thinking_switch_is_one_clear_error(command, tmp_path):
    extra = ["--data", write_json(tmp_path / "q.json", questions()), "--out", tmp_path / "o.jsonl"] if command == "generate" else []
    result = lmtune(command, "--model", tmp_path / "nowhere", "--thinking", "maybe", *extra, stdin="")
    assert result.returncode == 2
    assert "error: --thinking maybe: choose on or off" in result.stderr and "Traceback" not in result.stderr
