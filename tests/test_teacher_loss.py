"""The large model's loss as training calls it: verl's registry entry ``codistill_teacher`` and the
recipe's ``large_actor_loss`` (the large worker's loss function), against a reference written here
from docs/algorithm.md part B, one token at a time:

    rho[i,t] = exp(clamp(logp[i,t] - ll[i,t], -20, 20))
    l[i,t]   = max(-A rho, -A clip(rho, 1 - eps_lo, 1 + eps_hi)), then min(l, -A c) where A < 0
    L_l      = agg(w[i,t] * l[i,t], m)

What the project adds over verl's vanilla loss is the per-token weight ``w`` (the batch field
``large_is_weights``), the refusal of a missing weight tensor, and the mapping of the large model's
own fields onto verl's names; those are what these tests hold.
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig

from recipe.codistill_grpo.trainer import large_actor_loss
from verl_ext.codistill.teacher_loss import codistill_teacher_policy_loss

LO, HI, C = 0.15, 0.25, 2.5  # distinct clip settings, so a config that does not reach the loss shows


def actor_config(agg="token-mean", lo=LO, hi=HI, c=C):
    return FSDPActorConfig(
        strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=1, loss_agg_mode=agg,
        clip_ratio_low=lo, clip_ratio_high=hi, clip_ratio_c=c, policy_loss={"loss_mode": "codistill_teacher"},
    )  # fmt: skip


def token_loss(logp, old, a, lo, hi, c):
    """One token's dual-clip surrogate (scalars; ``logp`` may carry grad)."""
    rho = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    clipped = torch.clamp(rho, 1 - lo, 1 + hi)
    loss = torch.maximum(-a * rho, -a * clipped)
    if a < 0:
        loss = torch.minimum(loss, torch.tensor(-a * c, dtype=loss.dtype))
    return loss


def reference(logp_at, old, adv, mask, w, lo=LO, hi=HI, c=C, agg="token-mean", num_tokens=None, dp_size=1):
    """``L_l`` by loops. ``logp_at(i, t)`` gives the new log-prob of token t of sequence i.

    token-mean divides by ``num_tokens`` (the global count verl passes; default the batch's) and
    multiplies by ``dp_size``; seq-mean-token-mean averages the per-sequence token means over the
    sequences with at least one valid token.
    """
    n, t_len = old.shape
    seqs = []
    for i in range(n):
        terms = [
            float(w[i, t]) * token_loss(logp_at(i, t), float(old[i, t]), float(adv[i, t]), lo, hi, c)
            for t in range(t_len)
            if mask[i, t] != 0
        ]
        seqs.append(terms)
    if agg == "token-mean":
        count = num_tokens if num_tokens is not None else sum(len(s) for s in seqs)
        return sum(x for s in seqs for x in s) / count * dp_size
    if agg == "seq-mean-token-mean":
        means = [sum(s) / len(s) for s in seqs if s]
        return sum(means) / len(means)
    raise ValueError(agg)


