"""The math-verify reward: extraction, equivalence, time bounds off the main thread, verl's call path."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from verl_ext.reward.answer import (
    bracket_depth,
    find_last_boxed,
    last_boxed_content,
    normalize_answer,
    valid_text,
)
from verl_ext.reward.math_reward import (
    KILL_GRACE_S,
    RESULT_KEYS,
    GradeTask,
    GradingPool,
    compute_score,
    score_batch,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]

# A power tower: sympy tries to evaluate it and runs far past any timeout used here.
TOWER = "\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}"
# 100 nested fractions: over the bracket-depth guard, rejected before parsing.
NESTED = "\\boxed{" + "\\frac{" * 100 + "1" + "}{2}" * 100 + "}"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\fbox{x^{2}}", "x^{2}"),
        ("answer \\boxed 7 done", "7"),
        ("\\boxed{3} and an unclosed \\boxed{4", "3"),
        ("no box here", None),
        ("\\boxed{a{b{c}}d}e}", "a{b{c}}d"),
    ],
)
def test_last_boxed_content(text, expected):
    assert last_boxed_content(text) == expected


def test_find_last_boxed_span_is_balanced_on_long_input():
    body = "{" * 500 + "x" + "}" * 500
    text = "junk " * 10_000 + "\\boxed{" + body + "} tail"
    start, end = find_last_boxed(text)
    assert text[start:end] == body


def _last_boxed_by_scanning(text: str):
    """Slow obvious reference: from the last box marker backwards, walk the characters keeping a depth."""
    import re

    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*", text))):
        i = m.end()
        if i >= len(text):
            continue
        if text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                escaped = j > i and text[j - 1] == "\\"
                if text[j] == "{" and not escaped:
                    depth += 1
                elif text[j] == "}" and not escaped:
                    depth -= 1
                    if depth == 0:
                        return i + 1, j
            continue
        if m.group(0)[-1].isspace():
            k = i
            while k < len(text) and not text[k].isspace() and text[k] != "$":
                k += 1
            if k > i:
                return i, k
    return None


def test_find_last_boxed_matches_a_character_scan_on_random_text():
    import random

    rng = random.Random(16)
    pieces = ["\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "\\{", "\\}", "\\", "x", "1", " ", "$"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert find_last_boxed(text) == _last_boxed_by_scanning(text), text


def test_last_boxed_search_is_linear_in_nested_unclosed_boxes():
    """Issue 16 item 11: 20,000 nested unclosed ``\\boxed{`` took 13.6 s (each failed box rescanned the
    rest of the text); a linear search is well under a second, and 4x the input costs about 4x, not 16x."""
    import time

    def seconds(n):
        text = "\\boxed{1} " + "\\boxed{" * n
        t0 = time.perf_counter()
        assert find_last_boxed(text) == (7, 8)
        return time.perf_counter() - t0

    assert seconds(20_000) < 1.0
    small, large = min(seconds(10_000) for _ in range(3)), min(seconds(40_000) for _ in range(3))
    assert large < 8 * small + 0.05, (small, large)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  $\\dfrac{1}{2}$ ", "\\frac{1}{2}"),
        ("\\left( 1,\\ 2 \\right)", "( 1,\\ 2 )"),
        ("10\\!000.", "10000"),
        ("\\tfrac{3}{4}", "\\frac{3}{4}"),
        ("x \n =   5", "x = 5"),
        ("\\leftarrow", "\\leftarrow"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "solution, gold, score, fmt",
    [
        ("So the answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0, 1.0),
        ("\\boxed{\\dfrac12}", "\\frac{1}{2}", 1.0, 1.0),
        ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0, 1.0),
        ("\\boxed{(1,2)}", "(1, 2)", 1.0, 1.0),
        ("\\boxed{3}", "4", 0.0, 1.0),
        ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", 1.0, 1.0),
        ("the answer is 3", "3", 0.0, 0.0),
    ],
)
def test_compute_score_hand_cases(solution, gold, score, fmt):
    result = compute_score("math", solution, gold, extra_info={"index": 0})
    assert tuple(result) == RESULT_KEYS
    assert result["score"] == score and result["acc"] == score
    assert result["format"] == fmt
    assert result["timeout"] == 0.0 and result["error"] == 0.0


def test_fallback_unboxed_is_an_option():
    text = "Adding them up, the final answer is $3$."
    assert compute_score("math", text, "3")["score"] == 0.0
    scored = compute_score("math", text, "3", fallback_unboxed=True)
    assert scored["score"] == 1.0 and scored["format"] == 0.0


def test_compute_score_is_safe_off_the_main_thread():
    cases = [(f"\\boxed{{{k}/4}}", str(k / 4)) for k in range(8)] + [("\\boxed{7}", "8")] * 4
    out: dict[int, float] = {}

    def grade(i, solution, gold):
        out[i] = compute_score("math", solution, gold)["score"]

    threads = [threading.Thread(target=grade, args=(i, s, g)) for i, (s, g) in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [out[i] for i in range(len(cases))] == [1.0] * 8 + [0.0] * 4


def test_timeout_scores_zero_and_is_counted_in_thread():
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(compute_score("math", TOWER, "3", timeout=1.0)))
    t.start()
    t.join()
    assert box["score"] == 0.0 and box["timeout"] == 1.0 and box["format"] == 1.0
    # the worker survived its soft timeout or was replaced: the next item is graded normally
    assert compute_score("math", "\\boxed{0.25}", "\\frac14")["score"] == 1.0


def test_hung_worker_is_killed_and_replaced():
    pool = GradingPool(1)
    try:
        (worker,) = pool._live
        os.kill(worker.process.pid, signal.SIGSTOP)  # a worker stuck where no signal handler can run
        status, score = pool.run(GradeTask("\\boxed{2}", "2"), timeout=0.5)
        assert (status, score) == ("timeout", 0.0)
        assert pool.kills == 1 and not worker.process.is_alive()
        assert pool.run(GradeTask("\\boxed{1/2}", "0.5"), timeout=5.0) == ("ok", 1.0)
        (fresh,) = pool._live
        os.kill(fresh.process.pid, signal.SIGKILL)  # a worker that died (OOM killer, segfault)
        fresh.process.join(5)
        assert pool.run(GradeTask("\\boxed{2}", "2"), timeout=5.0) == ("error", 0.0)
        assert pool.kills == 2
        assert pool.run(GradeTask("\\boxed{3}", "3"), timeout=5.0) == ("ok", 1.0)
    finally:
        pool.close()
    assert KILL_GRACE_S > 0


@pytest.mark.parametrize(
    "text, depth", [("", 0), ("x", 0), ("{a}", 1), ("[0,(1)]", 2), ("\\frac{\\frac{1}{2}}{3}", 2), ("(()", 2)]
)
def test_bracket_depth(text, depth):
    assert bracket_depth(text) == depth


def test_deeply_nested_answer_is_rejected_without_parsing():
    result = compute_score("math", NESTED, "1", timeout=60.0)
    assert result["score"] == 0.0 and result["error"] == 1.0 and result["timeout"] == 0.0


def test_oversized_answer_is_bounded_not_parsed():
    huge = "\\boxed{" + "9" * 100_000 + "}"
    result = compute_score("math", huge, "3")
    assert result["score"] == 0.0 and result["format"] == 1.0 and result["error"] == 1.0
    assert len(result["pred"]) == 200


def test_score_batch_pool_matches_sequential_and_summary():
    solutions = ["\\boxed{2}", "\\boxed{0.5}", "no answer", "\\boxed{5}", TOWER, "\\boxed{\\pi}", NESTED]
    golds = ["2", "\\frac{1}{2}", "1", "6", "3", "\\pi", "1"]
    pooled = score_batch(solutions, golds, timeout=1.0, num_workers=2)
    sequential = score_batch(solutions, golds, timeout=1.0, num_workers=0)
    drop = ("latency_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in pooled] == [
        {k: v for k, v in r.items() if k not in drop} for r in sequential
    ]
    assert [r["score"] for r in pooled] == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    # hand count: 3 correct of 7, 6 boxed of 7, the tower times out, the nested item is rejected
    assert summarize(pooled) == {"n": 7, "accuracy": 3 / 7, "format_rate": 6 / 7, "timeouts": 1, "errors": 1}


def test_score_batch_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 solutions but 1 ground_truths"):
        score_batch(["a", "b"], ["1"])


# A lone surrogate: a code point in U+D800..U+DFFF on its own, which a Python str can hold
# (surrogateescape decoding, chr()) but which is not Unicode text ("...".encode("utf-8") raises).
LOW, HIGH = "\udfff", "\ud800"
FFFD = "\ufffd"


def test_valid_text_replaces_exactly_the_surrogates():
    assert valid_text("x = 1") == ("x = 1", False)
    assert valid_text("\U0001f600 \u00e9") == ("\U0001f600 \u00e9", False)  # astral and accented text is valid
    assert valid_text("a" + HIGH + "b" + LOW) == ("a" + FFFD + "b" + FFFD, True)
    # a surrogate PAIR spelled as two code points is still two lone surrogates in a str
    assert valid_text("\ud83d\ude00") == (FFFD + FFFD, True)


def test_extraction_is_defined_on_surrogates():
    assert bracket_depth("{" + LOW + "(") == 2
    assert last_boxed_content("\\boxed{1" + LOW + "}") == "1" + LOW
    assert find_last_boxed(HIGH + "\\boxed{{" + LOW + "}}") == (8, 11)


# (solution, ground truth, format, pred): every case scores 0 and is counted as an error;
# pred is the extracted answer with the surrogate shown as U+FFFD.
SURROGATE_CASES = [
    ("\\boxed{1}" + LOW, "1", 1.0, "1"),  # after the box
    (HIGH + " so \\boxed{1}", "1", 1.0, "1"),  # before the box (the old code scored this 1.0)
    ("\\boxed{1" + LOW + "}", "1", 1.0, "1" + FFFD),  # inside the box
    ("\\boxed{" + HIGH + "}", HIGH, 1.0, FFFD),  # the same lone surrogate in both
    ("\\boxed{1}", "1" + LOW, 1.0, "1"),  # in the ground truth
    ("\\boxed{\\frac{1}{2}}", "0.5" + HIGH, 1.0, "\\frac{1}{2}"),  # ground truth, would need math-verify
    ("no box here " + LOW, "1", 0.0, ""),  # no box at all
]


@pytest.mark.parametrize("solution, gold, fmt, pred", SURROGATE_CASES)
def test_lone_surrogate_scores_zero_as_an_error(solution, gold, fmt, pred):
    expected = {"score": 0.0, "acc": 0.0, "format": fmt, "timeout": 0.0, "error": 1.0, "pred": pred}
    assert compute_score("math", solution, gold) == expected
    assert compute_score("math", solution, gold, fallback_unboxed=True) == expected
    pred.encode("utf-8")  # the logged answer is writable text


def test_lone_surrogate_in_score_batch_with_a_pool_and_sequentially():
    cases = SURROGATE_CASES + [
        ("\\boxed{0.5}", "\\frac12", 1.0, "0.5"),  # graded by math-verify in a worker
        ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0, "x^2+2x+1"),  # idem
        ("\\boxed{3}", "4", 1.0, "3"),
    ]
    solutions, golds = [c[0] for c in cases], [c[1] for c in cases]
    n_bad = len(SURROGATE_CASES)
    for num_workers in (2, 0):
        results = score_batch(solutions, golds, timeout=5.0, num_workers=num_workers)
        assert [r["score"] for r in results] == [0.0] * n_bad + [1.0, 1.0, 0.0]
        assert [r["error"] for r in results] == [1.0] * n_bad + [0.0, 0.0, 0.0]
        assert [r["pred"] for r in results] == [c[3] for c in cases]
        # hand count: 2 correct of 10, 9 boxed (all but "no box here"), no timeout, 7 errors
        assert summarize(results) == {"n": 10, "accuracy": 0.2, "format_rate": 0.9, "timeouts": 0, "errors": 7}


def _naive_manager_results(tiny_pair, path, cases, decode_suffix=""):
    """``run_single`` of verl's NaiveRewardManager (loaded by verl from ``path``) per ``(response text, ground truth)``.

    ``decode_suffix`` is appended to every decoded response: a tokenizer whose ``decode``
    yields a lone surrogate (a byte-level vocabulary decoded with ``surrogateescape``).
    """
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.trainer.ppo.reward import load_reward_manager

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": path,
                    "name": "compute_score",
                    "reward_kwargs": {"timeout": 2.0},
                },
                "reward_manager": {"source": "register", "name": "naive"},
            }
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_pair["small"])
    if decode_suffix:
        decode = tokenizer.decode
        tokenizer.decode = lambda *args, **kwargs: decode(*args, **kwargs) + decode_suffix
    manager = load_reward_manager(config, tokenizer)
    prompt = tokenizer("What is 2 + 2?", return_tensors="pt")["input_ids"]
    outs = []
    for text, gold in cases:
        response = tokenizer(text, return_tensors="pt")["input_ids"]
        data = DataProto.from_dict(
            tensors={
                "prompts": prompt,
                "responses": response,
                "attention_mask": torch.ones(1, prompt.shape[1] + response.shape[1], dtype=torch.long),
            },
            non_tensors={
                "data_source": np.array(["tiny_arith"], dtype=object),
                "reward_model": np.array([{"ground_truth": gold}], dtype=object),
                "extra_info": np.array([{"index": 0}], dtype=object),
            },
        )
        out = manager.loop.run_until_complete(manager.run_single(data))
        assert set(out["reward_extra_info"]) == set(RESULT_KEYS)
        outs.append(out)
    return outs


@pytest.mark.parametrize("path", [str(REPO / "verl_ext/reward/math_reward.py"), "pkg://verl_ext.reward.math_reward"])
def test_verl_reward_manager_calls_compute_score(tiny_pair, path):
    """verl's own loader + NaiveRewardManager.run_single (which calls us from an executor thread)."""
    outs = _naive_manager_results(tiny_pair, path, [("so \\boxed{4}", "4"), ("so \\boxed{5}", "4")])
    assert [out["reward_score"] for out in outs] == [1.0, 0.0]


def test_verl_reward_manager_scores_lone_surrogates_as_errors(tiny_pair):
    """A lone surrogate reaching verl's reward path, in the ground truth or the decoded response."""
    path = "pkg://verl_ext.reward.math_reward"
    in_gold = _naive_manager_results(tiny_pair, path, [("so \\boxed{4}", "4" + LOW), ("so \\boxed{4}", "4")])
    in_response = _naive_manager_results(tiny_pair, path, [("so \\boxed{4}", "4")], decode_suffix=LOW)
    for out in in_gold[:1] + in_response:
        assert out["reward_score"] == 0.0
        assert out["reward_extra_info"]["error"] == 1.0 and out["reward_extra_info"]["pred"] == "4"
    # the same manager still grades a clean item normally afterwards
    assert in_gold[1]["reward_score"] == 1.0 and in_gold[1]["reward_extra_info"]["error"] == 0.0


def test_compute_score_inside_a_ray_actor_thread():
    """verl's reward loop runs in Ray actors and calls compute_score from executor threads."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        class Scorer:
            def score(self, cases):
                from concurrent.futures import ThreadPoolExecutor

                from verl_ext.reward.math_reward import compute_score

                with ThreadPoolExecutor(4) as ex:
                    return list(ex.map(lambda c: compute_score("math", c[0], c[1])["score"], cases))

        cases = [("\\boxed{0.5}", "\\frac12"), ("\\boxed{3}", "4"), ("\\boxed{\\sqrt{4}}", "2")]
        assert ray.get(Scorer.remote().score.remote(cases), timeout=300) == [1.0, 0.0, 1.0]
    finally:
        ray.shutdown()


MATH_STYLE = [
    ("\\boxed{C}", "\\text{(C)}", 1.0),
    ("\\boxed{5}", "5\\text{ cm}", 1.0),
    ("\\boxed{90}", "90^\\circ", 1.0),
    ("\\boxed{[2,5)}", "x \\in [2, 5)", 1.0),
    ("\\boxed{\\frac{\\sqrt3}{2}}", "\\frac{\\sqrt{3}}{2}", 1.0),
    ("\\boxed{1,000}", "1000", 1.0),
    ("\\boxed{x=3}", "3", 1.0),
    ("\\boxed{\\text{east}}", "\\text{east}", 1.0),
    ("\\boxed{2, 3}", "3, 2", 1.0),
    ("\\boxed{\\frac{1}{3}}", "0.3333333333", 1.0),
    ("\\boxed{0.333}", "\\frac13", 0.0),  # a rounded decimal is not the exact fraction
    ("\\boxed{10\\%}", "10", 0.0),
    ("\\boxed{(0,1]}", "[0, 1)", 0.0),
]


def test_math_style_ground_truths_sequential_mode():
    """MATH answer styles (units, degrees, text, intervals, sets); sequential in-process grading."""
    results = score_batch([c[0] for c in MATH_STYLE], [c[1] for c in MATH_STYLE], num_workers=0)
    assert [r["score"] for r in results] == [c[2] for c in MATH_STYLE]
