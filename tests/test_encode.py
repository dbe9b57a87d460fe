import random

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
    prompt_text = SYSTEM + "### Instruction:\nName the capital of France.\n\n### Response:\n"
    whole = ids(tokenizer, prompt_text + "Paris is the capital of France.</s>")  # one piece, as the model sees it
    prompt = [tokenizer.bos_token_id] + ids(tokenizer, prompt_text)
    assert sample.input_ids == [tokenizer.bos_token_id] + whole
    assert sample.input_ids[: len(prompt)] == prompt  # the answer starts on a token boundary
    assert sample.labels == [IGNORE_INDEX] * len(prompt) + sample.input_ids[len(prompt) :]
    trained = [t for t in sample.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "Paris is the capital of France.</s>"
    assert trained[-1] == tokenizer.eos_token_id


def test_multi_turn_trains_every_answer_and_masks_every_prompt(tokenizer):
    encoder = Encoder(tokenizer, get_template("alpaca"), cutoff_len=1024)
    conv = Conversation(exchange("What is two plus two?", "Two plus two is four.") + exchange("中国的首都是哪里？", "中国的首都是北京。"))
    sample = encoder.encode(conv)
    p1 = SYSTEM + "### Instruction:\nWhat is two plus two?\n\n### Response:\n"
    a1 = "Two plus two is four.</s>"
    p2 = "\n\n### Instruction:\n中国的首都是哪里？\n\n### Response:\n"
    a2 = "中国的首都是北京。</s>"
    assert sample.input_ids == [tokenizer.bos_token_id] + ids(tokenizer, p1 + a1 + p2 + a2)
    n1, n2, n3 = (1 + len(ids(tokenizer, t)) for t in (p1, p1 + a1, p1 + a1 + p2))
    ignore = [IGNORE_INDEX]
    assert sample.labels == ignore * n1 + sample.input_ids[n1:n2] + ignore * (n3 - n2) + sample.input_ids[n3:]
    assert tokenizer.decode(sample.input_ids[n1:n2]) == a1 and tokenizer.decode(sample.input_ids[n3:]) == a2


def test_train_on_last_assistant_and_all(tokenizer):
    conv = Conversation(exchange("What is two plus two?", "four") + exchange("中国的首都是哪里？", "北京。"))
    every = Encoder(tokenizer, get_template("alpaca"), 1024).encode(conv)
    last = Encoder(tokenizer, get_template("alpaca"), 1024, train_on="last_assistant").encode(conv)
    everything = Encoder(tokenizer, get_template("alpaca"), 1024, train_on="all").encode(conv)
    assert every.input_ids == last.input_ids == everything.input_ids
    assert tokenizer.decode([t for t in every.labels if t != IGNORE_INDEX]) == "four</s>北京。</s>"
    assert tokenizer.decode([t for t in last.labels if t != IGNORE_INDEX]) == "北京。</s>"
    assert everything.labels == [IGNORE_INDEX] + everything.input_ids[1:]  # all but BOS, which is never predicted


def test_generation_prompt_is_the_training_prefix(tokenizer):
    encoder = Encoder(tokenizer, get_template("chatml"), cutoff_len=1024)
    conv = Conversation(exchange("What is two plus two?", "four") + exchange("把下面的句子翻译成英文。", "I like tea."), system="Be brief.")
    sample = encoder.encode(conv)
    prompt, reference = conv.without_last_answer()
    prompt_ids = encoder.prompt_ids(prompt)
    assert sample.input_ids[: len(prompt_ids)] == prompt_ids
    # ChatML closes every message with a newline after <|im_end|>: read, not trained.
    assert tokenizer.decode(sample.input_ids[len(prompt_ids) :]) == "I like tea.<|im_end|>\n"
    assert sample.labels[len(prompt_ids) : -1] == sample.input_ids[len(prompt_ids) : -1] and sample.labels[-1] == -100
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


def test_a_cut_chatml_answer_ends_with_its_end_token_not_the_newline_read_after_it(tokenizer):
    encoder = Encoder(tokenizer, get_template("chatml"), cutoff_len=40)
    sample = encoder.encode(Conversation(exchange("Name the capital of France.", "Paris is the capital of France. " * 20)))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(sample.input_ids) == 40 and sample.input_ids[-1] == sample.labels[-1] == end


def test_long_prompt_is_cut_in_the_middle_and_the_answer_kept_whole(tokenizer):
    encoder = Encoder(tokenizer, get_template("alpaca"), cutoff_len=60)
    answer = ids(tokenizer, "Paris.</s>")
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


def test_a_conversation_without_a_final_answer_is_an_error(tokenizer):
    encoder = Encoder(tokenizer, get_template("alpaca"), 64)
    conv = Conversation([Turn(USER, "a"), Turn(ASSISTANT, "b"), Turn(USER, "c")], source="f.json:3")
    with pytest.raises(DataError, match="f.json:3: the conversation must end with an answer to train on"):
        encoder.encode(conv)


def test_template_tokens_must_be_single_tokens(tokenizer):
    from lmtune.errors import ModelError

    with pytest.raises(ModelError, match=r"template 'llama3' needs the special token '<\|start_header_id\|>'"):
        Encoder(tokenizer, get_template("llama3"), 64)


@pytest.mark.parametrize("turns", [1, 2, 5])
@pytest.mark.parametrize("train_on", ["all_assistant", "last_assistant", "all"])
def test_mask_positions_for_every_train_on_mode(tokenizer, turns, train_on):
    conv = Conversation([t for i in range(turns) for t in exchange(f"question {i}?", f"answer {i}.")], system="Be brief.")
    encoder = Encoder(tokenizer, get_template("chatml"), 1024, train_on=train_on)
    sample = encoder.encode(conv)
    answers = [f"answer {i}.<|im_end|>" for i in range(turns)]
    # Where each answer starts and ends, from the generation prompts of growing prefixes.
    spans = []
    for i in range(turns):
        start = len(encoder.prompt_ids(Conversation(conv.turns[: 2 * i + 1], system="Be brief.")))
        spans.append((start, start + len(ids(tokenizer, answers[i]))))
    expected = [IGNORE_INDEX] * len(sample.input_ids)
    everything = [(len(encoder.bos), len(sample.input_ids))]  # all but BOS, which nothing predicts
    chosen = {"all_assistant": spans, "last_assistant": spans[-1:], "all": everything}[train_on]
    for a, b in chosen:
        expected[a:b] = sample.input_ids[a:b]
    assert sample.labels == expected
    for a, b in spans:
        assert tokenizer.decode(sample.input_ids[a:b]) in answers


def test_labels_from_segment_bounds_match_labels_from_every_offset(tokenizer):
    # _owners_at_bounds looks tokens up at the segment ends only; it must agree with _owners,
    # which reads every token's offsets, also where byte-level BPE splits one character (an
    # emoji, a rare Chinese character) over several tokens or a token straddles a boundary.
    from lmtune.data.encode import _owners, _owners_at_bounds
    from lmtune.templates.template import Segment

    rng = random.Random(0)
    pieces = ["", " ", "\n", "a", "the", " answer", "ing", "é", "中", "国", "😀", "👩‍👧", "。", "<|im_end|>", "\t "]
    cases = [
        [Segment("".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))), rng.random() < 0.5, rng.random() < 0.2)
         for _ in range(rng.randint(1, 5))]
        for _ in range(3000)
    ]
    backend = tokenizer.backend_tokenizer
    looked_up = 0
    for segments, encoding in zip(cases, backend.encode_batch(["".join(s.text for s in c) for c in cases], add_special_tokens=False)):
        fast, exact = _owners_at_bounds(encoding, segments), _owners(encoding.ids, encoding.offsets, segments)
        if fast is None:  # an empty answer or EOS segment: the caller falls back to _owners
            assert any(not s.text and (s.answer or s.eos_label) for s in segments)
            continue
        looked_up += 1
        assert (fast.ids, fast.owner.tolist(), fast.eos_at) == (exact.ids, exact.owner.tolist(), exact.eos_at), segments
    assert looked_up > 1000
