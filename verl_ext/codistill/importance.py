"""Large-model importance weights and advantage (ALGORITHM.md section B).

The large model trains on the small model's samples, so each token is reweighted by the
detached ratio ``w = pi_l_old / pi_s_old``, computed in log space.

Why not verl's ``rollout_corr_helper.compute_rollout_correction_weights``: for
``level in {token, sequence}`` x ``mode in {truncate, mask}`` without self-normalisation its
weights are the same numbers (a test asserts equality), but it (1) has no ``geo_mean`` level,
(2) self-normalises sequence-level weights by the mean over sequences and, under
``torch.distributed``, over all ranks, where the spec normalises by the mean over valid tokens of
the batch, (3) raises on a batch without valid tokens, and (4) computes ~20 metrics with one
host sync each. This module implements the spec directly, with one host sync for its metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .advantage import _check_2d, _result_dtype, group_ids, group_mean_std, outcome_advantage
from .config import IS_LEVELS, IS_MODES, LARGE_ADVANTAGES
from .metrics import is_metrics_from_sums

__all__ = ["compute_large_is_weights", "compute_large_advantage", "SAFETY_BOUND"]

SAFETY_BOUND = 20.0  # exponents are clamped to [-20, 20] before exp (same bound as verl's helper)
# Per-token log-ratios are clipped to +-LOG_RATIO_BOUND before any sum: far beyond any real log-prob
# gap (every exponent saturates at +-20 anyway), it keeps finite inputs whose difference overflows
# from producing inf - inf = nan in a sequence sum.
LOG_RATIO_BOUND = 1.0e4


def _log_ratio(small_log_probs, large_log_probs, mask, dtype):
    """``(ll - ls) * m`` in ``dtype``, clipped to ``+-LOG_RATIO_BOUND`` (finite, so the mask product is safe)."""
    gap = large_log_probs.to(dtype) - small_log_probs.to(dtype)
    return gap.clamp_(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).mul_(mask)


@torch.no_grad()
def compute_large_is_weights(
    small_log_probs: torch.Tensor,
    large_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    level: str = "token",
    mode: str = "truncate",
    threshold: float = 2.0,
    self_normalize: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Importance weights of the large model against the sampler ``pi_s_old``.

    ``log_w[i,t] = (ll[i,t] - ls[i,t]) * m[i,t]`` (clipped to +-1e4); the weight by ``level``:
    ``token``: ``exp(log_w[i,t])``; ``sequence``: ``exp(sum_t log_w[i,t])``;
    ``geo_mean``: ``exp(sum_t log_w[i,t] / sum_t m[i,t])`` (exponent clamped to [-20, 20]).
    Then by ``mode`` with ``C = threshold``: ``truncate``: ``min(w, C)``; ``mask``: ``w`` if
    ``1/C <= w <= C`` else 0; ``none``: 1. Weights are multiplied by ``m``; ``self_normalize``
    divides by their mean over valid tokens of the batch.

    Args:
        small_log_probs, large_log_probs: ``(bs, T)`` ``ls`` and ``ll``.
        response_mask: ``(bs, T)``.
        level: ``token`` | ``sequence`` | ``geo_mean``.
        mode: ``truncate`` | ``mask`` | ``none``.
        threshold: ``C > 0`` (``>= 1`` for ``mask``).
        self_normalize: divide by the batch mean weight.

    Returns:
        weights: ``(bs, T)``, detached, float32 (or wider if an input is wider).
        metrics: python floats: ``large/is_weight_mean|max|min``, ``large/is_clip_frac`` (fraction of
            valid tokens whose weight truncation/masking changed), ``large/is_ess``
            (``(sum w)^2 / (n sum w^2)`` over valid tokens), ``large/logprob_gap`` (mean ``log_w``);
            with ``self_normalize`` also ``large/is_norm_factor`` (the batch mean divided out).
    """
    if level not in IS_LEVELS:
        raise ValueError(f"is level={level!r} not in {list(IS_LEVELS)}")
    if mode not in IS_MODES:
        raise ValueError(f"is mode={mode!r} not in {list(IS_MODES)}")
    if not threshold > 0 or (mode == "mask" and threshold < 1):
        raise ValueError(f"is threshold={threshold!r} must be > 0 (>= 1 for mode='mask')")
    _check_2d("large_log_probs", large_log_probs, small_log_probs.shape)
    _check_2d("response_mask", response_mask, small_log_probs.shape)

    dtype = _result_dtype(small_log_probs, large_log_probs)
    mask = response_mask.to(dtype)
    lengths = mask.sum(-1)
    n = lengths.sum()
    log_w = _log_ratio(small_log_probs, large_log_probs, mask, dtype)

    if level == "token":
        raw = log_w.clamp(-SAFETY_BOUND, SAFETY_BOUND).exp_().mul_(mask)  # (bs, T), 0 on masked tokens
        if mode == "truncate":
            changed = torch.count_nonzero(raw > threshold)
            weights = raw.clamp_(max=threshold)
        elif mode == "mask":
            keep = (raw >= 1.0 / threshold) & (raw <= threshold)  # masked tokens (0) are never kept
            changed = n - torch.count_nonzero(keep)
            weights = raw.mul_(keep)
        else:
            changed, weights = n * 0, mask.clone()
        stats = _token_weight_stats(weights, mask)
    else:
        # sequence levels: one weight per response, statistics on (bs,) weighted by length
        exponent = log_w.sum(-1)
        if level == "geo_mean":
            exponent = exponent / lengths.clamp_min(1.0)
        seq_w = exponent.clamp_(-SAFETY_BOUND, SAFETY_BOUND).exp_()
        if mode == "truncate":
            seq_changed = seq_w > threshold
            seq_w = seq_w.clamp_(max=threshold)
        elif mode == "mask":
            seq_changed = (seq_w < 1.0 / threshold) | (seq_w > threshold)
            seq_w = seq_w.masked_fill_(seq_changed, 0.0)
        else:
            seq_changed, seq_w = torch.zeros_like(seq_w, dtype=torch.bool), torch.ones_like(seq_w)
        changed = (seq_changed * lengths).sum()
        weights = seq_w.unsqueeze(-1) * mask
        stats = _seq_weight_stats(seq_w, lengths)

    sum_w, sum_w2, w_max, w_min = stats
    norm = None
    if self_normalize:
        norm = sum_w / n.clamp_min(1.0)
        scale = torch.where(norm > 0, norm, 1.0)
        weights = weights.div_(scale)
        sum_w, sum_w2, w_max, w_min = sum_w / scale, sum_w2 / (scale * scale), w_max / scale, w_min / scale

    metrics = is_metrics_from_sums(sum_w, sum_w2, w_max, w_min, changed, log_w.sum(), n)
    if norm is not None:
        metrics["large/is_norm_factor"] = norm.item()
    return weights.detach(), metrics


