import torch

from lmtune.infer.engine import _StopStrings, TextStream
from lmtune.templates.template import cut_at_stop


def stream_pieces(tokenizer, ids, stops=()):
    pieces = []
    stream = TextStream(tokenizer, stops, pieces.append)
    stream.put(torch.tensor([[tokenizer.bos_token_id]]))  # generate() hands over the prompt first
    for token in ids:
        stream.put(torch.tensor([token]))
        yield list(pieces)
    stream.end()
    yield pieces


def test_streaming_never_emits_half_a_chinese_character(tokenizer):
    text = "龘龘 ok 中国"  # 龘 is not in the tokenizer's merges: three byte-level tokens
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(tokenizer.encode("龘", add_special_tokens=False)) == 3
    snapshots = list(stream_pieces(tokenizer, ids))
    for pieces in snapshots:
        assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(snapshots[-1]) == text
    assert snapshots[0] == [] and snapshots[1] == [] and snapshots[2] == ["龘"]


def test_a_character_cut_off_by_max_new_tokens_is_not_shown(tokenizer):
    ids = tokenizer.encode("ok 龘", add_special_tokens=False)[:-1]  # the last byte never comes
    assert "".join(list(stream_pieces(tokenizer, ids))[-1]) == "ok "


def test_streaming_hides_a_stop_string_split_across_tokens(tokenizer):
    ids = tokenizer.encode("Paris.\n\n### Instruction:\nmore", add_special_tokens=False)
    snapshots = list(stream_pieces(tokenizer, ids, stops=("### Instruction:",)))
    for pieces in snapshots:
        assert "#" not in "".join(pieces)
    assert "".join(snapshots[-1]) == "Paris.\n\n"


def test_held_back_prefix_is_released_when_it_is_not_a_stop(tokenizer):
    ids = tokenizer.encode("a ## b", add_special_tokens=False)
    assert "".join(list(stream_pieces(tokenizer, ids, stops=("### Instruction:",)))[-1]) == "a ## b"


def test_stop_criterion_is_per_row_and_spans_tokens(tokenizer):
    prompt = tokenizer.encode("### Response:\n", add_special_tokens=False)
    rows = ["Paris.### Instruction:", "Paris is the capital"]
    generated = [tokenizer.encode(r, add_special_tokens=False) for r in rows]
    width = max(map(len, generated))
    pad = tokenizer.pad_token_id
    batch = torch.tensor([prompt + g + [pad] * (width - len(g)) for g in generated])
    done = _StopStrings(tokenizer, ("### Instruction:",), len(prompt))(batch, None)
    assert done.tolist() == [True, False]


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("a USER: b</s>c", ("</s>", "USER:")) == ("a ", True)
    assert cut_at_stop("abc", ("USER:",)) == ("abc", False)
