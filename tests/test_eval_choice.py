"""Multiple-choice scoring: the three CSV layouts, the exact prompt, and letter logits forced
through the real batching path of a tiny model."""

from contextlib import contextmanager

import pytest
import torch

from lmtune.config import GenerateConfig
from lmtune.data.records import ASSISTANT, USER, Turn
from lmtune.errors import DataError
from lmtune.evaluate.choice import (
    Question,
    build_prompt,
    few_shot_examples,
    letter_scores,
    letter_token_ids,
    read_questions,
    score_choices,
)
from lmtune.infer.engine import Engine
from lmtune.model.load import load_model
from lmtune.templates.template import get_template


def write(path, text, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8-sig" if bom else "utf-8")
    return path


def question(subject, text, options, answer, source):
    return Question(subject, text, dict(zip("ABCD", options.split())), answer, source)


CEVAL_HEADER = "id,question,A,B,C,D,answer,explanation\n"
CMMLU_HEADER = ",Question,A,B,C,D,Answer\n"


def test_the_three_layouts_read_to_the_same_questions_and_dev_files_are_left_out(tmp_path):
    val = write(tmp_path / "ceval/val/computer_network_val.csv", CEVAL_HEADER
                + "0,下列哪个是传输层协议？,IP,TCP,ARP,ICMP,B,TCP 是传输层协议\n"
                + '1,"以太网帧的最小长度是\n多少字节？",32,46,64,128,C,\n', bom=True)
    write(tmp_path / "ceval/dev/computer_network_dev.csv", CEVAL_HEADER + "0,HTTP 默认端口？,21,80,443,25,B,\n")
    write(tmp_path / "ceval/test/computer_network_test.csv", "id,question,A,B,C,D,answer\n0,问题？,a,b,c,d,\n")
    assert read_questions(tmp_path / "ceval") == {"computer_network": [
        question("computer_network", "下列哪个是传输层协议？", "IP TCP ARP ICMP", "B", f"{val}:2"),
        question("computer_network", "以太网帧的最小长度是\n多少字节？", "32 46 64 128", "C", f"{val}:3"),
    ]}
    assert read_questions(val) == read_questions(tmp_path / "ceval")

    cmmlu = write(tmp_path / "cmmlu/test/agronomy.csv", CMMLU_HEADER + "0,水稻属于哪一科？,禾本科,豆科,茄科,菊科,A\n", bom=True)
    write(tmp_path / "cmmlu/dev/agronomy.csv", CMMLU_HEADER + "0,小麦属于哪一科？,豆科,禾本科,茄科,菊科,B\n")
    assert read_questions(tmp_path / "cmmlu") == {"agronomy": [
        question("agronomy", "水稻属于哪一科？", "禾本科 豆科 茄科 菊科", "A", f"{cmmlu}:2"),
    ]}

    mmlu = write(tmp_path / "mmlu/test/abstract_algebra_test.csv",
                 '"Find the order of Z_4, a cyclic group.",2,4,8,16,B\nWhat is 1+1?,1,2,3,4,b\n')
    write(tmp_path / "mmlu/dev/abstract_algebra_dev.csv", "What is 2+2?,3,4,5,6,B\n")
    assert read_questions(tmp_path / "mmlu") == {"abstract_algebra": [
        question("abstract_algebra", "Find the order of Z_4, a cyclic group.", "2 4 8 16", "B", f"{mmlu}:1"),
        question("abstract_algebra", "What is 1+1?", "1 2 3 4", "B", f"{mmlu}:2"),
    ]}
    counts = {subject: len(items) for subject, items in read_questions(tmp_path).items()}
    assert counts == {"abstract_algebra": 2, "agronomy": 1, "computer_network": 2}

    # Each layout finds its own dev file.
    assert [q.question for q in few_shot_examples(val, "computer_network", 5)] == ["HTTP 默认端口？"]
    assert [q.question for q in few_shot_examples(cmmlu, "agronomy", 1)] == ["小麦属于哪一科？"]
    assert [q.answer for q in few_shot_examples(mmlu, "abstract_algebra", 1)] == ["B"]

    with pytest.raises(DataError, match="no answers .* a test split"):
        read_questions(tmp_path / "ceval/test/computer_network_test.csv")


def test_few_shot_prompt_is_exact_and_a_missing_dev_file_says_where_it_looked(tmp_path):
    example = question("abstract_algebra", "What is 2+2?", "3 4 5 6", "B", "dev.csv:1")
    conv = build_prompt(question("abstract_algebra", "What is 1+1?", "1 2 3 4", "B", "t.csv:1"), [example])
    assert conv.system == "The following are multiple choice questions about abstract algebra."
    assert conv.turns == [
        Turn(USER, "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"),
        Turn(ASSISTANT, "B"),
        Turn(USER, "What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"),
    ]
    rendered = "".join(s.text for s in get_template("alpaca").render(conv, eos="</s>"))
    assert rendered == (
        "The following are multiple choice questions about abstract algebra.\n\n"
        "### Instruction:\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:\n\n### Response:\nB</s>\n\n"
        "### Instruction:\nWhat is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:\n\n### Response:\n"
    )

    conv = build_prompt(question("high_school_physics", "光速约为多少？", "3e8m/s 340m/s 1m/s 0", "A", "t.csv:2"), [])
    assert conv.system == "以下是中国关于high school physics考试的单项选择题，请选出其中的正确答案。"
    assert conv.turns == [Turn(USER, "光速约为多少？\nA. 3e8m/s\nB. 340m/s\nC. 1m/s\nD. 0\n答案：")]

    question_file = write(tmp_path / "test/x_test.csv", "q?,a,b,c,d,A\n")
    assert few_shot_examples(question_file, "x", 0) == []
    with pytest.raises(DataError) as error:
        few_shot_examples(question_file, "x", 5)
    message = str(error.value)
    for path in (tmp_path / "test/x_dev.csv", tmp_path / "dev/x_dev.csv", tmp_path / "dev/x.csv"):
        assert str(path) in message
    assert "--shots 0" in message


@pytest.fixture(scope="module")
def engine(llama_dir, tokenizer):
    return Engine(load_model(llama_dir, "float32"), tokenizer, get_template("alpaca"), GenerateConfig())


@contextmanager
def forced(engine, letter):
    """The model 'prefers' one letter: +100 on its variants' logits at the last position of every row."""
    ids = letter_token_ids(engine.tokenizer)[letter]

    def hook(module, inputs, output):
        output = output.clone()
        output[:, -1, ids] += 100
        return output

    handle = engine.model.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture
def benchmark(tmp_path):
    """Subject x (CMMLU layout, Chinese): answers B C B B. Subject y (MMLU layout): answers B C C.
    Questions of very different lengths, so batches are left-padded."""
    rows = [(1, "B"), (6, "C"), (2, "B"), (9, "B")]
    x = write(tmp_path / "test/x.csv", CMMLU_HEADER + "".join(
        f"{i},{'中国的首都是哪里？' * n},北京,上海,广州,深圳,{answer}\n" for i, (n, answer) in enumerate(rows)
    ))
    write(tmp_path / "dev/x.csv", CMMLU_HEADER + "0,一加一等于几？,一,二,三,四,B\n")
    y = write(tmp_path / "test/y_test.csv", "".join(
        f"{'What is two plus two? ' * n},3,4,5,6,{answer}\n" for n, answer in [(7, "B"), (1, "C"), (3, "C")]
    ))
    write(tmp_path / "dev/y_dev.csv", "Name the capital of France.,Paris,Rome,Oslo,Bern,A\n")
    return {"x": x, "y": y}


def test_forced_letter_logits_give_exact_accuracy(engine, benchmark, tmp_path):
    ids = letter_token_ids(engine.tokenizer)
    assert all(ids.values()) and not set(ids["B"]) & set(ids["C"])
    questions = read_questions(tmp_path / "test")
    batches = []
    with forced(engine, "B"):
        result = score_choices(engine, questions, shots=1, batch_size=2, progress=batches.append)
    assert batches == [2, 2, 2, 1]
    assert result["shots"] == 1
    assert result["subjects"] == {
        "x": {"accuracy": 0.75, "correct": 3, "total": 4},
        "y": {"accuracy": pytest.approx(1 / 3), "correct": 1, "total": 3},
    }
    assert result["overall"] == {
        "accuracy": pytest.approx(4 / 7), "correct": 4, "total": 7, "macro_accuracy": pytest.approx((0.75 + 1 / 3) / 2),
    }

    with forced(engine, "C"):
        result = score_choices(engine, questions, shots=0, batch_size=2, question_files=benchmark)
    assert [s["correct"] for s in result["subjects"].values()] == [1, 2]
    assert result["overall"]["accuracy"] == pytest.approx(3 / 7)
    assert result["overall"]["macro_accuracy"] == pytest.approx((0.25 + 2 / 3) / 2)


def test_left_padded_batch_scores_match_each_prompt_alone(engine, benchmark, tmp_path):
    questions = read_questions(tmp_path / "test")["y"]
    prompts = [engine.encoder.prompt_ids(build_prompt(q, [])) for q in questions]
    assert len({len(p) for p in prompts}) == 3
    letters = letter_token_ids(engine.tokenizer)
    together = letter_scores(engine, prompts, letters)
    alone = torch.cat([letter_scores(engine, [p], letters) for p in prompts])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "name, text, where, what",
    [
        ("bad_answer_test.csv", "What is 1+1?,1,2,3,4,B\nWhat is 2+2?,3,4,5,6,E\n", 2, "answer 'E' is not one of A, B, C, D"),
        ("short_row_test.csv", "What is 1+1?,1,2,3,4,B\nWhat is 2+2?,3,4,5,B\n", 2, "5 columns, expected 6"),
        ("short_row_val.csv", CEVAL_HEADER + "0,问题一？,a,b,c,d,A,\n1,问题二？,a,b,c,A\n", 3, "6 columns, expected 8"),
    ],
)
def test_a_malformed_row_is_a_data_error_naming_file_and_line(tmp_path, name, text, where, what):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as error:
        read_questions(path)
    assert str(error.value).startswith(f"{path}:{where}: {what}")
