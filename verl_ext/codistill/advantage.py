"""Small-model advantage of CoDistill-GRPO: GRPO outcome advantage mixed with an on-policy KD reward.

All functions are vectorised over samples and tokens; group statistics use ``index_add_`` over
the ``uid`` groups. Per-sequence group statistics run in float64 (``N`` scalars, negligible
cost) so that a group of equal rewards gives exactly 0 before the ``eps`` division.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from verl.utils import as_torch_index

from .config import KD_CREDITS, CoDistillConfig, kd_coef_at
from .metrics import compute_small_metrics

__all__ = [
    "compute_kd_reward",
    "compute_codistill_outcome_advantage",
    "compute_codistill_advantage_from_config",
    "add_kd_advantage",
    "compute_outcome_advantage_scalar",
    "outcome_advantage",
    "group_ids",
    "group_mean_std",
]


def _result_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_2d(name: str, t: torch.Tensor, shape: torch.Size) -> None:
    if t.shape != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} (bs, response_length)")


def group_ids(index: Any, n: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Map group labels (``uid``: strings, ints, tensor) to contiguous ids.

    Returns:
        gidx: ``(n,)`` long tensor with values in ``[0, num_groups)``.
        num_groups: number of distinct labels.
    """
    g = as_torch_index(index, device=device)
    if g.numel() != n:
        raise ValueError(f"index has {g.numel()} entries, expected one group id per response ({n})")
    uniq, gidx = torch.unique(g, return_inverse=True)
    return gidx, uniq.numel()


