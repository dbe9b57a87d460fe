"""GRPO's built-in rewards on a thinking model's completions: exact_match compares the answer after
the think block (the prompt says whether the block was opened for the model), format: sees the
whole completion, and a user's function gets it whole."""

from __future__ import annotations

from lmtune.train.rewards import reward_functions

PLAIN, OPENING = "### Response:\n", "### Response:\n<think>\n"  # a prompt that leaves the block to the model, one that opens it
THOUGHT = "<think>\nTwo and two.\n</think>\n\nFour."


def call(completions, prompts=None, reference="Four."):
    kwargs = {"completions": completions, "completion_ids": [[1]] * len(completions), "reference": [reference] * len(completions)}
    return kwargs if prompts is None else {**kwargs, "prompts": prompts}


def test_exact_match_compares_the_answer_after_the_reasoning():
    (exact,) = reward_functions(["exact_match"], 8, ("### Instruction:",))
    completions = [THOUGHT, "Two and two.\n</think>\n\nFour.", "<think>\nTwo and", "Four.", "<think>\nFour.\n</think>\n\nFive."]
    assert exact(**call(completions, [PLAIN, OPENING, PLAIN, PLAIN, PLAIN])) == [1.0, 1.0, 0.0, 1.0, 0.0]
    # After a prompt that opened the block, all before </think> is reasoning, "<think>" or not;
    # and a block that never closes has no answer, even where its text equals the reference.
    assert exact(**call(["Four.", "Four.\n</think>\n\nFour."], [OPENING, OPENING])) == [0.0, 1.0]
    # A bare </think> after a prompt that did not open one is not a think block.
    assert exact(**call(["Two.\n</think>\n\nFour."], [PLAIN])) == [0.0]


def test_exact_match_without_the_prompts_ends_the_reasoning_at_a_bare_close():
    (exact,) = reward_functions(["exact_match"], 8, ("### Instruction:",))
    completions = [THOUGHT, "Two and two.\n</think>\n\nFour.", "Four.", "<think>\nFour."]
    assert exact(**call(completions)) == [1.0, 1.0, 1.0, 0.0]


def test_stop_strings_cut_the_completion_before_it_is_parsed():
    (exact,) = reward_functions(["exact_match"], 8, ("### Instruction:",))
    assert exact(**call([THOUGHT + "\n### Instruction:\nmore"], [PLAIN])) == [1.0]


def test_format_sees_the_whole_completion_so_it_can_require_a_think_block():
    block, opened = reward_functions([r"format:<think>\n.+\n</think>\n\n.+", r"format:.+\n</think>\n\n.+"], 8, ())
    completions = [THOUGHT, "Four.", "<think>\nnever closed"]
    assert block(**call(completions, [PLAIN] * 3)) == [1.0, 0.0, 0.0]
    assert opened(**call(["Two and two.\n</think>\n\nFour.", "Four."], [OPENING] * 2)) == [1.0, 0.0]


def test_a_users_reward_function_gets_the_completion_whole(tmp_path):
    module = tmp_path / "mine.py"
    module.write_text("def seen(prompts, completions, references):\n    return [c.count('</think>') for c in completions]\n")
    (seen,) = reward_functions([f"{module}:seen"], 8, ())
    assert seen(**call([THOUGHT, "Four."], [PLAIN, PLAIN])) == [1.0, 0.0]
