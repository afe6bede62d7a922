"""``small/`` metrics from the trainer's two-phase advantage (verl's pass, then the KD part), ``large/`` IS
metrics from ``compute_large_is_weights``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.support import grpo_reference
from verl_ext.codistill.advantage import (
    add_kd_advantage,
    compute_codistill_advantage_from_config,
    compute_codistill_outcome_advantage,
)
from verl_ext.codistill.importance import compute_large_is_weights
from verl_ext.codistill.metrics import LARGE_IS_METRIC_KEYS, SMALL_METRIC_KEYS, compute_small_metrics

LS = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
LL = torch.tensor([[-2.0, -1.0, -3.0], [-1.0, -3.0, 0.0]])
M = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
R = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
IDX = np.array(["g", "g"], dtype=object)


def two_phase(
    rewards,
    mask,
    index,
    ls,
    ll,
    kd_coef=1.0,
    kd_credit="token",
    kd_clamp=10.0,
    epsilon=1e-6,
    norm_adv_by_std_in_grpo=True,
    task_reward=True,
):
    """What the trainer does: the registered estimator in verl's pass (no log-probs), then the KD part."""
    config = {"codistill": {"task_reward": task_reward, "kd": {"coef": max(kd_coef, 1e-3)}}}
    outcome, _ = compute_codistill_advantage_from_config(
        rewards, mask, index, epsilon=epsilon, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, config=config
    )
    adv, metrics = add_kd_advantage(
        outcome, mask, index, ls, ll, kd_coef=kd_coef, kd_credit=kd_credit, kd_clamp=kd_clamp, epsilon=epsilon
    )
    return adv, metrics


@pytest.mark.parametrize(
    "credit, kd_abs",
    [
        # beta = 0.5; d over valid tokens = [-1, 1, 0, 0, -1.5]
        ("token", 0.5 * (1 + 1 + 0 + 0 + 1.5) / 5),
        ("reward_to_go", 0.5 * (0 + 1 + 0 + 1.5 + 1.5) / 5),  # K = [0, 1, 0, -1.5, -1.5]
        ("sequence", 0.5 / math.sqrt(2)),  # K = +-1/sqrt(2) on every valid token
    ],
)
def test_hand_worked_small_metrics(credit, kd_abs):
    adv, metrics = two_phase(
        R, M, IDX, LS, LL, kd_coef=0.5, kd_credit=credit, kd_clamp=1.5, epsilon=0.0, norm_adv_by_std_in_grpo=False
    )
    assert metrics["small/kd_reward_mean"] == pytest.approx(-0.3)
    assert metrics["small/kd_reverse_kl"] == pytest.approx(0.3)
    assert metrics["small/adv_reward_part_abs"] == pytest.approx(0.5)  # |A_R| = 0.5 on all 5 tokens
    assert metrics["small/adv_kd_part_abs"] == pytest.approx(kd_abs)
    assert list(metrics) == list(SMALL_METRIC_KEYS)
    assert all(isinstance(v, float) for v in metrics.values())
    direct, _ = compute_codistill_outcome_advantage(
        R, M, IDX, LS, LL, kd_coef=0.5, kd_credit=credit, kd_clamp=1.5, epsilon=0.0, norm_adv_by_std_in_grpo=False
    )
    torch.testing.assert_close(adv, direct, rtol=0, atol=1e-6)


def test_task_reward_off_zeroes_the_reward_part():
    _, metrics = two_phase(R, M, IDX, LS, LL, kd_clamp=1.5, task_reward=False)
    assert metrics["small/adv_reward_part_abs"] == 0.0
    assert metrics["small/adv_kd_part_abs"] == pytest.approx(3.5 / 5)