def _token_weight_stats(weights: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``sum w, sum w^2, max w, min w`` over valid tokens of zero-masked, non-negative ``(bs, T)`` weights."""
    flat = weights.reshape(-1)
    w_min = torch.where(mask > 0, weights, torch.inf).amin() if weights.numel() else weights.new_zeros(())
    return weights.sum(), torch.dot(flat, flat), weights.amax() if weights.numel() else w_min, w_min


def _seq_weight_stats(seq_w: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same statistics from per-response weights ``(bs,)`` repeated on ``lengths`` valid tokens."""
    has = lengths > 0
    w_max = torch.where(has, seq_w, -torch.inf).amax() if seq_w.numel() else seq_w.new_zeros(())
    w_min = torch.where(has, seq_w, torch.inf).amin() if seq_w.numel() else seq_w.new_zeros(())
    return (seq_w * lengths).sum(), (seq_w * seq_w * lengths).sum(), w_max, w_min


@torch.no_grad()
def compute_large_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | Any,
    small_log_probs: torch.Tensor,
    large_log_probs: torch.Tensor,
    estimator: str = "grpo",
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Large-model advantage ``A_l[i] * m[i,t]``.

    ``grpo``: ``A_l[i] = A_R[i]``, verl's GRPO outcome advantage.
    ``is_baseline``: ``A_l[i] = (r_i - b_g) / (std_g r + eps)`` (or ``r_i - b_g``) with
    ``b_g = sum_j W_j r_j / sum_j W_j``, ``W_j = exp(clamp(sum_t log_w[j,t], -20, 20))`` over the
    group, ``std_g`` the unbiased std of ``r`` (1 for a group of size 1).

    Args:
        token_level_rewards: ``(bs, T)``; the outcome reward is its sum over ``T``.
        response_mask: ``(bs, T)``.
        index: ``(bs,)`` group labels (``uid``).
        small_log_probs, large_log_probs: ``(bs, T)`` ``ls`` and ``ll`` (used by ``is_baseline``).
        estimator: ``grpo`` | ``is_baseline``.

    Returns:
        advantages, returns: both ``(bs, T)``, the same tensor.
    """
    if estimator not in LARGE_ADVANTAGES:
        raise ValueError(f"large advantage estimator={estimator!r} not in {list(LARGE_ADVANTAGES)}")
    shape = token_level_rewards.shape
    _check_2d("response_mask", response_mask, shape)
    dtype = _result_dtype(token_level_rewards, small_log_probs, large_log_probs)
    if estimator == "grpo":  # the small model's outcome part, the same function
        adv = outcome_advantage(token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo, dtype)
        return adv, adv
    _check_2d("small_log_probs", small_log_probs, shape)
    _check_2d("large_log_probs", large_log_probs, shape)
    r = token_level_rewards.sum(dim=-1).to(torch.float64)
    gidx, num_groups = group_ids(index, shape[0], r.device)
    log_w = _log_ratio(small_log_probs, large_log_probs, response_mask.to(dtype), dtype)
    seq_w = torch.exp(log_w.sum(-1).to(torch.float64).clamp(-SAFETY_BOUND, SAFETY_BOUND))
    zeros = torch.zeros(num_groups, dtype=torch.float64, device=r.device)
    baseline = (zeros.index_add(0, gidx, seq_w * r) / zeros.index_add(0, gidx, seq_w))[gidx]
    scalar = r - baseline
    if norm_adv_by_std_in_grpo:
        _, std = group_mean_std(r, gidx, num_groups)
        scalar = scalar / (std + epsilon)
    adv = scalar.to(dtype).unsqueeze(-1) * response_mask.to(dtype)
    return adv, adv
