"""Reasoning models' templates against their official chat templates, on the real tokenizers.

Qwen3's own tokenizer_config.json; DeepSeek-R1 on the DeepSeek-V3/R1 tokenizer (the same
vocabulary and special tokens) with the R1 distills' chat template, in its 2025 form that opens
the think block in the generation prompt (llama.cpp keeps that copy); DeepSeek-V3's own. Every
sample must be the official rendering of the conversation up to its answer, token for token,
and train exactly that answer: its think block and text and end token, nothing the model reads.
"""

import json
import shutil
from pathlib import Path

import pytest

from lmtune.data.encode import IGNORE_INDEX, Encoder
from lmtune.data.formats import detect_format, to_conversation
from lmtune.data.records import ASSISTANT, FUNCTION, OBSERVATION, USER, Conversation, Turn
from lmtune.templates.hf import template_for
from lmtune.templates.jinja import to_jinja
from lmtune.templates.template import get_template

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
TOKENIZERS, CHAT_TEMPLATES = REFERENCE / "tokenizers", REFERENCE / "chat-templates" / "llama.cpp-models-templates"
pytestmark = pytest.mark.skipif(not TOKENIZERS.is_dir(), reason=f"the real tokenizers are not here ({TOKENIZERS})")

ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}

THINKING_EN = Conversation([Turn(USER, "What is 17 * 3?"), Turn(ASSISTANT, "17 * 3 = 51.", reasoning="17 * 3 = 10 * 3 + 7 * 3 = 30 + 21 = 51.")])
THINKING_ZH_3_TURNS = Conversation([
    Turn(USER, "中国的首都是哪里？"), Turn(ASSISTANT, "北京。", reasoning="用户问中国的首都，是北京。"),
    Turn(USER, "那日本呢？"), Turn(ASSISTANT, "东京。", reasoning="日本的首都是东京。"),
    Turn(USER, "两座城市哪个人口多？"), Turn(ASSISTANT, "东京都市圈人口更多。", reasoning="东京都市圈约三千七百万人，北京约两千一百万。"),
], system="你是一个地理老师。")
NOT_THINKING = Conversation([Turn(USER, "Hi there"), Turn(ASSISTANT, "Hello! How can I help?"), Turn(USER, "谢谢"), Turn(ASSISTANT, "不客气。")])
SOFT_NO_THINK = Conversation([Turn(USER, "Say hi. /no_think"), Turn(ASSISTANT, "Hi!")])
TOOL_LOOP = Conversation([
    Turn(USER, "What is 12 + 30?"),
    Turn(FUNCTION, json.dumps({"name": "add", "arguments": {"a": 12, "b": 30}}), reasoning="I should call add."),
    Turn(OBSERVATION, "42"),
    Turn(ASSISTANT, "12 + 30 = 42.", reasoning="The tool says 42."),
], tools=[ADD])


