"""Dense toy reward for the tiny arithmetic data (CPU runs and tests only).

A random tiny model never writes the right answer, so the binary math reward is 0 for every
sample, every GRPO advantage is 0 and nothing moves. This verl custom reward gives partial credit
so that groups have spread and the CPU tests can see weights change:

    score = 0.5 * |chars(gt) ∩ chars(solution)| / |chars(gt)| + 0.5 * [\\boxed{gt} in solution]

Point verl at it with ``reward.custom_reward_function.path=<this file>``,
``reward.custom_reward_function.name=compute_score`` (the CPU preset does).
"""

from __future__ import annotations


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """Partial credit in [0, 1] for the answer's characters appearing, full credit for ``\\boxed{gt}``."""
    gt = str(ground_truth).strip()
    if not gt:
        raise ValueError(f"toy_reward: empty ground_truth for data_source={data_source!r}")
    wanted = set(gt)
    present = sum(1 for ch in wanted if ch in solution_str)
    exact = 1.0 if f"\\boxed{{{gt}}}" in solution_str else 0.0
    return 0.5 * present / len(wanted) + 0.5 * exact


def compute_score_half_constant(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """``compute_score`` for odd answers, a constant 0.5 for even ones: every group of an even answer has
    equal rewards (a zero GRPO advantage), the others have spread (the zero-gradient skip tests)."""
    if int(str(ground_truth).strip()) % 2 == 0:
        return 0.5
    return compute_score(data_source, solution_str, ground_truth, extra_info)
