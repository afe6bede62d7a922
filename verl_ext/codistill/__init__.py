"""CoDistill-GRPO algorithm core: pure torch functions registered into verl.

Importing this package registers the ``codistill`` advantage estimator and the
``codistill_teacher`` policy loss in verl's registries. The recipe's ``verl.plugins`` entry point
(pyproject.toml) imports it in every process that imports verl, Ray workers included.
Registration is idempotent: importing again or reloading the modules does not raise; a
*different* function already registered under one of these names does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from verl.trainer.ppo import core_algos

from .advantage import (
    add_kd_advantage,
    compute_codistill_advantage_from_config,
    compute_codistill_outcome_advantage,
    compute_kd_reward,
)
from .config import CoDistillConfig, ISConfig, KDConfig, LargeConfig, kd_coef_at
from .importance import compute_large_advantage, compute_large_is_weights
from .metrics import compute_small_metrics, rollout_mismatch_metrics
from .teacher_loss import codistill_teacher_policy_loss, compute_teacher_policy_loss
from .tokenizer_check import TokenizerMismatchError, assert_shared_tokenizer

ADV_ESTIMATOR_NAME = "codistill"
POLICY_LOSS_NAME = "codistill_teacher"

__all__ = [
    "ADV_ESTIMATOR_NAME",
    "POLICY_LOSS_NAME",
    "CoDistillConfig",
    "ISConfig",
    "KDConfig",
    "LargeConfig",
    "TokenizerMismatchError",
    "add_kd_advantage",
    "assert_shared_tokenizer",
    "codistill_teacher_policy_loss",
    "compute_codistill_advantage_from_config",
    "compute_codistill_outcome_advantage",
    "compute_kd_reward",
    "compute_large_advantage",
    "compute_large_is_weights",
    "compute_small_metrics",
    "compute_teacher_policy_loss",
    "rollout_mismatch_metrics",
    "kd_coef_at",
    "register",
]


def _qualified(fn: Callable[..., Any]) -> tuple[str, str]:
    return getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn))


def _register_once(registry: dict[str, Any], name: str, fn: Callable[..., Any], register: Callable) -> None:
    current = registry.get(name)
    if current is fn:
        return
    if current is not None:
        if _qualified(current) != _qualified(fn):
            raise ValueError(f"verl registry name {name!r} is already taken by {current!r}, not by {fn!r}")
        del registry[name]  # a stale copy of this same function, left by importlib.reload
    register(name)(fn)


def register() -> None:
    """Register ``codistill`` (adv estimator) and ``codistill_teacher`` (policy loss) in verl; idempotent."""
    _register_once(
        core_algos.ADV_ESTIMATOR_REGISTRY,
        ADV_ESTIMATOR_NAME,
        compute_codistill_advantage_from_config,
        core_algos.register_adv_est,
    )
    _register_once(
        core_algos.POLICY_LOSS_REGISTRY,
        POLICY_LOSS_NAME,
        codistill_teacher_policy_loss,
        core_algos.register_policy_loss,
    )


register()