def tokenizer_from(tmp_path, config_dir, vocab_dir=None, chat_template=None):
    from transformers import AutoTokenizer

    folder = tmp_path / config_dir
    folder.mkdir()
    config = json.loads((TOKENIZERS / config_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        source = TOKENIZERS / (vocab_dir or config_dir) / name
        if source.is_file() and source.stat().st_size > 100:  # the qwen3 folder's vocab files are links to qwen2.5's
            shutil.copy(source, folder / name)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return tokenizer_from(tmp_path_factory.mktemp("tok"), "qwen3", vocab_dir="qwen2.5")


@pytest.fixture(scope="module")
def deepseek_r1(tmp_path_factory):
    """The R1 tokenizer (= V3's) with the distills' official template as updated in 2025: the
    generation prompt opens <think>. llama.cpp's copy adds an enable_thinking switch of its own,
    which the tests leave on."""
    template = (CHAT_TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text(encoding="utf-8")
    return tokenizer_from(tmp_path_factory.mktemp("tok"), "deepseek-v3", chat_template=template)


@pytest.fixture(scope="module")
def deepseek_v3(tmp_path_factory):
    return tokenizer_from(tmp_path_factory.mktemp("tok"), "deepseek-v3")


def messages(conv, reasoning_inline=False):
    """As an OpenAI client sends them: reasoning as reasoning_content (Qwen3 reads it; DeepSeek's
    templates do not, and show the answer alone), or inline as the think block the model wrote."""
    out = [{"role": "system", "content": conv.system}] if conv.system else []
    for t in conv.turns:
        if t.role == FUNCTION:
            call = json.loads(t.content)
            message = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]}
        else:
            message = {"role": {OBSERVATION: "tool"}.get(t.role, t.role), "content": t.content}
        if t.reasoning is not None and reasoning_inline:
            message["content"] = f"<think>\n{t.reasoning}\n</think>\n\n{message['content']}"
        elif t.reasoning is not None:
            message["reasoning_content"] = t.reasoning
        out.append(message)
    return out


def official(tokenizer, conv, generation=False, inline=False, **kwargs):
    return tokenizer.apply_chat_template(messages(conv, inline), tools=conv.tools, tokenize=False, add_generation_prompt=generation, **kwargs)


def answers(conv):
    return [i for i, t in enumerate(conv.turns) if t.role in (ASSISTANT, FUNCTION)]


def upto(conv, index, **changes):
    return Conversation(conv.turns[:index], conv.system, conv.tools, **changes)


def trained(tokenizer, sample):
    return tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX])


def text(tokenizer, sample):
    return tokenizer.decode(sample.input_ids)


def ids(tokenizer, rendered):
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- Qwen3


QWEN3_CASES = [THINKING_EN, THINKING_ZH_3_TURNS, NOT_THINKING, SOFT_NO_THINK, TOOL_LOOP]


@pytest.mark.parametrize("conv", QWEN3_CASES, ids=["en", "zh-3-turns", "not-thinking", "no_think", "tools"])
@pytest.mark.parametrize("template", ["qwen3", "auto"])
def test_qwen3_every_answer_is_trained_in_the_official_rendering_of_its_context(conv, template, qwen3):
    encoder = Encoder(qwen3, template_for(template, qwen3), cutoff_len=8192)
    samples = encoder.encode_many([conv])
    # The tool loop's call keeps its reasoning in the final rendering (it comes after the last
    # user message): one sample. Elsewhere each answer is rewritten later, so has its own.
    expected_answers = [answers(conv)[-1]] if conv is TOOL_LOOP else answers(conv)
    assert len(samples) == len(expected_answers)
    for sample, index in zip(samples, expected_answers):
        context = upto(conv, index + 1)
        thinking = conv.turns[index].reasoning is not None or conv is SOFT_NO_THINK
        assert sample.input_ids == ids(qwen3, official(qwen3, context, enable_thinking=thinking))
        written = conv.turns[index]
        block = f"<think>\n{written.reasoning or ''}\n</think>\n\n" if thinking else ""
        if conv is TOOL_LOOP:
            call = '<think>\nI should call add.\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 12, "b": 30}}\n</tool_call><|im_end|>'
            assert trained(qwen3, sample) == call + f"{block}{written.content}<|im_end|>"
        else:
            assert trained(qwen3, sample) == f"{block}{written.content}<|im_end|>"


def test_qwen3_earlier_reasoning_is_never_trained_where_inference_does_not_show_it(qwen3):
    last = Encoder(qwen3, get_template("qwen3"), cutoff_len=8192).encode(THINKING_ZH_3_TURNS)
    assert "用户问中国的首都" not in text(qwen3, last)  # dropped from the history, as the official template does
    assert trained(qwen3, last) == "<think>\n东京都市圈约三千七百万人，北京约两千一百万。\n</think>\n\n东京都市圈人口更多。<|im_end|>"


