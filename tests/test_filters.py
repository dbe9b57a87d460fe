import pytest

from lmtune.config import FiltersConfig
from lmtune.data.filters import (
    apply_filters,
    conversation_text,
    dedup,
    detect_language,
    language_filter,
    length_filter,
    normalise,
    rewrite_identity,
)
from lmtune.data.records import ASSISTANT, FUNCTION, USER, Conversation, Turn
from lmtune.errors import ConfigError

ZH = "今天天气很好，我们去公园散步吧。", "好主意，我们下午三点出发。"
EN = "How do I reset my password?", "Open the settings page and choose 'Forgot password'."
MIXED_ZH = "我想用Python写一个网站服务器，应该怎么做？", "可以先学习Flask框架，再部署到云服务器上。"
MIXED_EN = "What does 你好 mean in English?", "It means hello; people say it when they meet."
FR = "Bonjour, comment allez-vous aujourd'hui ?", "Très bien, merci beaucoup."
LONG = (
    "The committee reviewed every proposal submitted before the deadline and decided that the new library "
    "should open in the spring, after the renovation of the old railway station is finished and inspected."
)


def conv(user: str, answer: str, source: str, system: str | None = None) -> Conversation:
    return Conversation([Turn(USER, user), Turn(ASSISTANT, answer)], system=system, source=source)


def sources(convs) -> list[str]:
    return [c.source for c in convs]


def reasons(dropped) -> list[tuple[str, str, str]]:
    return [(d.conv.source, d.filter, d.reason) for d in dropped]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lmtune.model.load import load_tokenizer
    from lmtune.tiny import train_tokenizer

    path = tmp_path_factory.mktemp("tok")
    train_tokenizer([*ZH, *EN, LONG] * 3, path, vocab_size=300)
    return load_tokenizer(path)


def test_conversation_text_joins_system_turns_and_inputs():
    c = Conversation([Turn(USER, "Translate.", input="你好"), Turn(ASSISTANT, "Hello")], system="Be brief.")
    assert conversation_text(c) == "Be brief.\nTranslate.\n你好\nHello"


def test_length_in_chars_drops_both_ends_with_reasons():
    convs = [conv("hi", "yo", "f.json:1"), conv("a" * 10, "b" * 10, "f.json:2"), conv("a" * 40, "b", "f.json:3")]
    kept, dropped = length_filter(convs, min_length=10, max_length=30)
    assert sources(kept) == ["f.json:2"]
    assert reasons(dropped) == [
        ("f.json:1", "length", "too short: 5 chars < min_length 10"),
        ("f.json:3", "length", "too long: 42 chars > max_length 30"),
    ]


def test_length_in_tokens_counts_without_special_tokens(tokenizer):
    convs = [conv(*EN, "f.json:1"), conv(LONG, LONG, "f.json:2")]
    counts = [len(tokenizer(conversation_text(c), add_special_tokens=False).input_ids) for c in convs]
    assert counts[0] < counts[1]
    kept, dropped = length_filter(convs, max_length=counts[0], unit="tokens", tokenizer=tokenizer)
    assert sources(kept) == ["f.json:1"]
    assert reasons(dropped) == [("f.json:2", "length", f"too long: {counts[1]} tokens > max_length {counts[0]}")]


def test_length_in_tokens_without_a_tokenizer_says_what_to_do():
    with pytest.raises(ConfigError, match="length_unit is 'tokens' but no tokenizer was given"):
        apply_filters([conv(*EN, "f.json:1")], FiltersConfig(min_length=3, length_unit="tokens"))


def test_detect_language_decides_mixed_text_by_the_larger_share_of_letters():
    assert detect_language("\n".join(ZH)) == "zh"
    assert detect_language("\n".join(EN)) == "en"
    assert detect_language("\n".join(MIXED_ZH)) == "zh"  # Latin "Python", "Flask" in mostly Han text
    assert detect_language("\n".join(MIXED_EN)) == "en"  # "你好" in mostly English text
    assert detect_language("\n".join(FR)) == "fr"
    assert detect_language("今日はいい天気ですね。散歩に行きましょう。") == "ja"  # kanji with kana is not Chinese
    assert detect_language("12345 !!!") == "unknown"


@pytest.mark.parametrize(
    "languages, keep",
    [(["zh"], ["zh", "mixed-zh"]), (["en"], ["en", "mixed-en"]), (["zh", "en"], ["zh", "en", "mixed-zh", "mixed-en"])],
)
def test_language_filter_keeps_the_chosen_languages(languages, keep):
    convs = [conv(*ZH, "zh"), conv(*EN, "en"), conv(*MIXED_ZH, "mixed-zh"), conv(*MIXED_EN, "mixed-en"), conv(*FR, "fr")]
    kept, dropped = language_filter(convs, languages)
    assert sources(kept) == keep
    found = {c.source: detect_language(conversation_text(c)) for c in convs}
    wanted = ", ".join(languages)
    assert reasons(dropped) == [
        (s, "language", f"language {found[s]} not in [{wanted}]") for s in sources(convs) if s not in keep
    ]
    assert reasons(dropped)[-1] == ("fr", "language", f"language fr not in [{wanted}]")


