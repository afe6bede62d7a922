"""Reweighted large-model (teacher) policy loss.

``rho[i,t] = exp(clamp(log pi_l_theta - ll, -20, 20))``
``L_l = agg( w[i,t] * dualclip_ppo(rho, A_l)[i,t], m, loss_agg_mode )``

verl's ``compute_policy_loss_vanilla`` already multiplies each token's dual-clip loss by
``rollout_is_weights`` before ``agg_loss``, which is exactly this loss with ``rollout_is_weights = w``;
both entry points below delegate to it instead of re-deriving the PPO objective.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

__all__ = ["compute_teacher_policy_loss", "codistill_teacher_policy_loss"]


def compute_teacher_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    is_weights: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    global_batch_info: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Teacher loss with explicit clip settings (single process unless ``global_batch_info`` is given).

    Args:
        old_log_prob: ``(bs, T)`` ``ll``, the large model's log-probs before the update.
        log_prob: ``(bs, T)`` ``log pi_l_theta``, with grad.
        advantages: ``(bs, T)`` ``A_l``.
        response_mask: ``(bs, T)``.
        is_weights: ``(bs, T)`` ``w`` from ``compute_large_is_weights`` (detached).
        clip_ratio_low, clip_ratio_high: PPO clip ``[1 - eps_lo, 1 + eps_hi]``.
        clip_ratio_c: dual-clip lower bound (> 1) for negative advantages.
        loss_agg_mode: verl's ``agg_loss`` mode.
        global_batch_info: verl's ``dp_size``/``batch_num_tokens``/``global_batch_size``/
            ``loss_scale_factor`` for ``agg_loss``; ``None`` aggregates over this batch.

    Returns:
        loss: scalar tensor.
        metrics: verl's ``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower`` (floats).
    """
    if is_weights is None:
        raise ValueError("compute_teacher_policy_loss: is_weights is None (pass ones for no reweighting)")
    config = OmegaConf.create(
        {
            "clip_ratio": clip_ratio_low,
            "clip_ratio_low": clip_ratio_low,
            "clip_ratio_high": clip_ratio_high,
            "clip_ratio_c": clip_ratio_c,
            "global_batch_info": dict(global_batch_info or {}),
        }
    )
    return codistill_teacher_policy_loss(
        old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config=config, rollout_is_weights=is_weights
    )


def codistill_teacher_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any | None = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl policy loss ``codistill_teacher`` (same signature as ``compute_policy_loss_vanilla``).

    The large worker's loss maps ``large_is_weights`` onto ``rollout_is_weights``; the clip settings and
    ``global_batch_info`` come from the large actor's ``config``. A missing weight tensor is an error, so
    a broken field mapping cannot silently train the teacher without importance weights.

    Returns:
        loss: scalar tensor; metrics: verl's vanilla metrics.
    """
    if rollout_is_weights is None:
        raise ValueError("policy loss 'codistill_teacher' needs rollout_is_weights (the batch field large_is_weights)")
    return compute_policy_loss_vanilla(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights.detach(),
    )