def test_qwen3_thinking_off_puts_the_empty_block_in_the_prompt_and_trains_only_the_answer(qwen3):
    sample = Encoder(qwen3, get_template("qwen3"), cutoff_len=8192).encode(NOT_THINKING)
    assert text(qwen3, sample).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n不客气。<|im_end|>\n")
    assert trained(qwen3, sample) == "不客气。<|im_end|>"
    no_think = Encoder(qwen3, get_template("qwen3"), cutoff_len=8192).encode(SOFT_NO_THINK)
    assert trained(qwen3, no_think) == "<think>\n\n</think>\n\nHi!<|im_end|>"  # /no_think: the model writes the empty block


@pytest.mark.parametrize("thinking", [None, True, False])
@pytest.mark.parametrize("template", ["qwen3", "auto"])
def test_qwen3_generation_prompts_match_the_official_template(thinking, template, qwen3):
    encoder = Encoder(qwen3, template_for(template, qwen3), cutoff_len=8192)
    switch = {} if thinking is None else {"enable_thinking": thinking}
    for conv in QWEN3_CASES:
        for index in answers(conv):
            prompt = upto(conv, index, thinking=thinking)
            assert encoder.prompt_ids(prompt) == ids(qwen3, official(qwen3, prompt, generation=True, **switch))


def test_qwen3_masked_reasoning_stays_in_the_text_and_only_the_answer_is_trained(qwen3):
    encoder = Encoder(qwen3, get_template("qwen3"), cutoff_len=8192, train_reasoning=False)
    sample = encoder.encode(THINKING_EN)
    assert sample.input_ids == ids(qwen3, official(qwen3, THINKING_EN))
    assert trained(qwen3, sample) == "17 * 3 = 51.<|im_end|>"


def test_qwen3_context_only_keeps_one_sample_with_the_last_answer_trained(qwen3):
    encoder = Encoder(qwen3, get_template("qwen3"), cutoff_len=8192, rewritten_answers="context_only")
    (sample,) = encoder.encode_many([THINKING_ZH_3_TURNS])
    assert trained(qwen3, sample) == "<think>\n东京都市圈约三千七百万人，北京约两千一百万。\n</think>\n\n东京都市圈人口更多。<|im_end|>"


# ---------------------------------------------------------------- DeepSeek-R1 and V3


@pytest.mark.parametrize("conv", [THINKING_EN, THINKING_ZH_3_TURNS], ids=["en", "zh-3-turns"])
@pytest.mark.parametrize("template", ["deepseek-r1", "auto"])
def test_deepseek_r1_trains_each_answer_after_the_opened_think_block(conv, template, deepseek_r1):
    encoder = Encoder(deepseek_r1, template_for(template, deepseek_r1), cutoff_len=8192)
    samples = encoder.encode_many([conv])
    assert len(samples) == len(answers(conv))
    for sample, index in zip(samples, answers(conv)):
        prompt = official(deepseek_r1, upto(conv, index), generation=True, enable_thinking=True)
        assert prompt.endswith("<｜Assistant｜><think>\n")
        written = conv.turns[index]
        answer = f"{written.reasoning}\n</think>\n\n{written.content}<｜end▁of▁sentence｜>"
        assert sample.input_ids == ids(deepseek_r1, prompt + answer)
        assert trained(deepseek_r1, sample) == answer
        # What the model wrote earlier shows as the official template shows it: without its reasoning.
        assert prompt.count("</think>") == 0


def test_deepseek_r1_generation_prompt_opens_the_think_block(deepseek_r1):
    encoder = Encoder(deepseek_r1, get_template("deepseek-r1"), cutoff_len=8192)
    prompt = upto(THINKING_ZH_3_TURNS, 5)
    assert encoder.prompt_ids(prompt) == ids(deepseek_r1, official(deepseek_r1, prompt, generation=True, enable_thinking=True))
    assert encoder.opens_reasoning(prompt)
    off = upto(THINKING_ZH_3_TURNS, 5, thinking=False)
    assert "".join(s.text for s in encoder.render(off)).endswith("<｜Assistant｜><think>\n\n</think>\n\n")
    assert not encoder.opens_reasoning(off)


