import json

import pytest

from lmtune.data.records import ASSISTANT, FUNCTION, OBSERVATION, USER, Conversation, Turn
from lmtune.errors import DataError, LmtuneError
from lmtune.templates.template import builtin_templates, get_template, load_templates, save_template

TWO_TURNS = Conversation([Turn(USER, "Hi"), Turn(ASSISTANT, "Hello."), Turn(USER, "你好"), Turn(ASSISTANT, "你好！")])


def render(name, conv, bos="<s>", eos="</s>"):
    """The rendered text with answers in [[ ]], so a golden string shows the trained spans too; an
    answer whose last token is trained as EOS (Baichuan2) is followed by (EOS)."""
    return "".join(f"[[{s.text}]]" + "(EOS)" * s.eos_label if s.answer else s.text for s in get_template(name).render(conv, bos, eos))


def test_alpaca_uses_stanfords_two_prompts_exactly():
    without = Conversation([Turn(USER, "Give three tips."), Turn(ASSISTANT, "Eat, sleep, move.")])
    assert render("alpaca", without) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nGive three tips.\n\n### Response:\n[[Eat, sleep, move.</s>]]"
    )
    with_input = Conversation([Turn(USER, "Translate.", input="你好"), Turn(ASSISTANT, "Hello")])
    assert render("alpaca", with_input) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request."
        "\n\n### Instruction:\nTranslate.\n\n### Input:\n你好\n\n### Response:\n[[Hello</s>]]"
    )


GOLDEN = {
    "vicuna": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: Hi ASSISTANT:[[ Hello.</s>]]USER: 你好 ASSISTANT:[[ 你好！</s>]]",
    "llama2": "<s>[INST] Hi [/INST][[ Hello. </s>]]<s>[INST] 你好 [/INST][[ 你好！ </s>]]",
    "llama3": "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "[[Hello.<|eot_id|>]]<|start_header_id|>user<|end_header_id|>\n\n你好<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n[[你好！<|eot_id|>]]",
    "llama3.1": "<s><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "[[Hello.<|eot_id|>]]<|start_header_id|>user<|end_header_id|>\n\n你好<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n[[你好！<|eot_id|>]]",
    # ChatML ends every message, the last one too, with <|im_end|> and a newline that is read, not trained.
    "chatml": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[Hello.<|im_end|>]]\n"
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n[[你好！<|im_end|>]]\n",
    "qwen": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "[[Hello.<|im_end|>]]\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n[[你好！<|im_end|>]]\n",
    "qwen2.5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[Hello.<|im_end|>]]\n<|im_start|>user\n你好<|im_end|>\n"
    "<|im_start|>assistant\n[[你好！<|im_end|>]]\n",
    "qwen3": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[Hello.<|im_end|>]]\n<|im_start|>user\n你好<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n[[你好！<|im_end|>]]\n",
    # Without reasoning a training conversation has thinking off: the empty block is read, not written.
    "deepseek-r1": "<s><｜User｜>Hi<｜Assistant｜>[[Hello.</s>]]<｜User｜>你好<｜Assistant｜><think>\n\n</think>\n\n[[你好！</s>]]",
    "deepseek-v3": "<s><｜User｜>Hi<｜Assistant｜>[[Hello.</s>]]<｜User｜>你好<｜Assistant｜>[[你好！</s>]]",
    "belle": "Human: Hi\n\nBelle: [[Hello.</s>]]\n\nHuman: 你好\n\nBelle: [[你好！</s>]]",
    "moss": "<|Human|>: Hi<eoh>\n<|MOSS|>: [[Hello.<eom>]]\n<|Human|>: 你好<eoh>\n<|MOSS|>: [[你好！<eom>]]",
    "linly": "### Instruction:Hi  ### Response:[[Hello.</s>]]\n### Instruction:你好  ### Response:[[你好！</s>]]",
    "nous": "### Instruction:\nHi\n\n### Response:\n[[Hello.</s>]]\n\n### Instruction:\n你好\n\n### Response:\n[[你好！</s>]]",
    "yayi": "<|Human|>:\nHi\n\n<|YaYi|>:[[Hello.</s>]]\n\n<|Human|>:\n你好\n\n<|YaYi|>:[[你好！</s>]]",
    "stablebeluga": "### User:\nHi\n\n### Assistant:\n[[Hello.</s>]]\n\n### User:\n你好\n\n### Assistant:\n[[你好！</s>]]",
    "guanaco": "### Human: Hi\n### Assistant: [[Hello.</s>]]\n### Human: 你好\n### Assistant: [[你好！</s>]]",
    "baichuan": "<reserved_102>Hi<reserved_103>[[Hello.</s>]]<reserved_102>你好<reserved_103>[[你好！</s>]]",
    "baichuan2": "<reserved_106>Hi<reserved_107>[[Hello.<reserved_106>]](EOS)你好<reserved_107>[[你好！</s>]]",
    "firefly": "<s>Hi</s>[[Hello.</s>]]你好</s>[[你好！</s>]]",
    "chatglm3": "[gMASK]sop<|user|>\n Hi<|assistant|>[[\n Hello.<|user|>]]\n 你好<|assistant|>[[\n 你好！</s>]]",
    "glm4": "[gMASK]<sop><|user|>\nHi<|assistant|>[[\nHello.<|user|>]]\n你好<|assistant|>[[\n你好！</s>]]",
    "default": "Human: Hi\nAssistant: [[Hello.</s>]]\nHuman: 你好\nAssistant: [[你好！</s>]]",
    "raw": "Hi[[Hello.</s>]]你好[[你好！</s>]]",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_two_turn_rendering(name):
    assert render(name, TWO_TURNS) == GOLDEN[name]


