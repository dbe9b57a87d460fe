import pytest

from lmtune.data.encode import IGNORE_INDEX, Collator, Encoder
from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.errors import DataError
from lmtune.templates.template import get_template

SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def exchange(q, a):
    return [Turn(USER, q), Turn(ASSISTANT, a)]


def test_single_turn_labels_cover_exactly_the_answer_and_eos(tokenizer):
    encoder = Encoder(tokenizer, get_template("alpaca"), cutoff_len=1024)
    sample = encoder.encode(Conversation(exchange("Name the capital of France.", "Paris is the capital of France.")))
    prompt = (
        [tokenizer.bos_token_id]
        + ids(tokenizer, SYSTEM)
        + ids(tokenizer, "### Instruction:\nName the capital of France.\n\n### Response:\n")
    )
    answer = ids(tokenizer, "Paris is the capital of France.") + [tokenizer.eos_token_id]
    assert sample.input_ids == prompt + answer
    assert sample.labels == [IGNORE_INDEX] * len(prompt) + answer
    trained = [t for t in sample.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "Paris is the capital of France.</s>"


def test_multi_turn_trains_every_answer_and_masks_every_prompt(tokenizer):
    encoder = Encoder(tokenizer, get_template("alpaca"), cutoff_len=1024)
    conv = Conversation(exchange("What is two plus two?", "Two plus two is four.") + exchange("中国的首都是哪里？", "中国的首都是北京。"))
    sample = encoder.encode(conv)
    eos = tokenizer.eos_token_id
    p1 = [tokenizer.bos_token_id] + ids(tokenizer, SYSTEM) + ids(tokenizer, "### Instruction:\nWhat is two plus two?\n\n### Response:\n")
    a1 = ids(tokenizer, "Two plus two is four.") + [eos]
    p2 = ids(tokenizer, "\n\n### Instruction:\n中国的首都是哪里？\n\n### Response:\n")
    a2 = ids(tokenizer, "中国的首都是北京。") + [eos]
    assert sample.input_ids == p1 + a1 + p2 + a2
    assert sample.labels == [IGNORE_INDEX] * len(p1) + a1 + [IGNORE_INDEX] * len(p2) + a2


def test_generation_prompt_is_the_training_prefix(tokenizer):
    encoder = Encoder(tokenizer, get_template("chatml"), cutoff_len=1024)
    conv = Conversation(exchange("What is two plus two?", "four") + exchange("把下面的句子翻译成英文。", "I like tea."), system="Be brief.")
    sample = encoder.encode(conv)
    prompt, reference = conv.without_last_answer()
    prompt_ids = encoder.prompt_ids(prompt)
    assert sample.input_ids[: len(prompt_ids)] == prompt_ids
    assert sample.input_ids[len(prompt_ids) :] == ids(tokenizer, "I like tea.<|im_end|>") + [tokenizer.eos_token_id]
    assert reference == "I like tea."


def test_long_answer_is_cut_but_keeps_its_eos(tokenizer):
    encoder = Encoder(tokenizer, get_template("alpaca"), cutoff_len=40)
    sample = encoder.encode(Conversation(exchange("Name the capital of France.", "Paris is the capital of France. " * 20)))
    assert len(sample.input_ids) == 40 and sample.truncated
    assert sample.input_ids[-1] == sample.labels[-1] == tokenizer.eos_token_id
    prompt_len = sample.labels.count(IGNORE_INDEX)
    assert prompt_len == 20  # the prompt gives way first, down to half the budget
    assert sample.input_ids[0] == tokenizer.bos_token_id
    header = ids(tokenizer, "### Response:\n")
    assert sample.input_ids[prompt_len - len(header) : prompt_len] == header  # the model still sees where to answer


def test_long_prompt_is_cut_in_the_middle_and_the_answer_kept_whole(tokenizer):
    encoder = Encoder(tokenizer, get_template("alpaca"), cutoff_len=60)
    answer = ids(tokenizer, "Paris.") + [tokenizer.eos_token_id]
    sample = encoder.encode(Conversation(exchange("Name the capital of France. " * 30, "Paris.")))
    assert len(sample.input_ids) == 60
    assert sample.labels[-len(answer) :] == answer and sample.labels.count(IGNORE_INDEX) == 60 - len(answer)
    assert sample.input_ids[0] == tokenizer.bos_token_id


def test_oldest_exchanges_are_dropped_first_and_the_system_prompt_kept(tokenizer):
    encoder = Encoder(tokenizer, get_template("chatml"), cutoff_len=60)
    long_turns = exchange("What is two plus two? " * 10, "four " * 10) + exchange("中国的首都是哪里？", "北京。")
    sample = encoder.encode(Conversation(long_turns, system="Be brief."))
    kept = Conversation(exchange("中国的首都是哪里？", "北京。"), system="Be brief.")
    assert sample.input_ids == encoder.encode(kept).input_ids and sample.truncated


def test_eos_label_survives_collation_when_pad_is_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the tiny tokenizer has no pad, like most base models
    encoder = Encoder(tokenizer, get_template("alpaca"), cutoff_len=1024)
    short = encoder.encode(Conversation(exchange("Hi", "Yes.")))
    long = encoder.encode(Conversation(exchange("Name the capital of France.", "Paris is the capital of France.")))
    batch = Collator(tokenizer.pad_token_id)([vars(short), vars(long)])
    n = len(short.input_ids)
    assert batch["labels"][0, n - 1].item() == tokenizer.eos_token_id
    assert batch["labels"][0, n:].tolist() == [IGNORE_INDEX] * (batch["labels"].shape[1] - n)
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["labels"].shape[1] - n)
    assert batch["labels"][1].tolist() == long.labels


def test_a_user_turn_without_answer_in_training_data_is_an_error(tokenizer):
    encoder = Encoder(tokenizer, get_template("alpaca"), 64)
    conv = Conversation([Turn(USER, "a"), Turn(USER, "b"), Turn(ASSISTANT, "c")], source="f.json:3")
    with pytest.raises(DataError, match="f.json:3: a user turn has no assistant answer after it"):
        encoder.encode(conv)
