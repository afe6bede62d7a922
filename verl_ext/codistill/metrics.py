"""``small/`` and ``large/`` metric dicts built from tensors the algorithm already computed.

Each helper stacks its scalars and moves them to the host once (one device sync per call);
values are python floats. All means are over valid tokens (``response_mask``); with no valid
token every metric is 0.0.
"""

from __future__ import annotations

import torch

__all__ = ["compute_small_metrics", "compute_is_metrics", "SMALL_METRIC_KEYS", "LARGE_IS_METRIC_KEYS"]

SMALL_METRIC_KEYS = (
    "small/kd_reward_mean",
    "small/kd_reverse_kl",
    "small/adv_reward_part_abs",
    "small/adv_kd_part_abs",
)
LARGE_IS_METRIC_KEYS = (
    "large/is_weight_mean",
    "large/is_weight_max",
    "large/is_weight_min",
    "large/is_clip_frac",
    "large/is_ess",
    "large/logprob_gap",
)


def _token_sum(part: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sum of ``part`` over valid tokens; ``part`` is ``(bs, T)`` or per-sequence ``(bs,)``."""
    if part.dim() == 1:
        return (part * lengths).sum()
    return (part * mask).sum()


@torch.no_grad()
def compute_small_metrics(
    kd_reward: torch.Tensor,
    reward_part: torch.Tensor,
    kd_part: torch.Tensor,
    response_mask: torch.Tensor,
) -> dict[str, float]:
    """Small-model metrics.

    ``small/kd_reward_mean = mean d``, ``small/kd_reverse_kl = mean(-d)``,
    ``small/adv_reward_part_abs = mean |A_R|``, ``small/adv_kd_part_abs = mean |beta * K|``,
    means over valid tokens.

    Args:
        kd_reward: ``(bs, T)`` ``d`` (0 on masked tokens).
        reward_part: ``(bs,)`` or ``(bs, T)`` ``A_R``.
        kd_part: ``(bs,)`` or ``(bs, T)`` ``beta * K``.
        response_mask: ``(bs, T)``.
    """
    mask = response_mask.to(kd_reward.dtype)
    lengths = mask.sum(-1)
    n = lengths.sum().clamp_min(1.0)
    d_sum = (kd_reward * mask).sum()
    values = torch.stack(
        [
            d_sum / n,
            -d_sum / n,
            _token_sum(reward_part.abs().to(mask.dtype), mask, lengths) / n,
            _token_sum(kd_part.abs().to(mask.dtype), mask, lengths) / n,
        ]
    )
    return dict(zip(SMALL_METRIC_KEYS, values.tolist()))


@torch.no_grad()
def compute_is_metrics(
    weights: torch.Tensor,
    changed: torch.Tensor,
    log_w: torch.Tensor,
    response_mask: torch.Tensor,
) -> dict[str, float]:
    """Large-model importance-weight metrics over valid tokens.

    ``is_weight_mean|max|min`` of the applied weights ``w``; ``is_clip_frac``: fraction of valid
    tokens whose weight truncation or masking changed; ``is_ess = (sum w)^2 / (n * sum w^2)``
    (0 when every weight is 0); ``logprob_gap = mean(ll - ls)``.

    Args:
        weights: ``(bs, T)`` applied weights, 0 on masked tokens.
        changed: bool, ``(bs, T)`` or per-sequence ``(bs, 1)``.
        log_w: ``(bs, T)`` ``ll - ls``, 0 on masked tokens (not clamped).
        response_mask: ``(bs, T)``.
    """
    valid = response_mask.bool()
    mask = valid.to(weights.dtype)
    count = mask.sum()
    n = count.clamp_min(1.0)
    has_tokens = count > 0
    zero = torch.zeros((), dtype=weights.dtype, device=weights.device)
    sum_w = weights.sum()
    sum_w2 = (weights * weights).sum()
    w_max = weights.masked_fill(~valid, -torch.inf).amax()
    w_min = weights.masked_fill(~valid, torch.inf).amin()
    ess_den = count * sum_w2
    values = torch.stack(
        [
            sum_w / n,
            torch.where(has_tokens, w_max, zero),
            torch.where(has_tokens, w_min, zero),
            (changed & valid).to(weights.dtype).sum() / n,
            torch.where(ess_den > 0, sum_w * sum_w / torch.where(ess_den > 0, ess_den, 1.0), zero),
            log_w.to(weights.dtype).sum() / n,
        ]
    )
    return dict(zip(LARGE_IS_METRIC_KEYS, values.tolist()))