def test_every_builtin_template_has_a_golden_rendering():
    assert set(builtin_templates()) == set(GOLDEN) | {"alpaca"}


def test_llama2_fuses_the_system_prompt_into_the_first_instruction():
    conv = Conversation([Turn(USER, "Hi"), Turn(ASSISTANT, "Hello.")], system="Be brief.")
    assert render("llama2", conv) == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST][[ Hello. </s>]]"


def test_tool_turns_use_the_observation_and_function_formats():
    conv = Conversation([Turn(USER, "天气？"), Turn(FUNCTION, '{"name": "weather"}'), Turn(OBSERVATION, "晴"), Turn(ASSISTANT, "晴天。")])
    assert render("chatml", conv) == (
        '<|im_start|>user\n天气？<|im_end|>\n<|im_start|>assistant\n[[{"name": "weather"}<|im_end|>]]\n'
        "<|im_start|>tool\n晴<|im_end|>\n<|im_start|>assistant\n[[晴天。<|im_end|>]]\n"
    )


WEATHER = {"name": "get_weather", "description": "天气", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "day": {"type": "string"}}}}
CALL = json.dumps({"name": "get_weather", "arguments": {"city": "北京", "day": "今天"}}, ensure_ascii=False)
WITH_TOOLS = Conversation([Turn(USER, "天气？"), Turn(FUNCTION, CALL), Turn(OBSERVATION, "晴"), Turn(ASSISTANT, "晴天。")], tools=[WEATHER])


def test_moss_shows_tools_as_its_plugin_list_and_calls_them_as_commands():
    assert render("moss", WITH_TOOLS) == (
        "Capabilities and tools that MOSS can possess.\n- Inner thoughts: enabled.\n- get_weather: enabled. API: get_weather(city, day)\n"
        '<|Human|>: 天气？<eoh>\n<|MOSS|>: [[<|Inner Thoughts|>: None<eot>\n<|Commands|>: get_weather("北京", "今天")<eoc>]]'
        "\n<|Results|>:\n晴<eor>\n<|MOSS|>: [[晴天。<eom>]]"
    )
    assert get_template("moss").end_tokens() == ("<eom>", "<eoc>")  # a command ends the turn too: the tool runs


def test_bare_and_wrapped_tool_definitions_render_alike():
    wrapped = Conversation(WITH_TOOLS.turns, tools=[{"type": "function", "function": WEATHER}])
    for name in ("qwen2.5", "llama3.1", "glm4", "moss"):
        assert render(name, WITH_TOOLS) == render(name, wrapped)


