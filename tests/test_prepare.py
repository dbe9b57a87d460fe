import json

from lmtune.config import DataConfig
from lmtune.data.encode import TRAIN_ON, Encoder
from lmtune.data.prepare import prepare
from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.templates.template import get_template


def test_batched_encoding_equals_one_at_a_time(tokenizer):
    convs = [
        Conversation([Turn(USER, "Name the capital of France."), Turn(ASSISTANT, "Paris.")]),
        Conversation([Turn(USER, "把下面的句子翻译成英文。", input="我喜欢喝茶。"), Turn(ASSISTANT, "I like drinking tea.")], system="Be brief."),
        Conversation([Turn(USER, "What is two plus two?"), Turn(ASSISTANT, "four"), Turn(USER, "中国的首都是哪里？"), Turn(ASSISTANT, "北京。")]),
        Conversation([Turn(USER, "What is two plus two? " * 8), Turn(ASSISTANT, "Two plus two is four. " * 8)]),  # truncated
        Conversation([Turn(ASSISTANT, "plain text for pre-training")]),
    ]
    # The cutoff just fits the second conversation (the test tokenizer's merges follow the registry's text).
    cutoff_len = len(Encoder(tokenizer, get_template("alpaca"), cutoff_len=10**6).encode(convs[1]).input_ids)
    encoder = Encoder(tokenizer, get_template("alpaca"), cutoff_len=cutoff_len)
    batched = encoder.encode_many(convs)
    assert batched == [encoder.encode(c) for c in convs]
    assert [s.truncated for s in batched] == [False, False, True, True, False]
    tokenized = encoder._tokenize([encoder.render(c) for c in convs])
    for one in tokenized:
        one.spans = None  # labels from the owner array instead of the answer spans: the same samples
    assert encoder._samples(convs, tokenized) == batched
    for train_on in TRAIN_ON:  # in chunks of 2, each tokenized in the second thread while the one before is labelled
        encoder = Encoder(tokenizer, get_template("alpaca"), cutoff_len=cutoff_len, train_on=train_on)
        assert list(encoder.encode_stream(convs, chunk=2)) == encoder.encode_many(convs)


def test_second_run_reads_the_cache_and_a_changed_file_misses_it(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n", encoding="utf-8")
    data = DataConfig(path=[str(path)], cache_dir=str(tmp_path / "cache"))
    encoder = Encoder(tokenizer, get_template("alpaca"), 64)
    first = prepare(data, encoder, seed=1)
    second = prepare(data, encoder, seed=1)
    assert (first.from_cache, second.from_cache) == (False, True)
    assert second.train == first.train and second.report.summary() == first.report.summary()
    path.write_text(json.dumps({"instruction": "a", "output": "c"}) + "\n", encoding="utf-8")
    third = prepare(data, encoder, seed=1)
    assert not third.from_cache and third.train != first.train
    other_template = prepare(data, Encoder(tokenizer, get_template("chatml"), 64), seed=1)
    assert not other_template.from_cache
    assert not prepare(data.model_copy(update={"cache": False}), encoder, seed=1).from_cache


def test_template_auto_is_cached_by_the_tokenizers_chat_template(tmp_path, tokenizer):
    from lmtune.templates.hf import template_for

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n", encoding="utf-8")
    data = DataConfig(path=[str(path)], cache_dir=str(tmp_path / "cache"), template="auto")
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
    try:
        first = prepare(data, Encoder(tokenizer, template_for("auto", tokenizer), 64), seed=1)
        assert prepare(data, Encoder(tokenizer, template_for("auto", tokenizer), 64), seed=1).from_cache
        tokenizer.chat_template = tokenizer.chat_template.replace(": ", ":: ")
        assert not prepare(data, Encoder(tokenizer, template_for("auto", tokenizer), 64), seed=1).from_cache
        assert tokenizer.decode(first.train[0].input_ids) == "<s>user: a</s>assistant: b</s>"
    finally:
        tokenizer.chat_template = None


def test_records_the_cache_holds_are_not_read_again_before_training(tmp_path, tokenizer, llama_dir):
    from lmtune.data.fingerprints import read_before
    from lmtune.train.launch import checked_run

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n", encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {llama_dir}}}\ndata: {{path: {path}, cache_dir: {tmp_path / 'cache'}}}\n"
                      f"train: {{output_dir: {tmp_path / 'out'}, seed: 1}}\n", encoding="utf-8")
    settings, read = checked_run(config, [])
    assert read is not None and not read_before(settings.data, 1)  # nothing cached: every record read and checked
    prepare(settings.data, Encoder(tokenizer, get_template("alpaca"), 64), seed=1, read=read)
    assert read_before(settings.data, 1) and checked_run(config, [])[1] is None
    assert checked_run(config, ["train.seed=2"])[1] is not None  # another split of the records: read again
    path.write_text(json.dumps({"instruction": "a", "output": "c"}) + "\n", encoding="utf-8")
    assert checked_run(config, [])[1] is not None  # the file changed: read and checked again
