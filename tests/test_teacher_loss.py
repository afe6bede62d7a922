"""Reweighted teacher policy loss: loop and plain-Python references (values, gradients, metrics), on-policy step, registry."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.workers.config import FSDPActorConfig
from verl_ext.codistill.teacher_loss import codistill_teacher_policy_loss, compute_teacher_policy_loss

AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def make_inputs(seed=0, n=9, t=6, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    lengths[0], lengths[1], lengths[2] = 0, 1, t
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(dtype)
    old = -torch.rand(n, t, generator=g) * 4
    new = old + torch.randn(n, t, generator=g) * 0.4
    new[3, 0] = old[3, 0] + 35.0  # ratio exponent beyond the [-20, 20] clamp
    new[4, 1] = old[4, 1] - 33.0
    adv = torch.randn(n, t, generator=g)
    weights = torch.rand(n, t, generator=g) * 2 * mask
    return old.to(dtype), new.to(dtype), adv.to(dtype), mask, weights.to(dtype)


def ref_loss(old, logp, adv, mask, w, lo, hi, c, agg):
    """Dual-clip PPO per token (python loop), times w, then the aggregation written out."""
    n, t = old.shape
    rows = []
    for i in range(n):
        row = []
        for j in range(t):
            if mask[i, j] == 0:
                continue
            ratio = torch.exp(torch.clamp(logp[i, j] - old[i, j], -20.0, 20.0))
            a = float(adv[i, j])
            loss = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - lo, 1 + hi))
            if a < 0:
                loss = torch.minimum(loss, torch.tensor(-a * c, dtype=loss.dtype))
            row.append(loss * float(w[i, j]))
        rows.append(row)
    tokens = [x for row in rows for x in row]
    seqs = [row for row in rows if row]
    if agg == "token-mean":
        return sum(tokens) / len(tokens)
    if agg == "token-sum":
        return sum(tokens)
    if agg == "seq-mean-token-sum":
        return sum(sum(r) for r in seqs) / len(seqs)
    if agg == "seq-mean-token-sum-norm":
        return sum(sum(r) for r in seqs) / len(seqs) / t
    return sum(sum(r) / len(r) for r in seqs) / len(seqs)  # seq-mean-token-mean


@pytest.mark.parametrize("agg", AGG_MODES)
def test_loss_and_gradient_match_loop_reference(agg):
    old, new, adv, mask, w = make_inputs(1, dtype=torch.float64)
    lp = new.clone().requires_grad_(True)
    loss, metrics = compute_teacher_policy_loss(old, lp, adv, mask, w, 0.15, 0.25, 2.5, agg)
    loss.backward()
    lp_ref = new.clone().requires_grad_(True)
    expected = ref_loss(old, lp_ref, adv, mask, w, 0.15, 0.25, 2.5, agg)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-7, abs=1e-9)
    assert torch.allclose(lp.grad, lp_ref.grad, rtol=1e-7, atol=1e-10)
    assert lp.grad[3, 0] == 0 and lp.grad[4, 1] == 0  # beyond the exponent clamp: no gradient
    assert torch.all(lp.grad[mask == 0] == 0)
    assert set(metrics) == {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}


def plain_reference(old, logp, adv, mask, w, lo, hi, c, agg):
    """verl 0.9.1's vanilla dual-clip PPO loss times ``w``, then its ``agg_loss``, in plain Python floats.

    Written from ``compute_policy_loss_vanilla`` / ``agg_loss`` in verl/trainer/ppo/core_algos.py
    with no torch arithmetic, one token at a time; ``global_batch_info`` empty (one process,
    ``seq-mean-token-sum-norm`` divides by the padded length ``t``). Returns ``(loss, metrics)``
    with verl's three metrics, means over the masked tokens.
    """
    old, logp, adv, mask, w = (x.double().tolist() for x in (old, logp, adv, mask, w))
    n, t = len(old), len(old[0])
    rows, kl, clipped, clipped_lower, n_tokens = [], 0.0, 0, 0, 0
    for i in range(n):
        row = []
        for j in range(t):
            if mask[i][j] == 0:
                continue
            log_ratio = min(20.0, max(-20.0, logp[i][j] - old[i][j]))
            ratio = math.exp(log_ratio)
            a = adv[i][j]
            pg1 = -a * ratio
            pg2 = -a * min(max(ratio, 1 - lo), 1 + hi)
            loss = max(pg1, pg2)
            clipped += pg2 > pg1
            if a < 0:  # dual clip
                clipped_lower += loss > -a * c
                loss = min(loss, -a * c)
            kl += -log_ratio
            n_tokens += 1
            row.append(loss * w[i][j])
        rows.append(row)
    seqs = [row for row in rows if row]  # verl leaves fully masked sequences out of the seq means
    if agg == "token-mean":
        loss = sum(sum(row) for row in seqs) / n_tokens
    elif agg == "token-sum":
        loss = sum(sum(row) for row in seqs)
    elif agg == "seq-mean-token-sum":
        loss = sum(sum(row) for row in seqs) / len(seqs)
    elif agg == "seq-mean-token-sum-norm":
        loss = sum(sum(row) for row in seqs) / len(seqs) / t
    elif agg == "seq-mean-token-mean":
        loss = sum(sum(row) / len(row) for row in seqs) / len(seqs)
    else:
        raise ValueError(agg)
    metrics = {
        "actor/pg_clipfrac": clipped / n_tokens,
        "actor/ppo_kl": kl / n_tokens,
        "actor/pg_clipfrac_lower": clipped_lower / n_tokens,
    }
    return loss, metrics


def make_holey_inputs(seed, n=10, t=7):
    """Like ``make_inputs`` but with a Bernoulli mask (holes inside sequences) and weights also off the mask."""
    old, new, adv, _, _ = make_inputs(seed, n, t, dtype=torch.float64)
    g = torch.Generator().manual_seed(1000 + seed)
    mask = (torch.rand(n, t, generator=g) < 0.6).double()
    mask[0] = 0.0  # an empty sequence
    mask[1] = 0.0
    mask[1, 3] = 1.0  # a single token in the middle
    mask[2] = 1.0
    mask[3, 0] = mask[4, 1] = 1.0  # keep the two tokens past the exponent clamp
    weights = 0.1 + torch.rand(n, t, generator=g, dtype=torch.float64) * 2.9  # in [0.1, 3], nonzero off the mask
    return old, new, adv, mask, weights


@pytest.mark.parametrize("seed", [2, 7])
@pytest.mark.parametrize("agg", AGG_MODES)
def test_weighted_loss_and_metrics_equal_plain_python_reference(agg, seed):
    old, new, adv, mask, w = make_holey_inputs(seed)
    loss, metrics = compute_teacher_policy_loss(old, new, adv, mask, w, 0.2, 0.28, 3.0, agg)
    expected, expected_metrics = plain_reference(old, new, adv, mask, w, 0.2, 0.28, 3.0, agg)
    # verl divides by (count + 1e-8) in seq-mean-token-mean and the metric means: rel 1e-7 covers it
    assert loss.item() == pytest.approx(expected, rel=1e-7, abs=1e-12)
    assert metrics == pytest.approx(expected_metrics, rel=1e-7, abs=1e-12)
    # the inputs exercise every branch, and the weights and the mask both change the number
    assert expected_metrics["actor/pg_clipfrac"] > 0 and expected_metrics["actor/pg_clipfrac_lower"] > 0
    assert expected != pytest.approx(plain_reference(old, new, adv, mask, torch.ones_like(w), 0.2, 0.28, 3.0, agg)[0])
    assert expected != pytest.approx(plain_reference(old, new, adv, torch.ones_like(mask), w, 0.2, 0.28, 3.0, agg)[0])


def _actor_config(**kw):
    return FSDPActorConfig(strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=1, **kw)


def test_registered_loss_is_ours_and_matches_direct_call_with_actor_config():
    assert get_policy_loss_fn("codistill_teacher") is codistill_teacher_policy_loss
    old, new, adv, mask, w = make_inputs(3)
    cfg = _actor_config(clip_ratio_low=0.1, clip_ratio_high=0.3, clip_ratio_c=2.0)
    fn = get_policy_loss_fn("codistill_teacher")
    loss, metrics = fn(
        old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask.bool(),
        loss_agg_mode="token-mean", config=cfg, rollout_is_weights=w,
    )  # fmt: skip
    direct, direct_metrics = compute_teacher_policy_loss(old, new, adv, mask.bool(), w, 0.1, 0.3, 2.0, "token-mean")
    assert torch.equal(loss, direct) and metrics == direct_metrics
    # the clip settings of the actor config reach the loss: the plain reference with (0.1, 0.3, 2.0)
    expected, expected_metrics = plain_reference(old, new, adv, mask, w, 0.1, 0.3, 2.0, "token-mean")
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics == pytest.approx(expected_metrics, rel=1e-5)
    assert expected_metrics["actor/pg_clipfrac"] > 0 and expected_metrics["actor/pg_clipfrac_lower"] > 0
    default_clip, _ = plain_reference(old, new, adv, mask, w, 0.2, 0.2, 3.0, "token-mean")
    assert expected != pytest.approx(default_clip, rel=1e-3)  # the settings matter for these inputs


def test_on_policy_first_step_value_and_gradient():
    """First update of the large model: log_prob == old_log_prob, so every ratio is 1 and nothing clips.

    Then the registered loss is ``-sum(w * A_l * m) / sum(m)`` under token-mean and
    ``mean over non-empty i of -sum_t(w A_l m)[i] / sum_t m[i]`` under seq-mean-token-mean,
    computed here with plain Python sums; the gradient w.r.t. log_prob is ``-w A_l m / sum(m)``.
    """
    old, _, adv, mask, w = make_holey_inputs(11)
    fn = get_policy_loss_fn("codistill_teacher")
    cfg = _actor_config(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    a, m, ww = adv.tolist(), mask.tolist(), w.tolist()
    n, t = len(a), len(a[0])
    terms = [[-ww[i][j] * a[i][j] * m[i][j] for j in range(t)] for i in range(n)]
    token_mean = sum(map(sum, terms)) / sum(map(sum, m))
    seq_means = [sum(terms[i]) / sum(m[i]) for i in range(n) if sum(m[i]) > 0]
    seq_mean_token_mean = sum(seq_means) / len(seq_means)

    log_prob = old.clone().requires_grad_(True)
    loss, metrics = fn(old, log_prob, adv, mask, "token-mean", cfg, w)
    assert loss.item() == pytest.approx(token_mean, rel=1e-9, abs=1e-12)
    assert metrics == {"actor/pg_clipfrac": 0.0, "actor/ppo_kl": 0.0, "actor/pg_clipfrac_lower": 0.0}
    loss.backward()
    expected_grad = torch.tensor(terms, dtype=torch.float64) / sum(map(sum, m))
    assert torch.allclose(log_prob.grad, expected_grad, rtol=1e-9, atol=1e-12)

    seq_loss, _ = fn(old, old.clone(), adv, mask, "seq-mean-token-mean", cfg, w)
    assert seq_loss.item() == pytest.approx(seq_mean_token_mean, rel=1e-7, abs=1e-12)
    assert token_mean != pytest.approx(seq_mean_token_mean, rel=1e-3)  # the two modes differ here


def test_on_policy_first_step_hand_worked():
    # ratio 1 everywhere; A = [[2, -1, 4], [1, 3, -2]], w = [[0.5, 2, 9], [1, 1, 0.25]],
    # m = [[1, 1, 0], [1, 1, 1]]: -w A m = [[-1, 2, 0], [-1, -3, 0.5]], sum -2.5 over 5 tokens
    # token-mean = -2.5 / 5 = -0.5; seq-mean-token-mean = ((-1 + 2) / 2 + (-1 - 3 + 0.5) / 3) / 2 = -1 / 3
    old = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.9, 0.3, 0.6]]))
    adv = torch.tensor([[2.0, -1.0, 4.0], [1.0, 3.0, -2.0]])
    w = torch.tensor([[0.5, 2.0, 9.0], [1.0, 1.0, 0.25]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    fn = get_policy_loss_fn("codistill_teacher")
    cfg = _actor_config()
    loss, _ = fn(old, old.clone(), adv, mask, "token-mean", cfg, w)
    assert loss.item() == pytest.approx(-0.5, abs=1e-6)
    seq_loss, _ = fn(old, old.clone(), adv, mask, "seq-mean-token-mean", cfg, w)
    assert seq_loss.item() == pytest.approx(-1 / 3, abs=1e-6)


def test_registered_loss_uses_global_batch_info():
    old, new, adv, mask, w = make_inputs(4)
    cfg = _actor_config()
    cfg.global_batch_info.update({"dp_size": 2, "batch_num_tokens": 50, "global_batch_size": None})
    loss, _ = codistill_teacher_policy_loss(old, new, adv, mask, "token-mean", cfg, w)
    expected = ref_loss(old, new, adv, mask, w, 0.2, 0.2, 3.0, "token-sum") / 50 * 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_registered_loss_requires_weights():
    old, new, adv, mask, _ = make_inputs(0)
    with pytest.raises(ValueError, match="needs rollout_is_weights \\(the batch field large_is_weights\\)"):
        codistill_teacher_policy_loss(old, new, adv, mask, "token-mean", _actor_config(), None)


def test_hand_worked_loss_and_gradient():
    # ratios rho = [[1.5, 1, 0.5], [4, 1, -]], A = [[1, 1, -1], [-1, -1, 0]], clip [0.8, 1.2], c = 3
    # per-token dual-clip loss: [[-1.2 (clipped), -1, 0.8 (clipped)], [3 (dual clip), 1, -]]
    # weights [[0.5, 2, 1], [1, 0.25, 7]] -> [-0.6, -2, 0.8, 3, 0.25]; token-mean = 1.45 / 5 = 0.29
    old = torch.zeros(2, 3)
    lp = torch.tensor([[math.log(1.5), 0.0, math.log(0.5)], [math.log(4.0), 0.0, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    w = torch.tensor([[0.5, 2.0, 1.0], [1.0, 0.25, 7.0]])
    loss, metrics = compute_teacher_policy_loss(old, lp, adv, mask, w, 0.2, 0.2, 3.0, "token-mean")
    assert loss.item() == pytest.approx(0.29, abs=1e-6)
    loss.backward()
    # only unclipped tokens carry gradient: d(-A w rho)/dlogp / 5 = -1*2*1/5 and +1*0.25*1/5
    expected_grad = torch.tensor([[0.0, -0.4, 0.0], [0.0, 0.05, 0.0]])
    assert torch.allclose(lp.grad, expected_grad, atol=1e-6)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(2 / 5)  # (0,0) and (0,2)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(1 / 5)  # (1,0)
    seq, _ = compute_teacher_policy_loss(old, lp, adv, mask, w, 0.2, 0.2, 3.0, "seq-mean-token-mean")
    assert seq.item() == pytest.approx(((-0.6 - 2 + 0.8) / 3 + (3 + 0.25) / 2) / 2, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_loss_and_grad_for_extreme_inputs(dtype):
    old, new, adv, mask, w = make_inputs(5, dtype=dtype)
    big = torch.finfo(dtype).max
    new[5, :], old[5, :] = big, -big
    new[6, :], old[6, :] = -big, big
    lp = new.clone().requires_grad_(True)
    loss, _ = compute_teacher_policy_loss(old, lp, adv, mask, w)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