def test_a_template_without_tools_refuses_a_conversation_with_tools():
    conv = Conversation(WITH_TOOLS.turns, tools=[WEATHER], source="data.jsonl:7")
    with pytest.raises(LmtuneError, match=r"data.jsonl:7: .*template 'qwen' cannot render tools; templates that can: glm4, llama3.1, moss, qwen2.5, qwen3$"):
        get_template("qwen").render(conv)


def test_tool_call_problems_are_reported_with_the_record():
    bad = Conversation([Turn(USER, "天气？"), Turn(FUNCTION, "get_weather(北京)"), Turn(OBSERVATION, "晴"), Turn(ASSISTANT, "晴。")], source="f.json:3")
    with pytest.raises(DataError, match=r"f.json:3: a function turn must hold the call as JSON"):
        get_template("qwen2.5").render(bad)
    parallel = Conversation([Turn(USER, "天气？"), Turn(FUNCTION, f"[{CALL}, {CALL}]"), Turn(OBSERVATION, "晴"), Turn(ASSISTANT, "晴。")], source="f.json:4")
    with pytest.raises(DataError, match=r"f.json:4: template 'llama3.1' takes one function call per turn"):
        get_template("llama3.1").render(parallel)
    assert render("qwen2.5", parallel).count("<tool_call>") == 2
    with pytest.raises(DataError, match=r"f.json:5: 'tools' must be a list of function schemas"):
        get_template("qwen2.5").render(Conversation(WITH_TOOLS.turns, tools=[{"description": "no name"}], source="f.json:5"))


def test_raw_text_gets_no_system_prompt():
    assert render("alpaca", Conversation([Turn(ASSISTANT, "plain text")])) == "[[plain text</s>]]"


def test_templates_know_their_stop_strings_and_end_tokens():
    assert get_template("alpaca").stop == ("### Instruction:",)
    assert get_template("chatml").end_token() == "<|im_end|>" and get_template("llama3").end_token() == "<|eot_id|>"
    assert get_template("vicuna").end_token() == "{eos}"
    # ChatGLM ends an answer by writing the next turn's role token, and the last one with EOS.
    assert get_template("chatglm3").end_tokens() == ("{eos}", "<|user|>", "<|observation|>")
    assert get_template("baichuan2").end_tokens() == ("{eos}",)


@pytest.mark.parametrize("name", ["llama3.1", "qwen3", "glm4", "baichuan2", "moss"])
def test_a_saved_template_renders_as_the_original(name, tmp_path):
    saved = load_templates(save_template(get_template(name), tmp_path))[name]
    assert saved == get_template(name)


def test_users_add_templates_in_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text('mybot:\n  user: "Q: {content}\\nA: "\n  assistant: "{content}{eos}"\n  stop: ["Q:"]\n', encoding="utf-8")
    templates = load_templates(path)
    assert "alpaca" in templates and templates["mybot"].stop == ("Q:",)
    conv = Conversation([Turn(USER, "1+1?"), Turn(ASSISTANT, "2")])
    assert "".join(s.text for s in templates["mybot"].render(conv, "", "</s>")) == "Q: 1+1?\nA: 2</s>"
    path.write_text('bad:\n  user: "{content}"\n  assistant: "{content}"\n', encoding="utf-8")
    with pytest.raises(LmtuneError, match="the assistant format must end the answer with {eos} or one of its tokens"):
        load_templates(path)
    path.write_text('bad:\n  user: "Q: {content}"\n  assistant: "{content}"\n  answer_end: next_turn\n', encoding="utf-8")
    with pytest.raises(LmtuneError, match="the user and observation formats must open with one of its tokens"):
        load_templates(path)


def test_unknown_template():
    with pytest.raises(LmtuneError, match="unknown template 'llama9'; available: alpaca, baichuan"):
        get_template("llama9")


def test_tools_given_in_the_first_user_message_survive_truncation_to_a_tool_result():
    # Truncation drops the oldest exchanges; what is left may open with a tool result.
    conv = Conversation([Turn(OBSERVATION, "晴"), Turn(ASSISTANT, "晴天。"), Turn(USER, "明天呢？"), Turn(ASSISTANT, "不知道。")], tools=[WEATHER])
    text = render("llama3.1", conv)
    assert text.index('"晴"') < text.index("Given the following functions") < text.index("明天呢？")
