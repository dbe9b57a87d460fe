"""A data/ folder in LLaMA-Factory's layout, its dataset_info.json unchanged: every entry is read in
full or refused with a message that names what it is, and every field of a record is either used
or counted."""

import json

import pytest

from lmtune.config import DataConfig, validate_config
from lmtune.data.load import load_data
from lmtune.data.records import ASSISTANT, FUNCTION, OBSERVATION, USER, Turn
from lmtune.errors import DataError
from tests.conftest import lmtune, lmtune_process

TOOLS = [{"name": "weather", "description": "Weather of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
ROLE_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}

FILES = {
    "alpaca_en_demo.json": [
        {"instruction": "What is 1 + 1?", "input": "", "output": "2", "id": 1, "category": "math"},
        {"instruction": "Capital of France?", "input": "", "output": "Paris.", "id": 2},
    ],
    "firefly.jsonl": [
        {"conversation_id": 7, "category": "qa", "conversation": [{"human": "Hi", "assistant": "Hello!"}], "dataset": "moss"},
    ],
    "glaive_toolcall_demo.json": [
        {"conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 20}'},
            {"from": "gpt", "value": "It is 20 °C."},
        ], "tools": json.dumps(TOOLS)},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "tools": "[{broken"},
    ],
    "openai_tools.jsonl": [
        {"messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "20"},
            {"role": "tool", "tool_call_id": "c2", "content": "25"},
            {"role": "assistant", "content": "Paris 20 °C, Rome 25 °C."},
        ], "tools": [{"type": "function", "function": TOOLS[0]}]},
    ],
    "renamed_tags.json": [
        {"dialog": [
            {"who": "me", "text": "Add 2 and 3."}, {"who": "call", "text": '{"name": "add", "arguments": {"a": 2, "b": 3}}'},
            {"who": "result", "text": "5"}, {"who": "bot", "text": "5."},
        ], "sys": "Be brief.", "weight": 1.0},
    ],
    "c4_demo.jsonl": [
        {"text": "First web page.", "timestamp": "2019-04-25", "url": "https://a.example"},
        {"text": "Second web page.", "timestamp": "2019-04-26", "url": "https://b.example"},
    ],
    "dpo_en_demo.json": [
        {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "Hello!"},
         "rejected": {"from": "gpt", "value": "Go away."}},
    ],
    "kto_en_demo.json": [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}], "label": False},
    ],
    "mllm_demo.json": [
        {"messages": [{"role": "user", "content": "<image>What is in the picture?"}, {"role": "assistant", "content": "A cat."}],
         "images": ["mllm_demo_data/1.jpg"]},
        {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}], "images": []},
    ],
    "hub/en/train.jsonl": [{"question": "Capital of Italy?", "answer": "Rome.", "source": "web"}],
    "hub/en/validation.jsonl": [{"question": "Capital of Spain?", "answer": "Madrid.", "source": "web"}],
    "hub/zh/train.jsonl": [{"question": "中国的首都？", "answer": "北京。", "source": "web"}],
}