def group_mean_std(x: torch.Tensor, gidx: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample group mean and unbiased std, verl's GRPO convention, in float64.

    A group of size 1 has mean 0 and std 1 (as in ``compute_grpo_outcome_advantage``).

    Args:
        x: ``(N,)`` values.
        gidx: ``(N,)`` contiguous group ids.
        num_groups: number of groups ``G``.

    Returns:
        mean, std: ``(N,)`` float64, the statistics of each sample's group.
    """
    x64 = x.to(torch.float64)
    zeros = torch.zeros(num_groups, dtype=torch.float64, device=x.device)
    count = zeros.index_add(0, gidx, torch.ones_like(x64))
    mean = zeros.index_add(0, gidx, x64) / count.clamp_min(1.0)
    centered = x64 - mean[gidx]
    var = zeros.index_add(0, gidx, centered * centered) / (count - 1.0).clamp_min(1.0)
    single = count <= 1.0
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(var), var.sqrt())
    return mean[gidx], std[gidx]


def compute_outcome_advantage_scalar(
    scores: torch.Tensor,
    gidx: torch.Tensor,
    num_groups: int,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
) -> torch.Tensor:
    """GRPO outcome advantage per response, float64.

    ``A_R[i] = (r_i - mean_g r) / (std_g r + eps)`` (or ``r_i - mean_g r`` without std normalisation).

    Args:
        scores: ``(N,)`` outcome rewards ``r``.

    Returns:
        ``(N,)`` float64 advantages.
    """
    mean, std = group_mean_std(scores, gidx, num_groups)
    centered = scores.to(torch.float64) - mean
    return centered / (std + epsilon) if norm_adv_by_std_in_grpo else centered


def compute_kd_reward(
    small_log_probs: torch.Tensor,
    large_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    clamp: float = 10.0,
) -> torch.Tensor:
    """Per-token KD reward, a single-sample estimate of the negative reverse KL.

    ``d[i,t] = clamp(ll[i,t] - ls[i,t], -c, c) * m[i,t]``

    Args:
        small_log_probs: ``(bs, T)`` ``ls``, log-probs of the sampled tokens under ``pi_s_old``.
        large_log_probs: ``(bs, T)`` ``ll``, the same tokens under ``pi_l_old``.
        response_mask: ``(bs, T)`` 1 for valid response tokens.
        clamp: ``c > 0``.

    Returns:
        ``(bs, T)`` ``d`` in float32 (or wider if an input is wider), 0 on masked tokens.
    """
    _check_kd("token", clamp)
    _check_2d("large_log_probs", large_log_probs, small_log_probs.shape)
    _check_2d("response_mask", response_mask, small_log_probs.shape)
    dtype = _result_dtype(small_log_probs, large_log_probs)
    return _kd_reward(small_log_probs, large_log_probs, response_mask.to(dtype), clamp, dtype)


def _check_kd(credit: str, clamp: float) -> None:
    if credit not in KD_CREDITS:
        raise ValueError(f"kd_credit={credit!r} not in {list(KD_CREDITS)}")
    if not clamp > 0:
        raise ValueError(f"kd clamp={clamp!r} must be > 0")


def _kd_reward(ls: torch.Tensor, ll: torch.Tensor, mask: torch.Tensor, clamp: float, dtype) -> torch.Tensor:
    # the clamp maps an overflowing difference (+-inf) to +-c, so multiplying by the mask is safe
    return (ll.to(dtype) - ls.to(dtype)).clamp_(-clamp, clamp).mul_(mask)


@torch.no_grad()
def outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """verl's GRPO outcome advantage on every valid token: ``A_R[i] * m[i,t]``.

    ``A_R[i] = (r_i - mean_g r) / (std_g r + eps)`` (``compute_outcome_advantage_scalar``), ``r_i`` the sum
    of row ``i`` of ``token_level_rewards``. The one outcome part of both models: the small model's
    (what the ``codistill`` estimator returns in verl's advantage pass) and the large model's ``grpo``
    advantage (``importance.compute_large_advantage``).

    Args:
        token_level_rewards, response_mask: ``(bs, T)``.
        index: ``(bs,)`` group labels (``uid``).
        dtype: of the result (default: float32, or the rewards' dtype if wider).

    Returns:
        ``(bs, T)`` in ``dtype``, 0 on masked tokens.
    """
    shape = token_level_rewards.shape
    _check_2d("response_mask", response_mask, shape)
    dtype = dtype or _result_dtype(token_level_rewards)
    gidx, num_groups = group_ids(index, shape[0], token_level_rewards.device)
    a_r = compute_outcome_advantage_scalar(
        token_level_rewards.sum(dim=-1), gidx, num_groups, epsilon, norm_adv_by_std_in_grpo
    )
    return a_r.to(dtype).unsqueeze(-1) * response_mask.to(dtype)


def _outcome_part(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float,
    norm_adv_by_std_in_grpo: bool,
    task_reward: bool,
) -> torch.Tensor:
    """``outcome_advantage``, or 0 with ``task_reward=False`` (the KD-only ablation): ``(bs, T)``."""
    if task_reward:
        return outcome_advantage(token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo)
    _check_2d("response_mask", response_mask, token_level_rewards.shape)
    return torch.zeros_like(response_mask, dtype=_result_dtype(token_level_rewards))


def compute_codistill_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    small_log_probs: torch.Tensor,
    large_log_probs: torch.Tensor,
    kd_coef: float = 1.0,
    kd_credit: str = "token",
    kd_clamp: float = 10.0,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    task_reward: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed small-model advantage ``A_s[i,t] = (A_R[i] + beta * K[i,t]) * m[i,t]``.

    ``A_R`` is verl's GRPO outcome advantage (0 when ``task_reward=False``); ``K`` by ``kd_credit``:
    ``token``: ``d[i,t]``; ``reward_to_go``: ``sum_{t'>=t} d[i,t']``; ``sequence``:
    ``(D_i - mean_g D) / (std_g D + eps)`` with ``D_i`` the mean of ``d`` over valid tokens.

    Args:
        token_level_rewards: ``(bs, T)``; the outcome reward is its sum over ``T``.
        response_mask: ``(bs, T)``.
        index: ``(bs,)`` group labels (``uid``).
        small_log_probs, large_log_probs: ``(bs, T)`` ``ls`` and ``ll``.
        kd_coef: ``beta >= 0``; 0 gives verl's GRPO advantages.
        kd_credit: ``token`` | ``reward_to_go`` | ``sequence``.
        kd_clamp: ``c`` of the KD reward.
        epsilon, norm_adv_by_std_in_grpo: as in verl's ``compute_grpo_outcome_advantage``.
        task_reward: False sets ``A_R = 0`` (KD-only ablation).

    One computation: the outcome part ``A_R * m`` (as verl's advantage pass gets it), then
    ``add_kd_advantage`` (what training calls).

    Returns:
        advantages, returns: both ``(bs, T)``, the same tensor (outcome-only estimator).
    """
    _check_2d("token_level_rewards", token_level_rewards, small_log_probs.shape)
    outcome = _outcome_part(token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo, task_reward)
    adv, _ = add_kd_advantage(
        outcome, response_mask, index, small_log_probs, large_log_probs,
        kd_coef=kd_coef, kd_credit=kd_credit, kd_clamp=kd_clamp, epsilon=epsilon,
    )  # fmt: skip
    return adv, adv


def _codistill_from(config: Any) -> CoDistillConfig:
    if isinstance(config, CoDistillConfig):
        return config
    block = None
    if config is not None:
        block = config.get("codistill", None) if hasattr(config, "get") else getattr(config, "codistill", None)
    if block is None:
        raise ValueError("adv estimator 'codistill' needs algorithm.codistill in the algorithm config (got none)")
    return CoDistillConfig.from_dict(block)


def _norm_by_std_from(config: Any) -> bool:
    """``algorithm.norm_adv_by_std_in_grpo`` of the algorithm config (verl's default True)."""
    if config is None or isinstance(config, CoDistillConfig):
        return True
    value = (
        config.get("norm_adv_by_std_in_grpo", True)
        if hasattr(config, "get")
        else getattr(config, "norm_adv_by_std_in_grpo", True)
    )
    return True if value is None else bool(value)


def compute_codistill_advantage_from_config(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool | None = None,
    config: Any | None = None,
    small_log_probs: torch.Tensor | None = None,
    large_log_probs: torch.Tensor | None = None,
    step: int = 0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl adv estimator ``codistill`` (``algorithm.adv_estimator=codistill``), settings from ``config``.

    ``config`` is the algorithm config (``DictConfig``/dict holding ``codistill``, or a
    ``CoDistillConfig``). ``norm_adv_by_std_in_grpo`` left at None is read from the algorithm
    config's ``norm_adv_by_std_in_grpo`` (default True): verl's generic estimator call passes
    only the config, and its GRPO path reads the same key.

    verl's own advantage pass (``compute_advantage`` in ``RayPPOTrainer.fit``) calls this with
    rewards, mask, ``uid`` and config only, so without log-probs it returns the outcome part
    ``A_R[i] * m[i,t]`` (0 with ``task_reward=false``); the recipe trainer adds the KD part
    ``beta * K * m`` with ``add_kd_advantage`` once both models' log-probs are known. With
    ``small_log_probs`` and ``large_log_probs`` it returns the whole mixed advantage
    ``compute_codistill_outcome_advantage`` with ``beta = kd_coef_at(step, codistill.kd)``.

    Returns:
        advantages, returns: ``(bs, T)``.
    """
    cfg = _codistill_from(config)
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = _norm_by_std_from(config)
    if (small_log_probs is None) != (large_log_probs is None):
        raise ValueError(
            "adv estimator 'codistill' needs both keyword tensors small_log_probs (batch 'old_log_probs') "
            "and large_log_probs (batch 'large_old_log_probs'), or neither (outcome part only)"
        )
    if small_log_probs is None:
        adv = _outcome_part(
            token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo, cfg.task_reward
        )
        return adv, adv
    return compute_codistill_outcome_advantage(
        token_level_rewards,
        response_mask,
        index,
        small_log_probs,
        large_log_probs,
        kd_coef=kd_coef_at(step, cfg.kd),
        kd_credit=cfg.kd.credit,
        kd_clamp=cfg.kd.clamp,
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        task_reward=cfg.task_reward,
    )


@torch.no_grad()
def add_kd_advantage(
    outcome_advantages: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    small_log_probs: torch.Tensor,
    large_log_probs: torch.Tensor,
    kd_coef: float = 1.0,
    kd_credit: str = "token",
    kd_clamp: float = 10.0,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The KD part of the small-model advantage, added to verl's outcome part.

    ``A_s[i,t] = A_R[i] * m[i,t] + beta * K[i,t] * m[i,t]`` with ``K`` by ``kd_credit`` as described
    in ``compute_codistill_outcome_advantage`` (which calls this function: one computation).

    Args:
        outcome_advantages: ``(bs, T)`` ``A_R * m``, what the registered estimator returned in
            verl's advantage pass.
        response_mask: ``(bs, T)``.
        index: ``(bs,)`` group labels (``uid``).
        small_log_probs, large_log_probs: ``(bs, T)`` ``ls`` and ``ll``.
        kd_coef: ``beta >= 0``; kd_credit, kd_clamp, epsilon: as in the full function.

    Returns:
        advantages: ``(bs, T)`` ``A_s``.
        metrics: the ``small/`` metrics of ``metrics.compute_small_metrics`` (``A_R`` read from
            ``outcome_advantages``).
    """
    _check_kd(kd_credit, kd_clamp)
    shape = small_log_probs.shape
    _check_2d("outcome_advantages", outcome_advantages, shape)
    _check_2d("large_log_probs", large_log_probs, shape)
    _check_2d("response_mask", response_mask, shape)
    dtype = _result_dtype(outcome_advantages, small_log_probs, large_log_probs)
    mask = response_mask.to(dtype)
    d = _kd_reward(small_log_probs, large_log_probs, mask, kd_clamp, dtype)
    if kd_credit == "sequence":
        gidx, num_groups = group_ids(index, shape[0], small_log_probs.device)
        seq_d = d.sum(-1) / mask.sum(-1).clamp_min(1.0)
        mean, std = group_mean_std(seq_d, gidx, num_groups)
        k = ((seq_d.to(torch.float64) - mean) / (std + epsilon)).to(dtype)
        kd_part = k.unsqueeze(-1) * mask
    else:
        k = d if kd_credit == "token" else d.flip(-1).cumsum(-1).flip(-1).mul_(mask)
        kd_part = k
    outcome = outcome_advantages.to(dtype)
    adv = torch.add(outcome, kd_part, alpha=kd_coef)
    return adv, compute_small_metrics(d, outcome, k, response_mask, kd_coef=kd_coef)