@pytest.mark.parametrize("template", ["deepseek-v3", "auto"])
def test_deepseek_v3_matches_its_template_and_writes_reasoning_only_where_the_data_has_it(template, deepseek_v3):
    encoder = Encoder(deepseek_v3, template_for(template, deepseek_v3), cutoff_len=8192)
    plain = encoder.encode(NOT_THINKING)
    assert plain.input_ids == ids(deepseek_v3, official(deepseek_v3, NOT_THINKING))
    assert trained(deepseek_v3, plain) == "Hello! How can I help?<｜end▁of▁sentence｜>不客气。<｜end▁of▁sentence｜>"
    for sample, index in zip(encoder.encode_many([THINKING_ZH_3_TURNS]), answers(THINKING_ZH_3_TURNS)):
        written = THINKING_ZH_3_TURNS.turns[index]
        answer = f"<think>\n{written.reasoning}\n</think>\n\n{written.content}<｜end▁of▁sentence｜>"
        prompt = official(deepseek_v3, upto(THINKING_ZH_3_TURNS, index), generation=True)
        assert sample.input_ids == ids(deepseek_v3, prompt + answer)
        assert trained(deepseek_v3, sample) == answer


# ---------------------------------------------------------------- the chat template lmtune writes


@pytest.mark.parametrize("name", ["qwen3", "deepseek-r1", "deepseek-v3"])
def test_the_chat_template_lmtune_writes_renders_reasoning_like_lmtune(name):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1}, unk_token="</s>")), bos_token="<s>", eos_token="</s>"
    )
    template = get_template(name)
    cases = [THINKING_EN, THINKING_ZH_3_TURNS, NOT_THINKING, SOFT_NO_THINK] + ([TOOL_LOOP] if template.tools else [])
    for conv in cases:
        for case in [conv, *(upto(conv, i, thinking=t) for i in answers(conv) for t in (None, True, False))]:
            for inline in (False, True):
                rendered = tokenizer.apply_chat_template(messages(case, inline), tools=case.tools, chat_template=to_jinja(template),
                                                     tokenize=False, enable_thinking=case.thinking)
                assert rendered == "".join(s.text for s in template.render(case, "<s>", "</s>"))


# ---------------------------------------------------------------- reasoning in the data


def test_every_layout_of_reasoning_reads_to_the_same_turns():
    want = [(USER, "2+2?", None), (ASSISTANT, "4", "Two and two make four.")]
    records = [
        {"instruction": "2+2?", "output": "<think>\nTwo and two make four.\n</think>\n\n4"},
        {"instruction": "2+2?", "output": "4", "reasoning_content": "Two and two make four."},
        {"input": "2+2?", "content": "4", "reasoning_content": "Two and two make four.", "repo_name": "x"},
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "Two and two make four.\n</think>\n\n4"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning": "Two and two make four."}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."}]},
    ]
    for record in records:
        ignored = []
        conv = to_conversation(record, detect_format(record), ignored=ignored)
        assert [(t.role, t.content, t.reasoning) for t in conv.turns] == want, record
        assert ignored == (["repo_name"] if "repo_name" in record else [])


def test_data_encode_takes_template_auto_as_training_does(tmp_path, qwen3):
    from conftest import lmtune

    folder = tmp_path / "qwen3"
    qwen3.save_pretrained(folder)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": messages(c)}, ensure_ascii=False) + "\n" for c in (THINKING_ZH_3_TURNS, NOT_THINKING)), encoding="utf-8")
    out = tmp_path / "auto.jsonl"
    ran = lmtune("data", "encode", "--data", str(data), "--template", "auto", "--tokenizer", str(folder), "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    named = Encoder(qwen3, get_template("qwen3"), cutoff_len=1024).encode_many([THINKING_ZH_3_TURNS, NOT_THINKING])
    assert rows == [{"input_ids": s.input_ids, "labels": s.labels} for s in named]