REGISTRY = {
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json", "file_sha1": "0123456789abcdef"},
    "firefly_demo": {"file_name": "firefly.jsonl"},
    "glaive_toolcall_demo": {"file_name": "glaive_toolcall_demo.json", "formatting": "sharegpt",
                             "columns": {"messages": "conversations", "tools": "tools"}},
    "openai_tools": {"file_name": "openai_tools.jsonl", "formatting": "openai"},
    "renamed_tags": {"file_name": "renamed_tags.json", "formatting": "sharegpt", "columns": {"messages": "dialog", "system": "sys"},
                     "tags": {"role_tag": "who", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot",
                              "observation_tag": "result", "function_tag": "call"}},
    "wiki_demo": {"file_name": "wiki_demo.txt", "columns": {"prompt": "text"}},
    "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
    "sampled": {"file_name": "alpaca_en_demo.json", "num_samples": 1},
    "oversampled": {"file_name": "alpaca_en_demo.json", "num_samples": 3},
    "local_copy": {"hf_hub_url": "org/never-downloaded", "file_name": "alpaca_en_demo.json", "load_from": "file"},
    "hub_en": {"hf_hub_url": "HUB", "folder": "en", "columns": {"prompt": "question", "response": "answer"}},
    "hub_en_dev": {"hf_hub_url": "HUB", "folder": "en", "split": "validation", "columns": {"prompt": "question", "response": "answer"}},
    "hub_zh": {"hf_hub_url": "HUB", "ms_hub_url": "org/zh", "folder": "zh", "columns": {"prompt": "question", "response": "answer"}},
    "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    "kto_en_demo": {"file_name": "kto_en_demo.json", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
                    "tags": ROLE_TAGS},
    "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
                  "tags": ROLE_TAGS},
    "alpaca_zh": {"ms_hub_url": "llamafactory/alpaca_zh"},
    "alpaca_om": {"om_hub_url": "HaM/alpaca_en"},
    "scripted": {"script_url": "scripted_folder"},
    "in_the_cloud": {"cloud_file_name": "s3://bucket/data.json"},
    "misspelt": {"file_name": "alpaca_en_demo.json", "colums": {"prompt": "instruction"}},
    "unknown_column": {"file_name": "alpaca_en_demo.json", "columns": {"answer": "output"}},
    "split_file": {"file_name": "alpaca_en_demo.json", "split": "test"},
    "messages_in_alpaca": {"file_name": "alpaca_en_demo.json", "columns": {"messages": "conversations"}},
}