@pytest.mark.parametrize("credit", ["token", "reward_to_go", "sequence"])
def test_small_metrics_match_loop_reference_on_random_batch(credit):
    g = torch.Generator().manual_seed(7)
    n, t = 12, 9
    lengths = torch.randint(0, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).float()
    ls = -torch.rand(n, t, generator=g, dtype=torch.float64) * 4
    ll = ls + torch.randn(n, t, generator=g, dtype=torch.float64) * 3
    rewards = torch.zeros(n, t, dtype=torch.float64)
    rewards[:, 0] = torch.randint(0, 2, (n,), generator=g).double()
    index = np.arange(n) // 3
    beta, c = 0.8, 2.0
    _, metrics = two_phase(rewards, mask, index, ls, ll, kd_coef=beta, kd_credit=credit, kd_clamp=c)
    r = [float(rewards[i].sum()) for i in range(n)]
    a_r = grpo_reference(r, index.tolist())
    cells = [(i, j) for i in range(n) for j in range(t) if mask[i, j] > 0]
    d = {(i, j): min(max(float(ll[i, j] - ls[i, j]), -c), c) for i, j in cells}
    expected_d = sum(d.values()) / len(cells)
    expected_r = sum(abs(a_r[i]) for i, j in cells) / len(cells)
    seq = [sum(d.get((i, j), 0.0) for j in range(t)) / max(int(lengths[i]), 1) for i in range(n)]
    seq_k = grpo_reference(seq, index.tolist())  # sequence credit: seq standardised within its group
    k = {}
    for i, j in cells:
        if credit == "token":
            k[i, j] = d[i, j]
        elif credit == "reward_to_go":
            k[i, j] = sum(d.get((i, jj), 0.0) for jj in range(j, t))
        else:
            k[i, j] = seq_k[i]
    expected_k = sum(abs(beta * k[cell]) for cell in cells) / len(cells)
    assert metrics["small/kd_reward_mean"] == pytest.approx(expected_d, rel=1e-9)
    assert metrics["small/kd_reverse_kl"] == pytest.approx(-expected_d, rel=1e-9)
    assert metrics["small/adv_reward_part_abs"] == pytest.approx(expected_r, rel=1e-9)
    assert metrics["small/adv_kd_part_abs"] == pytest.approx(expected_k, rel=1e-9)


def test_small_metrics_accepts_per_sequence_parts_and_empty_mask():
    d = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    per_seq = compute_small_metrics(d, torch.tensor([2.0, -4.0]), torch.tensor([-1.0, 3.0]), mask)
    # 3 valid tokens: |A_R| = [2, 2, 4], |kd| = [1, 1, 3]
    assert per_seq == pytest.approx(
        {"small/kd_reward_mean": -0.5 / 3, "small/kd_reverse_kl": 0.5 / 3,
         "small/adv_reward_part_abs": 8 / 3, "small/adv_kd_part_abs": 5 / 3}
    )  # fmt: skip
    # no valid token: per-sequence parts weigh 0 tokens, zero-masked (bs, T) tensors are all 0
    empty = compute_small_metrics(torch.zeros(2, 3), torch.ones(2), torch.ones(2), torch.zeros(2, 3))
    assert all(v == 0.0 for v in empty.values())


# 2x3 batch, second row one token shorter; ratios pi_l / pi_s = exp(ll - ls) chosen by hand:
# [[0.6, 4, 1], [1.5, 0.25, (8, padding)]] (none on a threshold, where rounding would decide);
# logprob_gap = ln(0.6 * 4 * 1 * 1.5 * 0.25) / 5 = ln(0.9) / 5
IS_LS = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0]], dtype=torch.float64)
IS_RATIOS = torch.tensor([[0.6, 4.0, 1.0], [1.5, 0.25, 8.0]], dtype=torch.float64)
IS_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    "level, mode, threshold, weights, sum_w, sum_w2, w_max, w_min, changed",
    [
        # token truncate at 2: 4 -> 2 (changed); the padding 8 is neither a weight nor a change
        ("token", "truncate", 2.0, [[0.6, 2, 1], [1.5, 0.25, 0]], 5.35, 0.36 + 4 + 1 + 2.25 + 0.0625, 2.0, 0.25, 1),
        # token mask at 2 (keep 1/2 <= w <= 2): 4 and 0.25 dropped to 0 (two changes)
        ("token", "mask", 2.0, [[0.6, 0, 1], [1.5, 0, 0]], 3.1, 0.36 + 1 + 2.25, 1.5, 0.0, 2),
        # sequence truncate at 1.5: row weights 0.6*4*1 = 2.4 -> 1.5 (3 changed tokens), 1.5*0.25 = 0.375
        (
            "sequence",
            "truncate",
            1.5,
            [[1.5, 1.5, 1.5], [0.375, 0.375, 0]],
            5.25,
            3 * 2.25 + 2 * 0.140625,
            1.5,
            0.375,
            3,
        ),
    ],
)
def test_production_is_metrics_hand_worked(level, mode, threshold, weights, sum_w, sum_w2, w_max, w_min, changed):
    """The large/ metrics the trainer logs, through compute_large_is_weights, on 5 valid tokens."""
    ll = IS_LS + torch.log(IS_RATIOS)
    w, metrics = compute_large_is_weights(IS_LS, ll, IS_MASK, level, mode, threshold)
    assert torch.allclose(w, torch.tensor(weights, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert tuple(metrics) == LARGE_IS_METRIC_KEYS
    assert metrics == pytest.approx(
        {
            "large/is_weight_mean": sum_w / 5,
            "large/is_weight_max": w_max,
            "large/is_weight_min": w_min,
            "large/is_clip_frac": changed / 5,
            "large/is_ess": sum_w**2 / (5 * sum_w2),
            "large/logprob_gap": math.log(0.9) / 5,
        },
        rel=1e-12,
        abs=1e-12,
    )