def test_normalise_ignores_case_width_spacing_and_punctuation():
    assert normalise("  Ｈｅｌｌｏ，\tWORLD!!  你好。「测试」…  ") == "hello world 你好 测试"
    assert normalise("1+1=$2.") == "1+1=$2"  # symbols are content, not punctuation


def test_exact_dedup_catches_case_whitespace_and_punctuation_variants():
    convs = [
        conv("Hello, world!", "你好，世界。", "f.json:1"),
        conv("hello   WORLD", "你好 世界", "f.json:2"),
        conv("Ｈｅｌｌｏ world？", "「你好」世界！", "g.json:7"),
        conv("Hello, moon!", "你好，月亮。", "f.json:3"),
    ]
    kept, dropped = dedup(convs)
    assert sources(kept) == ["f.json:1", "f.json:3"]
    assert reasons(dropped) == [
        ("f.json:2", "dedup", "duplicate of f.json:1"),
        ("g.json:7", "dedup", "duplicate of f.json:1"),
    ]


def test_near_dedup_catches_a_one_word_edit_but_keeps_a_different_text():
    edited = LONG.replace("spring", "summer")
    other = "Rain is expected over the weekend, so the football match has been moved indoors to the school gym."
    convs = [
        conv("Summarise.", LONG, "a.json:1"),
        conv("Summarise.", edited, "a.json:2"),
        conv("Summarise.", other, "a.json:3"),
        conv("summarise", LONG.upper(), "b.json:9"),
    ]
    kept, dropped = dedup(convs, near=True, threshold=0.8)
    assert sources(kept) == ["a.json:1", "a.json:3"]
    assert reasons(dropped) == [
        ("b.json:9", "dedup", "duplicate of a.json:1"),  # the exact pass runs first
        ("a.json:2", "dedup", "near-duplicate (Jaccard ≈ 0.91) of a.json:1"),
    ]


def test_identity_rewrites_assistant_and_system_but_never_user_turns():
    convs = [
        Conversation(
            [Turn(USER, "Are you MOSS or ChatGPT?"), Turn(ASSISTANT, "I am MOSS, made by Fudan.")],
            system="You are MOSS.",
            source="f.json:1",
        ),
        Conversation([Turn(USER, "What is MOSS?"), Turn(ASSISTANT, "A language model.")], source="f.json:2"),
        Conversation([Turn(USER, "Hi"), Turn(FUNCTION, '{"name": "MOSS"}'), Turn(ASSISTANT, "Hello!")], source="f.json:3"),
        Conversation([Turn(USER, "Hi"), Turn(ASSISTANT, "我是MOSS。")], source="f.json:4"),
    ]
    count = rewrite_identity(convs, {r"MOSS": "Lumi", r"made by \w+": "made by the lmtune team"})
    assert count == 2
    assert convs[0].system == "You are Lumi."
    assert [t.content for t in convs[0].turns] == ["Are you MOSS or ChatGPT?", "I am Lumi, made by the lmtune team."]
    assert [t.content for t in convs[1].turns] == ["What is MOSS?", "A language model."]
    assert convs[2].turns[1].content == '{"name": "MOSS"}'  # tool calls are data, not self-references
    assert convs[3].turns[1].content == "我是Lumi。"


def test_identity_with_an_invalid_regex_names_the_pattern():
    with pytest.raises(ConfigError, match=r"'\(MOSS' is not a valid regex"):
        rewrite_identity([conv(*EN, "f.json:1")], {"(MOSS": "Lumi"})


def test_apply_filters_runs_every_step_in_order_and_keeps_input_order():
    convs = [
        conv("Who are you?", "I am MOSS, a helpful assistant.", "f.json:1"),
        conv(*ZH, "f.json:2"),
        conv("hi", "yo", "f.json:3"),
        conv(*EN, "f.json:4"),
        conv("Who are you?", "I am Lumi, a helpful assistant.", "f.json:5"),  # a duplicate once rewritten
        conv(*FR, "f.json:6"),
        conv(*EN, "g.json:1"),
    ]
    cfg = FiltersConfig(min_length=10, languages=["en"], dedup="exact", identity={"MOSS": "Lumi"})
    kept, dropped, rewritten = apply_filters(convs, cfg)
    assert rewritten == 1
    assert sources(kept) == ["f.json:1", "f.json:4"]
    assert kept[0] is convs[0]  # the same records, so callers can match survivors by identity
    assert reasons(dropped) == [
        ("f.json:3", "length", "too short: 5 chars < min_length 10"),
        ("f.json:2", "language", "language zh not in [en]"),
        ("f.json:6", "language", "language fr not in [en]"),
        ("f.json:5", "dedup", "duplicate of f.json:1"),
        ("g.json:1", "dedup", "duplicate of f.json:4"),
    ]


def test_apply_filters_with_nothing_configured_keeps_everything():
    convs = [conv(*ZH, "f.json:1"), conv(*ZH, "f.json:2")]
    assert apply_filters(convs, FiltersConfig()) == (convs, [], 0)