INFO = "dataset_info.json"
PREFERENCE = "train it with data.stage: dpo (as SFT data its rejected answers would be lost or trained as good ones)"
# What each entry gives: the load report's summary, or the one refusal (after "dataset 'NAME' in DIR/dataset_info.json").
OUTCOMES = {
    "alpaca_en_demo": "read 2 records from 1 file(s); kept 2; ignored fields: id (2), category (1) in alpaca_en_demo",
    "firefly_demo": "read 1 records from 1 file(s); kept 1; ignored fields: conversation_id (1), category (1), dataset (1) in firefly_demo",
    "glaive_toolcall_demo": "read 2 records from 1 file(s); kept 1; rejected 1",
    "openai_tools": "read 1 records from 1 file(s); kept 1; ignored fields: messages[].tool_call_id (1), messages[].tool_calls[].id (1) in openai_tools",
    "renamed_tags": "read 1 records from 1 file(s); kept 1; ignored fields: weight (1) in renamed_tags",
    "wiki_demo": "read 3 records from 1 file(s); kept 3",
    "c4_demo": "read 2 records from 1 file(s); kept 2; ignored fields: timestamp (2), url (2) in c4_demo",
    "sampled": "read 2 records from 1 file(s); kept 1; filtered 1 by num_samples; ignored fields: id (2), category (1) in sampled",
    "oversampled": "read 2 records from 1 file(s); kept 2; 1 repeated to reach mix counts or num_samples; ignored fields: id (2), category (1) in oversampled",
    "local_copy": "read 2 records from 1 file(s); kept 2; ignored fields: id (2), category (1) in local_copy",
    "hub_en": "read 1 records from 1 file(s); kept 1; ignored fields: source (1) in hub_en",
    "hub_en_dev": "read 1 records from 1 file(s); kept 1; ignored fields: source (1) in hub_en_dev",
    "hub_zh": "read 1 records from 1 file(s); kept 1; ignored fields: source (1) in hub_zh",
    "dpo_en_demo": f" is preference data (ranking: true: chosen/rejected answer pairs); {PREFERENCE}",
    "kto_en_demo": " is KTO data (kto_tag column 'label' labels each answer desirable or not); train it with "
    "data.stage: kto (as SFT data its undesirable answers would be trained as good ones)",
    "mllm_demo": " is multimodal (images in column 'images'); lmtune trains on text: set data.drop_media: true to train on "
    "the text alone (the media and their <image>/<video>/<audio> placeholders are dropped and counted in the load report), "
    "or leave it out",
    "alpaca_zh": " is read from ModelScope (ms_hub_url); lmtune reads local files and Hugging Face datasets: download it "
    "and give its local copy as file_name",
    "alpaca_om": " is read from Modelers (OpenMind) (om_hub_url); lmtune reads local files and Hugging Face datasets: "
    "download it and give its local copy as file_name",
    "scripted": " is read from a loading script, which datasets no longer runs (script_url); lmtune reads local files and "
    "Hugging Face datasets: download it and give its local copy as file_name",
    "in_the_cloud": " is read from cloud storage (cloud_file_name); lmtune reads local files and Hugging Face datasets: "
    "download it and give its local copy as file_name",
    "misspelt": ": unknown key 'colums'; did you mean 'columns'?",
    "unknown_column": ": unknown columns key 'answer'; lmtune reads: prompt, query, response, history, messages, system, "
    "tools, images, videos, audios, chosen, rejected, kto_tag, reasoning",
    "split_file": ": split 'test' selects part of a hub dataset; a local file_name is read whole (leave split out)",
    "messages_in_alpaca": ": columns.messages does not apply to formatting 'alpaca'; alpaca reads prompt/query/response/history, "
    "sharegpt and openai read messages",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The folder as LLaMA-Factory's data/ holds it; the hub entries name a local folder that
    datasets.load_dataset reads through its cache, as it would a downloaded hub dataset."""
    import datasets

    root = tmp_path_factory.mktemp("llama-factory")
    folder = root / "data"
    for name, rows in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) if name.endswith(".jsonl") else json.dumps(rows, ensure_ascii=False)
        path.write_text(text, encoding="utf-8")
    (folder / "wiki_demo.txt").write_text("Anarchism is a political philosophy.\n\nAutism is a condition.\nAlbedo is reflectance.\n", encoding="utf-8")
    registry = {name: {k: str(folder / "hub") if v == "HUB" else v for k, v in entry.items()} for name, entry in REGISTRY.items()}
    (folder / INFO).write_text(json.dumps(registry, indent=2), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:  # the datasets cache goes to the test's folder, never ~/.cache
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf-cache")
        yield folder


def load(data_dir, name, **settings):
    return load_data(DataConfig(dataset=[name], dataset_dir=str(data_dir), on_error="skip", **settings))


def test_every_entry_is_read_in_full_or_refused_by_name(data_dir):
    assert set(OUTCOMES) == set(REGISTRY)
    for name, outcome in OUTCOMES.items():
        if outcome.startswith("read "):
            assert load(data_dir, name).report.summary() == outcome, name
        else:
            with pytest.raises(DataError) as refusal:
                load(data_dir, name)
            assert str(refusal.value) == f"dataset '{name}' in {data_dir / INFO}{outcome}"


def test_tools_function_calls_and_observations(data_dir):
    loaded = load(data_dir, "glaive_toolcall_demo")
    (conv,) = loaded.train
    assert conv.tools == TOOLS
    assert [t.role for t in conv.turns] == [USER, FUNCTION, OBSERVATION, ASSISTANT]
    (rejected,) = loaded.report.rejected
    assert rejected["source"].endswith("glaive_toolcall_demo.json:1")  # the one-line JSON array starts there
    assert rejected["reason"] == "'tools' is not valid JSON: Expecting property name enclosed in double quotes (column 3)"

    (openai,) = load(data_dir, "openai_tools").train
    assert openai.system == "Use tools." and openai.tools == [{"type": "function", "function": TOOLS[0]}]
    calls = [{"name": "weather", "arguments": {"city": "Paris"}}, {"name": "weather", "arguments": {"city": "Rome"}}]
    assert openai.turns == [
        Turn(USER, "Weather in Paris and Rome?"), Turn(FUNCTION, json.dumps(calls)),
        Turn(OBSERVATION, "20"), Turn(OBSERVATION, "25"), Turn(ASSISTANT, "Paris 20 °C, Rome 25 °C."),
    ]

    (renamed,) = load(data_dir, "renamed_tags").train
    assert renamed.system == "Be brief." and [t.role for t in renamed.turns] == [USER, FUNCTION, OBSERVATION, ASSISTANT]


def test_pre_training_entries_are_text_one_document_per_line_of_a_txt_file(data_dir):
    for stage in ("sft", "pt"):
        wiki = load(data_dir, "wiki_demo", stage=stage).train
        assert [(c.source.rsplit(":", 1)[1], [(t.role, t.content) for t in c.turns]) for c in wiki] == [
            ("1", [(ASSISTANT, "Anarchism is a political philosophy.")]),
            ("3", [(ASSISTANT, "Autism is a condition.")]),
            ("4", [(ASSISTANT, "Albedo is reflectance.")]),
        ]
    assert [c.turns for c in load(data_dir, "c4_demo", format="text").train] == [
        [Turn(ASSISTANT, "First web page.")], [Turn(ASSISTANT, "Second web page.")],
    ]


def test_media_are_dropped_only_when_asked_and_counted(data_dir):
    loaded = load(data_dir, "mllm_demo", drop_media=True)
    assert [[t.content for t in c.turns] for c in loaded.train] == [["What is in the picture?", "A cat."], ["Say hi.", "Hi."]]
    assert loaded.report.summary() == "read 2 records from 1 file(s); kept 2; media dropped (data.drop_media): images (1) in mllm_demo"


def test_hub_entries_read_through_the_datasets_cache(data_dir):
    (en,) = load(data_dir, "hub_en").train
    (dev,) = load(data_dir, "hub_en_dev").train
    (zh,) = load(data_dir, "hub_zh").train
    assert [c.turns[-1].content for c in (en, dev, zh)] == ["Rome.", "Madrid.", "北京。"]
    assert en.source == f"{data_dir / 'hub'}[train]:1" and dev.source == f"{data_dir / 'hub'}[validation]:1"


def test_preference_data_in_a_plain_file_is_refused_once_with_its_place(data_dir):
    path = data_dir / "dpo_en_demo.json"
    with pytest.raises(DataError) as refusal:
        load_data(DataConfig(path=[str(path)], on_error="skip"))
    assert str(refusal.value) == (
        f"{path}:1: dataset 'dpo_en_demo' is preference data (fields 'chosen' and 'rejected': chosen/rejected answer pairs); "
        f"{PREFERENCE}"
    )


def test_kto_labels_in_a_plain_file_are_refused_not_trained_as_good_answers(tmp_path):
    path = tmp_path / "kto.jsonl"
    rows = [{"prompt": "2+2?", "completion": "4", "label": True}, {"prompt": "2+2?", "completion": "5", "label": False}]
    rows = [{"instruction": r["prompt"], "output": r["completion"], "label": r["label"]} for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:1: dataset 'kto' is KTO data .*'label'.* undesirable answers would be trained as good ones"):
        load_data(DataConfig(path=[str(path)], on_error="skip"))


def test_train_on_registry_entries_for_continued_pre_training(tmp_path, data_dir, llama_dir):
    from lmtune.train.run import train

    config = validate_config({
        "model": {"path": str(llama_dir)},
        "data": {"dataset": ["wiki_demo", "c4_demo"], "dataset_dir": str(data_dir), "stage": "pt", "template": "raw",
                 "cutoff_len": 16, "cache": False},
        "finetune": {"method": "full"},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1},
    })
    result = train(config)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["loss"] > 0 for r in rows)


def test_cli_refuses_preference_data_in_one_line(data_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # inspect's table rows on one line each
    result = lmtune("data", "inspect", "dpo_en_demo", "--dataset-dir", data_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: dataset 'dpo_en_demo' in {data_dir / INFO} is preference data " \
        f"(ranking: true: chosen/rejected answer pairs); {PREFERENCE}"
    inspect = lmtune("data", "inspect", "wiki_demo", "openai_tools", "--dataset-dir", data_dir)
    assert inspect.returncode == 0, inspect.stderr
    assert "text / utf-8" in inspect.stdout and "3 read, 3 valid, 0 rejected" in inspect.stdout
    assert "messages / utf-8" in inspect.stdout
    assert "messages[].tool_call_id (1), messages[].tool_calls[].id (1)" in inspect.stdout


def test_cli_names_a_hub_dataset_that_is_not_in_the_cache(tmp_path, monkeypatch):
    (tmp_path / INFO).write_text(json.dumps({"remote": {"hf_hub_url": "lmtune-tests/never-downloaded"}}), encoding="utf-8")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in tests: only the cache counts
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    result = lmtune_process("data", "inspect", "remote", "--dataset-dir", tmp_path)  # a process of its own: the hub reads HF_HUB_OFFLINE once, at import
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "error: hf_hub_url 'lmtune-tests/never-downloaded' (split train): datasets.load_dataset cannot load it (ConnectionError: "
    )
    assert result.stderr.strip().endswith("download it once, or give a local copy as file_name")