def make_inputs(seed, n=7, t=6):
    """Float64 inputs that reach every branch: holes in the mask, an empty sequence, ratios in and
    beyond the clip range (both signs of A), two exponents past the +-20 clamp, weights in [0.1, 3]
    everywhere (also off the mask)."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 4
    new = old + torch.randn(n, t, generator=g, dtype=torch.float64) * 0.5
    new[1, 0] = old[1, 0] + 30.0
    new[2, 1] = old[2, 1] - 30.0
    adv = torch.randn(n, t, generator=g, dtype=torch.float64)
    adv[1, 0], adv[2, 1] = -1.0, 1.0
    mask = (torch.rand(n, t, generator=g) < 0.7).double()
    mask[0] = 0.0
    mask[1, 0] = mask[2, 1] = 1.0
    w = 0.1 + 2.9 * torch.rand(n, t, generator=g, dtype=torch.float64)
    return old, new, adv, mask, w


# ---- verl's registry: the function training's ppo_loss looks up ----------------------------------


def test_registry_entry_is_the_project_loss():
    assert get_policy_loss_fn("codistill_teacher") is codistill_teacher_policy_loss


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("seed", [0, 3])
def test_registered_loss_and_gradient_match_reference(agg, seed):
    old, new, adv, mask, w = make_inputs(seed)
    fn = get_policy_loss_fn("codistill_teacher")
    lp = new.clone().requires_grad_(True)
    loss, _ = fn(old, lp, adv, mask.bool(), agg, actor_config(agg), w)
    loss.backward()
    lp_ref = new.clone().requires_grad_(True)
    expected = reference(lambda i, t: lp_ref[i, t], old, adv, mask, w, agg=agg)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(lp.grad, lp_ref.grad, rtol=1e-9, atol=1e-12)
    assert lp.grad[1, 0] == 0 and lp.grad[2, 1] == 0  # past the exponent clamp: no gradient
    assert torch.all(lp.grad[mask == 0] == 0)
    # the inputs are not degenerate: the weights and the clip settings both change the number
    unweighted = reference(lambda i, t: new[i, t], old, adv, mask, torch.ones_like(w), agg=agg)
    default_clip = reference(lambda i, t: new[i, t], old, adv, mask, w, 0.2, 0.2, 3.0, agg=agg)
    assert expected.item() != pytest.approx(unweighted.item(), rel=1e-3)
    assert expected.item() != pytest.approx(default_clip.item(), rel=1e-3)


def test_hand_worked_loss_and_gradient():
    # ratios rho = [[1.5, 1, 0.5], [4, 1, -]], A = [[1, 1, -1], [-1, -1, 0]], clip [0.8, 1.2], c = 3
    # per-token loss: [[-1.2 (clipped), -1, 0.8 (clipped)], [3 (dual clip), 1, -]]
    # w = [[0.5, 2, 1], [1, 0.25, 7]] -> [-0.6, -2, 0.8, 3, 0.25], sum 1.45 over 5 tokens: 0.29
    old = torch.zeros(2, 3)
    lp = torch.tensor([[math.log(1.5), 0.0, math.log(0.5)], [math.log(4.0), 0.0, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    w = torch.tensor([[0.5, 2.0, 1.0], [1.0, 0.25, 7.0]])
    cfg = actor_config(lo=0.2, hi=0.2, c=3.0)
    loss, metrics = codistill_teacher_policy_loss(old, lp, adv, mask, "token-mean", cfg, w)
    assert loss.item() == pytest.approx(0.29, abs=1e-6)
    loss.backward()
    # only the unclipped tokens carry gradient, d(-A w rho)/dlogp / 5: -1 * 2 / 5 and +1 * 0.25 / 5
    assert torch.allclose(lp.grad, torch.tensor([[0.0, -0.4, 0.0], [0.0, 0.05, 0.0]]), atol=1e-6)
    # seq-mean-token-mean: ((-0.6 - 2 + 0.8) / 3 + (3 + 0.25) / 2) / 2 = (-0.6 + 1.625) / 2 = 0.5125
    seq, _ = codistill_teacher_policy_loss(old, lp, adv, mask, "seq-mean-token-mean", cfg, w)
    assert seq.item() == pytest.approx(0.5125, abs=1e-6)


def test_weights_multiply_each_token():
    old, new, adv, mask, w = make_inputs(5)
    cfg = actor_config()
    base, _ = codistill_teacher_policy_loss(old, new, adv, mask, "token-mean", cfg, w)
    i, t = map(int, torch.nonzero(mask)[3])
    l_it = token_loss(new[i, t], float(old[i, t]), float(adv[i, t]), LO, HI, C).item()
    assert abs(l_it) > 1e-3
    w2 = w.clone()
    w2[i, t] += 1.75  # one token's weight: the loss moves by exactly 1.75 * l[i,t] / (valid tokens)
    moved, _ = codistill_teacher_policy_loss(old, new, adv, mask, "token-mean", cfg, w2)
    assert (moved - base).item() == pytest.approx(1.75 * l_it / mask.sum().item(), rel=1e-9)
    w2[i, t] = 0.0  # a zero weight removes the token's term and nothing else
    zeroed, _ = codistill_teacher_policy_loss(old, new, adv, mask, "token-mean", cfg, w2)
    assert (base - zeroed).item() == pytest.approx(float(w[i, t]) * l_it / mask.sum().item(), rel=1e-9)
    tripled, _ = codistill_teacher_policy_loss(old, new, adv, mask, "token-mean", cfg, 3 * w)
    assert tripled.item() == pytest.approx(3 * base.item(), rel=1e-12)


def test_masked_tokens_contribute_nothing():
    old, new, adv, mask, w = make_inputs(6)
    cfg = actor_config()
    off = mask == 0
    lp = new.clone().requires_grad_(True)
    loss, _ = codistill_teacher_policy_loss(old, lp, adv, mask, "token-mean", cfg, w)
    loss.backward()
    # wild values on every masked token: huge weights and advantages, ratios far outside the clip
    old2, adv2, w2 = old.clone(), adv.clone(), w.clone()
    old2[off], adv2[off], w2[off] = -50.0, -1e6, 1e6
    lp2 = new.clone()
    lp2[off] = 0.0
    lp2.requires_grad_(True)
    loss2, _ = codistill_teacher_policy_loss(old2, lp2, adv2, mask, "token-mean", cfg, w2)
    loss2.backward()
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-12)
    assert torch.all(lp2.grad[off] == 0) and torch.equal(lp2.grad, lp.grad)


def test_missing_weights_raise():
    old, new, adv, mask, _ = make_inputs(0)
    fn = get_policy_loss_fn("codistill_teacher")
    with pytest.raises(ValueError, match=r"needs rollout_is_weights \(the batch field large_is_weights\)"):
        fn(old, new, adv, mask, "token-mean", actor_config(), None)


def test_weights_carry_no_gradient():
    old, new, adv, mask, w = make_inputs(2)
    w = w.clone().requires_grad_(True)
    lp = new.clone().requires_grad_(True)
    loss, _ = codistill_teacher_policy_loss(old, lp, adv, mask, "token-mean", actor_config(), w)
    loss.backward()
    assert w.grad is None and lp.grad is not None


# ---- large_actor_loss: the large worker's loss, on the large model's own batch fields ------------


def worker_batch(seed, n=5, p=3, t=6):
    """A padded micro-batch as the large worker's loss sees it, and the flat (no-padding) log-probs.

    Prompts are left padded and responses right padded (``attention_mask``); ``large_response_mask``
    has holes inside the responses (the post-rejection mask), unlike the attention mask. verl's
    fields of the same names hold the small model's values (decoys): the loss must not read them.
    Returns ``(data, log_probs_flat, positions)``; ``positions[i][t]`` is token (i, t)'s index in
    the flat tensor (the model predicts token t at the position before it).
    """
    old, new, adv, mask, w = make_inputs(seed, n, t)
    g = torch.Generator().manual_seed(100 + seed)
    prompt_lens = torch.randint(1, p + 1, (n,), generator=g)
    resp_lens = torch.randint(2, t + 1, (n,), generator=g)
    resp_lens[1] = resp_lens[2] = t  # keep the two tokens past the exponent clamp
    attn = torch.zeros(n, p + t, dtype=torch.long)
    for i in range(n):
        attn[i, p - prompt_lens[i] : p + resp_lens[i]] = 1
    in_response = (torch.arange(t)[None, :] < resp_lens[:, None]).double()
    large_mask = mask * in_response
    positions, flat, offset = [], [], 0
    for i in range(n):
        seq_len = int(prompt_lens[i] + resp_lens[i])
        values = torch.randn(seq_len, generator=g, dtype=torch.float64) - 3  # prompt positions: noise
        values[int(prompt_lens[i]) - 1 : seq_len - 1] = new[i, : int(resp_lens[i])]
        positions.append([offset + int(prompt_lens[i]) - 1 + k for k in range(t)])
        flat.append(values)
        offset += seq_len
    data = TensorDict(
        {
            "prompts": torch.ones(n, p, dtype=torch.long),
            "responses": torch.ones(n, t, dtype=torch.long),
            "attention_mask": attn,
            "large_old_log_probs": old,
            "large_advantages": adv,
            "large_response_mask": large_mask,
            "large_is_weights": w,
            "old_log_probs": old - 1.0,
            "advantages": -adv,
            "response_mask": in_response,
            "rollout_is_weights": torch.ones_like(w),
        },
        batch_size=[n],
    )
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    return data, torch.cat(flat), positions


def test_large_actor_loss_reads_the_large_fields():
    data, flat, pos = worker_batch(1)
    lp = flat.clone().requires_grad_(True)
    loss, metrics = large_actor_loss(actor_config(), {"log_probs": lp}, data)
    loss.backward()
    lp_ref = flat.clone().requires_grad_(True)
    old, adv, mask, w = (data[k] for k in ("large_old_log_probs", "large_advantages", "large_response_mask",
                                           "large_is_weights"))  # fmt: skip
    expected = reference(lambda i, t: lp_ref[pos[i][t]], old, adv, mask, w)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(lp.grad, lp_ref.grad, rtol=1e-9, atol=1e-12)
    assert lp.grad.abs().sum() > 0 and "actor/pg_loss" in metrics
    # the decoys would give another number: verl's own fields are not what the loss reads
    decoy = reference(lambda i, t: flat[pos[i][t]], data["old_log_probs"], data["advantages"],
                      data["response_mask"], data["rollout_is_weights"])  # fmt: skip
    assert expected.item() != pytest.approx(decoy.item(), rel=1e-3)
    # the caller's micro-batch is left as it was (the mapping is on a copy)
    assert torch.equal(data["rollout_is_weights"], torch.ones_like(w))


def test_large_actor_loss_without_large_is_weights_raises():
    data, flat, _ = worker_batch(2)
    del data["large_is_weights"]
    with pytest.raises(KeyError, match="large_is_weights"):
        large_actor_loss(actor_config(), {"log_probs": flat}, data)


def test_large_actor_loss_with_the_recipes_large_config_and_global_token_count():
    """The config training passes (the recipe's large worker config, as a dataclass) and verl's
    global normalisation: token-mean divides by the global token count, times dp_size."""
    from verl.utils.config import omega_conf_to_dataclass

    from recipe.codistill_grpo.configuration import build_large_worker_config, compose_config

    cfg = omega_conf_to_dataclass(build_large_worker_config(compose_config("toy", "codistill")).actor)
    assert cfg.policy_loss.loss_mode == "codistill_teacher" and cfg.loss_agg_mode == "token-mean"
    data, flat, pos = worker_batch(4)
    tu.assign_non_tensor(data, dp_size=2, batch_num_tokens=57, global_batch_size=None)
    loss, _ = large_actor_loss(cfg, {"log_probs": flat}, data)
    expected = reference(lambda i, t: flat[pos[i][t]], data["large_old_log_probs"], data["large_advantages"],
                         data["large_response_mask"], data["large_is_weights"], cfg.clip_ratio_low,
                         cfg.clip_ratio_high, cfg.clip_ratio_c, num_tokens=57, dp_size=2)  # fmt: skip
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)


def test_explicit_settings_entry_is_the_same_loss():
    """``compute_teacher_policy_loss`` (the public entry with explicit clip settings, for callers
    outside verl's config) against the loop reference, with non-default clips and both aggregations."""
    from verl_ext.codistill import compute_teacher_policy_loss

    old, new, adv, mask, w = make_inputs(5)
    for agg in ("token-mean", "seq-mean-token-mean"):
        loss, _ = compute_teacher_policy_loss(
            old, new, adv, mask.bool(), w, clip_ratio_low=0.1, clip_ratio_high=0.3, clip_ratio_c=2.5, loss_agg_mode=agg
        )
        want = float(reference(lambda i, t: new[i, t], old, adv, mask, w, lo=0.1, hi=0.3, c=2.5, agg=agg))
        assert float(loss) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="is_weights is None"):
        compute_teacher_policy_loss(old, new, adv, mask, None)
