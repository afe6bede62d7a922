"""``small/`` and ``large/`` metric dicts built from tensors the algorithm already computed.

Each helper stacks its scalars and moves them to the host once (one device sync per call);
values are python floats. All means are over valid tokens (``response_mask``); with no valid
token every metric is 0.0.
"""

from __future__ import annotations

import torch

__all__ = [
    "compute_small_metrics",
    "is_metrics_from_sums",
    "rollout_mismatch_metrics",
    "SMALL_METRIC_KEYS",
    "LARGE_IS_METRIC_KEYS",
]

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


def _abs_token_sum(part: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``sum |part|`` over valid tokens; ``part`` is per-sequence ``(bs,)`` or ``(bs, T)`` zero-masked."""
    if part.dim() == 1:
        return (part.abs() * lengths).sum()
    return torch.linalg.vector_norm(part, ord=1)


@torch.no_grad()
def compute_small_metrics(
    kd_reward: torch.Tensor,
    reward_part: torch.Tensor,
    kd_part: torch.Tensor,
    response_mask: torch.Tensor,
    kd_coef: float = 1.0,
) -> dict[str, float]:
    """Small-model metrics.

    ``small/kd_reward_mean = mean d``, ``small/kd_reverse_kl = mean(-d)``,
    ``small/adv_reward_part_abs = mean |A_R|``, ``small/adv_kd_part_abs = mean |kd_coef * K|``,
    means over valid tokens.

    Args:
        kd_reward: ``(bs, T)`` ``d``, 0 on masked tokens.
        reward_part: ``(bs,)`` or ``(bs, T)`` ``A_R`` (a ``(bs, T)`` part must be 0 on masked tokens).
        kd_part: ``(bs,)`` or ``(bs, T)`` ``K`` (idem).
        response_mask: ``(bs, T)``.
        kd_coef: ``beta``, multiplies ``kd_part``.
    """
    lengths = response_mask.sum(-1).to(kd_reward.dtype)
    n = lengths.sum().clamp_min(1.0)
    d_sum = kd_reward.sum()
    values = torch.stack(
        [
            d_sum / n,
            -d_sum / n,
            _abs_token_sum(reward_part.to(kd_reward.dtype), lengths) / n,
            abs(kd_coef) * _abs_token_sum(kd_part.to(kd_reward.dtype), lengths) / n,
        ]
    )
    return dict(zip(SMALL_METRIC_KEYS, values.tolist()))


def is_metrics_from_sums(
    sum_w: torch.Tensor,
    sum_w2: torch.Tensor,
    w_max: torch.Tensor,
    w_min: torch.Tensor,
    changed: torch.Tensor,
    log_w_sum: torch.Tensor,
    n: torch.Tensor,
) -> dict[str, float]:
    """The ``large/`` IS metrics from 0-dim sums over the ``n`` valid tokens (one host sync).

    ``is_weight_mean = sum_w / n``; ``is_ess = sum_w^2 / (n * sum_w2)`` (0 when every weight is 0);
    ``is_clip_frac = changed / n``; ``logprob_gap = log_w_sum / n``; all 0 when ``n = 0``.
    """
    dtype = sum_w.dtype
    n = n.to(dtype)
    safe_n = n.clamp_min(1.0)
    has_tokens = n > 0
    zero = torch.zeros((), dtype=dtype, device=sum_w.device)
    ess_den = n * sum_w2
    values = torch.stack(
        [
            sum_w / safe_n,
            torch.where(has_tokens, w_max.to(dtype), zero),
            torch.where(has_tokens, w_min.to(dtype), zero),
            changed.to(dtype) / safe_n,
            torch.where(ess_den > 0, sum_w * sum_w / torch.where(ess_den > 0, ess_den, 1.0), zero),
            log_w_sum.to(dtype) / safe_n,
        ]
    )
    return dict(zip(LARGE_IS_METRIC_KEYS, values.tolist()))


@torch.no_grad()
def rollout_mismatch_metrics(
    rollout_log_probs: torch.Tensor, small_log_probs: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, float]:
    """Mismatch between the rollout engine's log-probs and the small actor's recomputed ones.

    ``small/rollout_logprob_diff_mean`` and ``_max``: mean and max of ``|rollout_log_probs - ls|``
    over valid tokens (0.0 without valid tokens); one host sync.

    Args:
        rollout_log_probs: ``(bs, T)`` the sampler's own log-probs (vLLM, or the CPU rollout).
        small_log_probs: ``(bs, T)`` ``ls``, the FSDP actor's recomputation.
        response_mask: ``(bs, T)``.
    """
    valid = response_mask.bool()
    diff = (rollout_log_probs.double() - small_log_probs.double()).abs().masked_fill(~valid, 0.0)
    n = valid.sum()
    values = torch.stack([diff.sum() / n.clamp_min(1), diff.amax() if diff.numel() else diff.sum()])
    mean, mx = values.tolist()
    return {"small/rollout_logprob_diff_mean": mean, "small/rollout_logprob_diff_max": mx}
