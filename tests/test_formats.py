import pytest

from lmtune.data.formats import detect_format, to_conversation
from lmtune.data.records import ASSISTANT, FUNCTION, OBSERVATION, USER, Conversation, Turn
from lmtune.errors import DataError, RecordError


def convert(record, fmt=None, **renames):
    return to_conversation(record, fmt or detect_format(record), **renames)


# ---------------------------------------------------------------- one realistic record per format


def test_alpaca_with_input_history_and_system():
    record = {
        "instruction": "把下面的句子翻译成英文。", "input": "我喜欢喝茶。", "output": "I like drinking tea.",
        "system": "你是翻译助手。", "history": [["你好", "你好！有什么可以帮你？"]],
    }
    assert detect_format(record) == "alpaca"
    assert convert(record) == Conversation(
        [Turn(USER, "你好"), Turn(ASSISTANT, "你好！有什么可以帮你？"),
         Turn(USER, "把下面的句子翻译成英文。", input="我喜欢喝茶。"), Turn(ASSISTANT, "I like drinking tea.")],
        system="你是翻译助手。",
    )


def test_alpaca_with_llama_factory_renamed_columns():
    record = {
        "question": "What is 2 + 2?", "context": "", "answer": "4", "persona": "Be brief.", "past": [["Hi", "Hello!"]],
    }
    columns = {"prompt": "question", "query": "context", "response": "answer", "system": "persona", "history": "past"}
    assert convert(record, "alpaca", columns=columns) == Conversation(
        [Turn(USER, "Hi"), Turn(ASSISTANT, "Hello!"), Turn(USER, "What is 2 + 2?"), Turn(ASSISTANT, "4")],
        system="Be brief.",
    )


def test_belle_multiturn_splits_the_dialogue_text():
    record = {
        "instruction": "Human:你好\nAssistant:你好！有什么可以帮你？\nHuman：介绍一下北京。\n第二行也是问题。\nAssistant:",
        "input": "", "output": "北京是中国的首都。",
    }
    assert detect_format(record) == "belle_multiturn"
    assert detect_format({"instruction": "Human: write a dialogue", "output": "..."}) == "alpaca"
    assert convert(record) == Conversation([
        Turn(USER, "你好"), Turn(ASSISTANT, "你好！有什么可以帮你？"),
        Turn(USER, "介绍一下北京。\n第二行也是问题。"), Turn(ASSISTANT, "北京是中国的首都。"),
    ])


def test_sharegpt_with_system_message_and_a_function_call():
    record = {"conversations": [
        {"from": "system", "value": "You can call tools."},
        {"from": "human", "value": "Weather in Beijing?"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Beijing"}}'},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "It is 21 °C."},
    ]}
    assert detect_format(record) == "sharegpt"
    assert convert(record) == Conversation(
        [Turn(USER, "Weather in Beijing?"), Turn(FUNCTION, '{"name": "weather", "arguments": {"city": "Beijing"}}'),
         Turn(OBSERVATION, '{"temp": 21}'), Turn(ASSISTANT, "It is 21 °C.")],
        system="You can call tools.",
    )


def test_sharegpt_system_column_and_renamed_tags():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    record = {"messages": messages, "sys": "Be kind."}
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    conv = convert(record, "sharegpt", columns={"messages": "messages", "system": "sys"}, tags=tags)
    assert conv == Conversation([Turn(USER, "Hi"), Turn(ASSISTANT, "Hello!")], system="Be kind.")


def test_openai_messages_with_text_parts_and_a_tool_result():
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Add 2 and 3."}, {"type": "text", "text": "Use the tool."}]},
        {"role": "function", "content": '{"name": "add", "arguments": {"a": 2, "b": 3}}'},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "5"},
    ]}
    assert detect_format(record) == "messages"
    assert convert(record) == Conversation(
        [Turn(USER, "Add 2 and 3.\nUse the tool."), Turn(FUNCTION, '{"name": "add", "arguments": {"a": 2, "b": 3}}'),
         Turn(OBSERVATION, "5"), Turn(ASSISTANT, "5")],
        system="Be brief.",
    )


def test_moss_turns_in_numeric_order_without_markers_or_plugin_fields():
    chat = {
        f"turn_{n}": {
            "Human": f"<|Human|>: 问题{n}<eoh>\n",
            "Inner Thoughts": "<|Inner Thoughts|>: None<eot>\n",
            "Commands": "<|Commands|>: None<eoc>\n",
            "Tool Responses": "<|Results|>: None<eor>\n",
            "MOSS": f"<|MOSS|>: 回答{n}<eom>\n",
        }
        for n in (10, 2, 1, 9, 3, 4, 5, 6, 7, 8)
    }
    record = {"conversation_id": 7, "meta_instruction": "You are MOSS.\n", "num_turns": 10, "chat": chat}
    assert detect_format(record) == "moss"
    conv = convert(record)
    assert conv.system == "You are MOSS."
    assert [(t.role, t.content) for t in conv.turns] == [
        pair for n in range(1, 11) for pair in ((USER, f"问题{n}"), (ASSISTANT, f"回答{n}"))
    ]


def test_firefly_ignores_its_bookkeeping_fields():
    record = {
        "conversation_id": 44, "category": "Brainstorming", "dataset": "moss",
        "conversation": [{"human": "推荐一本书", "assistant": "《红楼梦》"}, {"human": "为什么？", "assistant": "它是经典。"}],
    }
    assert detect_format(record) == "firefly"
    assert convert(record) == Conversation(
        [Turn(USER, "推荐一本书"), Turn(ASSISTANT, "《红楼梦》"), Turn(USER, "为什么？"), Turn(ASSISTANT, "它是经典。")]
    )


