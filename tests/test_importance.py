"""Large-model importance weights, their metrics, and the large-model advantage.

Expected values come from slow loop references (python floats) or are worked out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_weights

from tests import support
from verl_ext.codistill.importance import compute_large_advantage, compute_large_is_weights

LEVELS = ["token", "sequence", "geo_mean"]
MODES = ["truncate", "mask", "none"]


def make_batch(seed: int = 0, T: int = 7, dtype=torch.float32):
    """tests/support.py's batch with milder gaps: ``ls = -U(0,1) * 3``, ``ll = ls + N(0,1) * 0.6`` (and the
    extreme tokens of rows 1, 2, 8)."""
    return support.make_batch(seed, T, dtype, ls_scale=3.0, ll_noise=0.6, extreme_ls=False)


def ref_weights(ls, ll, mask, level, mode, C, self_normalize):
    n, t = ls.shape
    w = [[0.0] * t for _ in range(n)]
    changed = [[False] * t for _ in range(n)]
    for i in range(n):
        valid = [j for j in range(t) if mask[i, j] > 0]
        gaps = {j: float(ll[i, j]) - float(ls[i, j]) for j in valid}
        for j in valid:
            if level == "token":
                e = gaps[j]
            elif level == "sequence":
                e = sum(gaps.values())
            else:
                e = sum(gaps.values()) / len(valid)
            raw = math.exp(min(max(e, -20.0), 20.0))
            if mode == "truncate":
                w[i][j], changed[i][j] = min(raw, C), raw > C
            elif mode == "mask":
                keep = 1.0 / C <= raw <= C
                w[i][j], changed[i][j] = (raw if keep else 0.0), not keep
            else:
                w[i][j] = 1.0
    if self_normalize:
        vals = [w[i][j] for i in range(n) for j in range(t) if mask[i, j] > 0]
        norm = sum(vals) / len(vals)
        if norm > 0:
            w = [[x / norm for x in row] for row in w]
    return w, changed


def ref_metrics(w, changed, ls, ll, mask):
    n, t = ls.shape
    cells = [(i, j) for i in range(n) for j in range(t) if mask[i, j] > 0]
    vals = [w[i][j] for i, j in cells]
    s, s2 = sum(vals), sum(v * v for v in vals)
    return {
        "large/is_weight_mean": s / len(vals),
        "large/is_weight_max": max(vals),
        "large/is_weight_min": min(vals),
        "large/is_clip_frac": sum(changed[i][j] for i, j in cells) / len(cells),
        "large/is_ess": s * s / (len(vals) * s2) if s2 > 0 else 0.0,
        "large/logprob_gap": sum(float(ll[i, j]) - float(ls[i, j]) for i, j in cells) / len(cells),
    }


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("self_normalize", [False, True])
def test_weights_and_metrics_match_loop_reference(level, mode, self_normalize):
    _, mask, _, ls, ll = make_batch(1)
    ls64, ll64 = ls.double(), ll.double()
    w, metrics = compute_large_is_weights(ls64, ll64, mask, level, mode, 1.5, self_normalize)
    ref_w, ref_changed = ref_weights(ls64, ll64, mask, level, mode, 1.5, self_normalize)
    assert torch.allclose(w, torch.tensor(ref_w, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    expected = ref_metrics(ref_w, ref_changed, ls64, ll64, mask)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        assert isinstance(metrics[key], float)
    assert ("large/is_norm_factor" in metrics) == self_normalize
    # float32 path agrees with the float64 reference
    w32, _ = compute_large_is_weights(ls, ll, mask, level, mode, 1.5, self_normalize)
    assert w32.dtype == torch.float32
    assert torch.allclose(w32.double(), torch.tensor(ref_w, dtype=torch.float64), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_weights_equal_verls_rollout_correction_helper_where_semantics_agree(level, mode):
    _, mask, _, ls, ll = make_batch(2)
    C = 2.0
    ours, _ = compute_large_is_weights(ls, ll, mask, level, mode, C)
    spec = C if mode == "truncate" else f"{1.0 / C}_{C}"
    theirs, _ = compute_rollout_correction_weights(ll - ls, mask, rollout_is=level, rollout_is_threshold=spec)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-7)


# Hand-worked 2x3 example: log_w = ll - ls = [[-1, 1, 0], [0, -2, (masked)]], C = 2.
LS = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
LL = torch.tensor([[-2.0, -1.0, -3.0], [-1.0, -3.0, 0.0]])
M = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
E, E1, E2 = math.e, math.exp(-1.0), math.exp(-2.0)


@pytest.mark.parametrize(
    "level, mode, expected, clip_frac",
    [
        ("token", "truncate", [[E1, 2.0, 1.0], [1.0, E2, 0.0]], 1 / 5),  # e > 2 truncated
        ("token", "mask", [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], 3 / 5),  # e^-1, e, e^-2 outside [0.5, 2]
        ("token", "none", [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], 0.0),
        ("sequence", "truncate", [[1.0, 1.0, 1.0], [E2, E2, 0.0]], 0.0),  # sums 0 and -2
        ("sequence", "mask", [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], 2 / 5),
        ("geo_mean", "truncate", [[1.0, 1.0, 1.0], [E1, E1, 0.0]], 0.0),  # means 0 and -1
        ("geo_mean", "mask", [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], 2 / 5),
        ("geo_mean", "none", [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], 0.0),
    ],
)
def test_hand_worked_weights(level, mode, expected, clip_frac):
    w, metrics = compute_large_is_weights(LS, LL, M, level, mode, threshold=2.0)
    assert torch.allclose(w, torch.tensor(expected), atol=1e-6)
    assert metrics["large/is_clip_frac"] == pytest.approx(clip_frac)
    assert metrics["large/logprob_gap"] == pytest.approx((-1 + 1 + 0 + 0 - 2) / 5)


def test_hand_worked_metrics_token_truncate_and_self_normalize():
    vals = [E1, 2.0, 1.0, 1.0, E2]
    s, s2 = sum(vals), sum(v * v for v in vals)
    w, metrics = compute_large_is_weights(LS, LL, M, "token", "truncate", 2.0)
    assert metrics["large/is_weight_mean"] == pytest.approx(s / 5)
    assert metrics["large/is_weight_max"] == pytest.approx(2.0)
    assert metrics["large/is_weight_min"] == pytest.approx(E2)
    assert metrics["large/is_ess"] == pytest.approx(s * s / (5 * s2))
    wn, mn = compute_large_is_weights(LS, LL, M, "token", "truncate", 2.0, self_normalize=True)
    assert torch.allclose(wn, w / (s / 5), atol=1e-6)
    assert mn["large/is_weight_mean"] == pytest.approx(1.0)
    assert mn["large/is_norm_factor"] == pytest.approx(s / 5)
    assert mn["large/is_ess"] == pytest.approx(metrics["large/is_ess"])


def test_empty_batch_gives_zero_metrics_and_zero_weights():
    ls, ll = torch.zeros(2, 3), torch.ones(2, 3)
    for level in LEVELS:
        for mode in MODES:
            w, metrics = compute_large_is_weights(ls, ll, torch.zeros(2, 3), level, mode, 2.0, True)
            assert torch.all(w == 0)
            assert all(v == 0.0 for v in metrics.values()), metrics


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("mode", MODES)
def test_finite_for_extreme_finite_inputs(dtype, level, mode):
    _, mask, _, ls, ll = make_batch(3, dtype=dtype)
    big = torch.finfo(dtype).max
    ls[1, :], ll[1, :] = -big, big
    ll[2, :] = -big
    ll[7, 0], ls[7, 0], ll[7, 1], ls[7, 1] = big, -big, -big, big  # +inf and -inf gaps in one sequence
    w, metrics = compute_large_is_weights(ls, ll, mask, level, mode, 2.0, self_normalize=True)
    assert torch.isfinite(w).all()
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    rewards = torch.zeros_like(ls)
    labels = np.arange(ls.shape[0]) // 3
    adv, _ = compute_large_advantage(rewards, mask, labels, ls, ll, "is_baseline")
    assert torch.isfinite(adv).all()


def test_bad_arguments_raise():
    _, mask, _, ls, ll = make_batch(0)
    with pytest.raises(ValueError, match=r"is level='foo' not in \['token', 'sequence', 'geo_mean'\]"):
        compute_large_is_weights(ls, ll, mask, level="foo")
    with pytest.raises(ValueError, match=r"is mode='clip' not in \['truncate', 'mask', 'none'\]"):
        compute_large_is_weights(ls, ll, mask, mode="clip")
    with pytest.raises(ValueError, match=r"is threshold=0.5 must be > 0 \(>= 1 for mode='mask'\)"):
        compute_large_is_weights(ls, ll, mask, mode="mask", threshold=0.5)
    with pytest.raises(ValueError, match=r"is threshold=-1.0 must be > 0"):
        compute_large_is_weights(ls, ll, mask, threshold=-1.0)
    rewards, mask, labels, ls, ll = make_batch(0)
    with pytest.raises(ValueError, match=r"large advantage estimator='ppo' not in \['grpo', 'is_baseline'\]"):
        compute_large_advantage(rewards, mask, labels, ls, ll, estimator="ppo")


# ---------------------------------------------------------------- large-model advantage


def ref_is_baseline(rewards, mask, labels, ls, ll, eps, norm):
    n, t = ls.shape
    r = [float(sum(row)) for row in rewards.double().tolist()]
    big_w = []
    for i in range(n):
        s = sum(float(ll[i, j]) - float(ls[i, j]) for j in range(t) if mask[i, j] > 0)
        big_w.append(math.exp(min(max(s, -20.0), 20.0)))
    stats = support.group_stats(r, labels)  # std_g r (1 for a group of one)
    out = []
    for i in range(n):
        members = [j for j in range(n) if labels[j] == labels[i]]
        b = sum(big_w[j] * r[j] for j in members) / sum(big_w[j] for j in members)
        std = stats[labels[i]][1]
        a = (r[i] - b) / (std + eps) if norm else r[i] - b
        out.append([a * float(mask[i, j]) for j in range(t)])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("norm", [True, False])
def test_is_baseline_matches_loop_reference(norm):
    rewards, mask, labels, ls, ll = make_batch(4, dtype=torch.float64)
    adv, ret = compute_large_advantage(rewards, mask, labels, ls, ll, "is_baseline", 1e-6, norm)
    expected = ref_is_baseline(rewards, mask, labels, ls, ll, 1e-6, norm)
    assert torch.allclose(adv, expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(adv, ret)
    assert torch.all(adv[4] == 0)  # singleton: b = r, so A_l = 0
    adv32, _ = compute_large_advantage(rewards.float(), mask.float(), labels, ls.float(), ll.float(), "is_baseline")
    assert torch.isfinite(adv32).all()


@pytest.mark.parametrize("norm", [True, False])
def test_large_grpo_advantage_is_verls_grpo(norm):
    rewards, mask, labels, ls, ll = make_batch(5)
    adv, _ = compute_large_advantage(rewards, mask, labels, ls, ll, "grpo", norm_adv_by_std_in_grpo=norm)
    verl_adv, _ = compute_grpo_outcome_advantage(rewards, mask, labels, norm_adv_by_std_in_grpo=norm)
    assert (adv - verl_adv).abs().max().item() <= 1e-6


def test_hand_worked_is_baseline():
    # one group, r = [1, 0]; sequence log-weights 0 and -2: W = [1, e^-2]; b = 1 / (1 + e^-2)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    index = np.array(["g", "g"], dtype=object)
    b = 1.0 / (1.0 + E2)
    adv, _ = compute_large_advantage(rewards, M, index, LS, LL, "is_baseline", 0.0, False)
    assert torch.allclose(adv, torch.tensor([[1 - b] * 3, [-b, -b, 0.0]]), atol=1e-6)
    adv_std, _ = compute_large_advantage(rewards, M, index, LS, LL, "is_baseline", 0.0, True)
    s = 1 / math.sqrt(2)  # unbiased std of [1, 0]
    assert torch.allclose(adv_std, torch.tensor([[(1 - b) / s] * 3, [-b / s, -b / s, 0.0]]), atol=1e-6)
