import pytest

from lmtune.data.records import ASSISTANT, FUNCTION, OBSERVATION, USER, Conversation, Turn
from lmtune.errors import LmtuneError
from lmtune.templates.template import builtin_templates, get_template, load_templates

TWO_TURNS = Conversation([Turn(USER, "Hi"), Turn(ASSISTANT, "Hello."), Turn(USER, "你好"), Turn(ASSISTANT, "你好！")])


def render(name, conv, bos="<s>", eos="</s>"):
    """The rendered text with answers in [[ ]], so a golden string shows the trained spans too."""
    return "".join(f"[[{s.text}]]" if s.answer else s.text for s in get_template(name).render(conv, bos, eos))


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
    "chatml": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[Hello.<|im_end|>]]\n"
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n[[你好！<|im_end|>]]",
    "qwen": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "[[Hello.<|im_end|>]]\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n[[你好！<|im_end|>]]",
    "belle": "Human: Hi\n\nBelle: [[Hello.</s>]]\n\nHuman: 你好\n\nBelle: [[你好！</s>]]",
    "moss": "<|Human|>: Hi<eoh>\n<|MOSS|>: [[Hello.<eom>]]\n<|Human|>: 你好<eoh>\n<|MOSS|>: [[你好！<eom>]]",
    "linly": "### Instruction:Hi  ### Response:[[Hello.</s>]]\n### Instruction:你好  ### Response:[[你好！</s>]]",
    "nous": "### Instruction:\nHi\n\n### Response:\n[[Hello.</s>]]\n\n### Instruction:\n你好\n\n### Response:\n[[你好！</s>]]",
    "yayi": "<|Human|>:\nHi\n\n<|YaYi|>:[[Hello.</s>]]\n\n<|Human|>:\n你好\n\n<|YaYi|>:[[你好！</s>]]",
    "stablebeluga": "### User:\nHi\n\n### Assistant:\n[[Hello.</s>]]\n\n### User:\n你好\n\n### Assistant:\n[[你好！</s>]]",
    "guanaco": "### Human: Hi\n### Assistant: [[Hello.</s>]]\n### Human: 你好\n### Assistant: [[你好！</s>]]",
    "baichuan": "<reserved_102>Hi<reserved_103>[[Hello.</s>]]<reserved_102>你好<reserved_103>[[你好！</s>]]",
    "baichuan2": "<reserved_106>Hi<reserved_107>[[Hello.</s>]]<reserved_106>你好<reserved_107>[[你好！</s>]]",
    "firefly": "<s>Hi</s>[[Hello.</s>]]你好</s>[[你好！</s>]]",
    "chatglm3": "[gMASK]sop<|user|>\n Hi<|assistant|>[[\n Hello.</s>]]<|user|>\n 你好<|assistant|>[[\n 你好！</s>]]",
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
    assert render("moss", conv) == (
        "<|Human|>: 天气？<eoh>\n<|MOSS|>: [[<|Inner Thoughts|>: None<eot>\n<|Commands|>: {\"name\": \"weather\"}<eoc>]]"
        "\n<|Results|>:\n晴<eor>\n<|MOSS|>: [[晴天。<eom>]]"
    )


def test_raw_text_gets_no_system_prompt():
    assert render("alpaca", Conversation([Turn(ASSISTANT, "plain text")])) == "[[plain text</s>]]"


def test_templates_know_their_stop_strings_and_end_tokens():
    assert get_template("alpaca").stop == ("### Instruction:",)
    assert get_template("chatml").end_token() == "<|im_end|>" and get_template("llama3").end_token() == "<|eot_id|>"
    assert get_template("vicuna").end_token() == "{eos}"


def test_users_add_templates_in_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text('mybot:\n  user: "Q: {content}\\nA: "\n  assistant: "{content}{eos}"\n  stop: ["Q:"]\n', encoding="utf-8")
    templates = load_templates(path)
    assert "alpaca" in templates and templates["mybot"].stop == ("Q:",)
    conv = Conversation([Turn(USER, "1+1?"), Turn(ASSISTANT, "2")])
    assert "".join(s.text for s in templates["mybot"].render(conv, "", "</s>")) == "Q: 1+1?\nA: 2</s>"
    path.write_text('bad:\n  user: "{content}"\n  assistant: "{content}"\n', encoding="utf-8")
    with pytest.raises(LmtuneError, match="the assistant format must end with {eos} or one of its tokens"):
        load_templates(path)


def test_unknown_template():
    with pytest.raises(LmtuneError, match="unknown template 'llama9'; available: alpaca, baichuan"):
        get_template("llama9")