def test_text_is_one_trained_turn():
    assert detect_format({"text": "天气很好。"}) == "text"
    assert convert({"text": "天气很好。"}) == Conversation([Turn(ASSISTANT, "天气很好。")])


def test_unknown_keys_and_unknown_format_names():
    with pytest.raises(RecordError) as err:
        detect_format({"prompt": "a", "completion": "b"})
    assert str(err.value) == (
        "cannot tell the data format from keys (completion, prompt); expected one of: alpaca (instruction, output), "
        "sharegpt (conversations), messages (messages), moss (chat), firefly (conversation), "
        "r1_distill (input, content, reasoning_content), text (text)"
    )
    with pytest.raises(DataError, match="unknown data format 'oasst'") as err:
        to_conversation({"text": "a"}, "oasst")
    assert not isinstance(err.value, RecordError)  # a config problem, not one record's


# ---------------------------------------------------------------- every RecordError reason, once

SHAREGPT_QA = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
USER_Q = {"role": "user", "content": "Weather in Paris?"}
CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}


@pytest.mark.parametrize(
    ("record", "fmt", "reason"),
    [
        ({"instruction": "q"}, "alpaca",
         "record has no 'output' field; alpaca records need 'instruction' and 'output'"),
        ({"conversations": [{"from": "human"}]}, "sharegpt",
         "'conversations[0]' has no 'value' field; every message needs 'from' and 'value'"),
        ({"instruction": "q", "output": ["a"]}, "alpaca", "'output' must be a string, got list"),
        ({"conversations": [{"from": "human", "value": None}]}, "sharegpt",
         "'conversations[0].value' must be a string, got null"),
        ({"instruction": "q", "output": " \n"}, "alpaca", "'output': empty assistant response"),
        ({"conversation": [{"human": "q", "assistant": ""}]}, "firefly",
         "'conversation[0].assistant': empty assistant response"),
        ({"conversations": [SHAREGPT_QA[0], SHAREGPT_QA[0]]}, "sharegpt",
         "'conversations[1]': wrong role order: user after user; expected assistant or function"),
        ({"conversations": SHAREGPT_QA[::-1]}, "sharegpt",
         "'conversations[0]': wrong role order: assistant first; expected user"),
        ({"conversations": [*SHAREGPT_QA, {"from": "human", "value": "q2"}]}, "sharegpt",
         "'conversations': the last turn is user; it must be the assistant's answer (or a function call)"),
        ({"conversations": [*SHAREGPT_QA, {"from": "system", "value": "s"}]}, "sharegpt",
         "'conversations[2]': a system message may only come first"),
        ({"conversations": [{"from": "bot", "value": "a"}]}, "sharegpt",
         "'conversations[0]': unknown role 'bot' in 'from'; known: human, gpt, observation, function_call, system"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages",
         "'messages[0].content'[0]: only text parts can be trained on, got 'image_url'"),
        ({"conversations": [{"from": "system", "value": "s"}]}, "sharegpt",
         "'conversations' holds no turns: empty conversation"),
        ({"chat": {"turn_1": {"Human": "q", "MOSS": "a"}, "turn_x": {}}}, "moss",
         "'chat.turn_x': MOSS turns must be named turn_1, turn_2, …"),
        ({"instruction": "Human:q\nHuman:again\nAssistant:", "output": "a"}, "belle_multiturn",
         "'instruction' turn 2: wrong role order: user after user; expected assistant or function"),
        ({"text": "  "}, "text", "'text' is empty"),
        ({"conversations": SHAREGPT_QA, "tools": '[{"name": "f",}]'}, "sharegpt",
         "'tools' is not valid JSON: Expecting property name enclosed in double quotes (column 15)"),
        ({"conversations": SHAREGPT_QA, "tools": [{"description": "no name"}]}, "sharegpt",
         "'tools[0]' must be a tool definition with a 'name' (or OpenAI's {\"type\": \"function\", \"function\": "
         "{\"name\": …}}), got {\"description\": \"no name\"}"),
        ({"messages": [USER_Q, {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]}]}, "messages",
         "'messages[1]': text and tool calls in one message; a function turn holds the calls alone, so the text would "
         "be lost: move it to a message of its own"),
        ({"messages": [USER_Q, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{1}"}}]}]},
         "messages", "'messages[1].tool_calls[0].function.arguments' is not valid JSON: Expecting property name "
         "enclosed in double quotes (column 2)"),
        ({"messages": [USER_Q, {"role": "assistant", "tool_calls": [{"name": "f"}]}]}, "messages",
         "'messages[1].tool_calls[0]' must be {\"function\": {\"name\", \"arguments\"}}, got {\"name\": \"f\"}"),
    ],
)
def test_bad_records_are_explained(record, fmt, reason):
    with pytest.raises(RecordError) as err:
        to_conversation(record, fmt)
    assert str(err.value) == reason


def test_tool_calls_become_function_turns_and_unused_fields_are_named():
    record = {"messages": [
        USER_Q, {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": '{"city": "Paris"}'}},
        {"role": "tool", "content": "20", "name": "weather"}, {"role": "assistant", "content": "20 °C.", "weight": 0},
    ], "tools": {"name": "weather"}, "id": "x"}
    ignored = []
    conv = to_conversation(record, "messages", ignored=ignored)
    assert conv.turns[1] == Turn(FUNCTION, '{"name": "weather", "arguments": {"city": "Paris"}}')
    assert conv.tools == [{"name": "weather"}]  # a lone definition is a list of one
    assert ignored == ["id", "messages[].name", "messages[].weight"]
    assert to_conversation({**record, "tools": ""}, "messages").tools is None
