import json
import math

import pytest

from lmtune.evaluate.metrics import bleu4, has_loop, rouge_l, rouge_n, score, tokens
from tests.conftest import lmtune


def test_tokens_segment_chinese_into_words_and_english_into_lowercase_words():
    assert tokens("北京是中国的首都。 Hello, World!") == ["北京", "是", "中国", "的", "首都", "hello", "world"]


def test_bleu4_worked_out_by_hand():
    assert bleu4("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100)
    assert bleu4("dogs bark", "the cat sat") == 0
    # p1..p4 = 5/5, 3/4, 2/3, 1/2; brevity exp(1 - 6/5)
    expected = 100 * math.exp(1 - 6 / 5) * (1 * 0.75 * (2 / 3) * 0.5) ** 0.25
    assert bleu4("the cat sat on mat", "the cat sat on the mat") == pytest.approx(expected, rel=1e-9)
    # One word in common: the empty orders count 1/(2*5), 1/(4*4), 1/(8*3) (NLTK's smoothing method 3).
    expected = 100 * (1 / 6 * 1 / 10 * 1 / 16 * 1 / 24) ** 0.25
    assert bleu4("Mars carbon dioxide in the waste.", "The capital of Italy is Rome.") == pytest.approx(expected, rel=1e-9)


def test_bleu4_in_chinese_worked_out_by_hand():
    # jieba words: 中国 的 首都 是 北京 against 北京 是 中国 的 首都. p1 = 5/5; bigrams 中国的 and 的首都
    # of 4 match, 2/4; trigram 中国的首都 1/3; no 4-gram of 2 matches: 1/(2*2). (NLTK gives 45.1801 too.)
    hyp, ref = "中国的首都是北京", "北京是中国的首都"
    expected = 100 * (1 * 0.5 * (1 / 3) * (1 / 4)) ** 0.25
    assert bleu4(hyp, ref) == pytest.approx(expected, rel=1e-9)


def test_rouge_in_chinese_worked_out_by_hand():
    prediction, reference = "北京是中国的首都", "中国的首都是北京"  # words: 北京 是 中国 的 首都
    assert rouge_n(prediction, reference, 1) == pytest.approx(100)  # the same five words
    assert rouge_n(prediction, reference, 2) == pytest.approx(50)  # 中国的, 的首都 of four bigrams each
    assert rouge_l(prediction, reference) == pytest.approx(60)  # longest common subsequence 中国 的 首都


def test_loops_and_never_stopped_answers_are_counted():
    rows = [
        {"output": "好的。", "prediction": "好的好的好的好的好的", "finish_reason": "length"},
        {"output": "Paris.", "prediction": "Paris.", "finish_reason": "stop"},
        {"output": "Yes.", "prediction": "yes and yes and yes and yes and", "finish_reason": "length"},
        {"output": "No.", "prediction": "No.", "finish_reason": "stop"},
    ]
    result = score(rows)
    assert result["hit_max_new_tokens"] == 0.5 and result["repetition_loop"] == 0.5 and result["records"] == 4
    assert not has_loop("The cat sat on the mat and the dog sat on the rug.")


def test_eval_predictions_cli_writes_json_beside_the_file(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"output": "北京是中国的首都", "prediction": "中国的首都是北京"}, ensure_ascii=False) + "\n", encoding="utf-8")
    result = lmtune("eval", "--predictions", preds, "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["rouge-l"] == pytest.approx(60) and json.loads((tmp_path / "preds.metrics.json").read_text())["rouge-2"] == pytest.approx(50)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"output": "a"}\n', encoding="utf-8")
    failed = lmtune("eval", "--predictions", bad)
    assert failed.returncode == 2 and "bad.jsonl:1: needs string fields 'prediction' and 'output' or 'reference'" in failed.stderr
