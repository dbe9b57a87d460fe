import pytest

from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.errors import LmtuneError
from lmtune.templates.template import get_template


def render(name, conv):
    template = get_template(name)
    return template.system_text(conv) + "".join(p + (r or "") + ("</s>" if r is not None else "") for p, r in template.pairs(conv))


def test_alpaca_uses_stanfords_two_prompts_exactly():
    without = Conversation([Turn(USER, "Give three tips."), Turn(ASSISTANT, "Eat, sleep, move.")])
    assert render("alpaca", without) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nGive three tips.\n\n### Response:\nEat, sleep, move.</s>"
    )
    with_input = Conversation([Turn(USER, "Translate.", input="你好"), Turn(ASSISTANT, "Hello")])
    assert render("alpaca", with_input) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request."
        "\n\n### Instruction:\nTranslate.\n\n### Input:\n你好\n\n### Response:\nHello</s>"
    )


def test_vicuna_v11_multi_turn():
    conv = Conversation([Turn(USER, "Hi"), Turn(ASSISTANT, "Hello."), Turn(USER, "Bye")])
    assert render("vicuna", conv) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hi ASSISTANT: Hello.</s>USER: Bye ASSISTANT:"
    )


def test_chatml_with_system_and_input_joined_to_the_instruction():
    conv = Conversation([Turn(USER, "Translate.", input="你好"), Turn(ASSISTANT, "Hello")], system="Be brief.")
    assert render("chatml", conv) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTranslate.\n你好<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|></s>"
    )


def test_templates_know_their_stop_strings():
    assert get_template("alpaca").stop == ("### Instruction:",)
    assert get_template("vicuna").stop == ("USER:",)
    assert get_template("chatml").stop == ("<|im_end|>",)


def test_unknown_template():
    with pytest.raises(LmtuneError, match="unknown template 'llama9'; available: alpaca, chatml, vicuna"):
        get_template("llama9")
