"""Validated configuration of the ``algorithm.codistill`` block.

The YAML block (see ``recipe/codistill_grpo/config/codistill.yaml``)::

    algorithm:
      codistill:
        kd: {coef, credit, clamp, coef_schedule, coef_final, decay_steps}
        is: {level, mode, threshold, self_normalize}
        large: {enable, train, advantage}
        task_reward: true

``CoDistillConfig.from_dict`` turns a dict / OmegaConf ``DictConfig`` of that block into
frozen dataclasses; every unknown key or bad value raises ``ValueError`` with one line that
names the full key (``algorithm.codistill.is.level='foo' not in ['token', 'sequence',
'geo_mean']``). Defaults follow ALGORITHM.md.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "algorithm.codistill"

KD_CREDITS = ("token", "reward_to_go", "sequence")
KD_SCHEDULES = ("constant", "linear")
IS_LEVELS = ("token", "sequence", "geo_mean")
IS_MODES = ("truncate", "mask", "none")
LARGE_ADVANTAGES = ("grpo", "is_baseline")


@dataclass(frozen=True)
class KDConfig:
    """Small-model KD reward: ``A_s = (A_R + beta * K) * m`` with ``beta = kd_coef_at(step)``."""

    coef: float = 1.0
    credit: str = "token"
    clamp: float = 10.0
    coef_schedule: str = "constant"
    coef_final: float = 0.0
    decay_steps: int = 0


@dataclass(frozen=True)
class ISConfig:
    """Large-model importance weights ``w = pi_l_old / pi_s_old`` (YAML key ``is``)."""

    level: str = "token"
    mode: str = "truncate"
    threshold: float = 2.0
    self_normalize: bool = False


@dataclass(frozen=True)
class LargeConfig:
    """Whether the large model is loaded, trained, and which advantage it trains on."""

    enable: bool = True
    train: bool = True
    advantage: str = "grpo"


@dataclass(frozen=True)
class CoDistillConfig:
    """The whole ``algorithm.codistill`` block; ``is_`` holds the YAML key ``is``."""

    kd: KDConfig = field(default_factory=KDConfig)
    is_: ISConfig = field(default_factory=ISConfig)
    large: LargeConfig = field(default_factory=LargeConfig)
    task_reward: bool = True

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None) -> CoDistillConfig:
        """Build and validate from a dict or ``DictConfig`` of the ``algorithm.codistill`` block.

        ``None`` or an empty mapping gives the defaults. Raises ``ValueError`` (one line, full key
        named) on unknown keys, wrong types and out-of-range values.
        """
        raw = _to_plain(mapping, PREFIX)
        _reject_unknown(raw, {"kd", "is", "large", "task_reward"}, PREFIX)
        kd = _build_kd(_to_plain(raw.get("kd"), f"{PREFIX}.kd"))
        is_ = _build_is(_to_plain(raw.get("is"), f"{PREFIX}.is"))
        large = _build_large(_to_plain(raw.get("large"), f"{PREFIX}.large"))
        task_reward = _bool(raw, "task_reward", True, PREFIX)

        if not large.enable and kd.coef != 0.0:
            raise ValueError(
                f"{PREFIX}.kd.coef={kd.coef!r} must be 0 when {PREFIX}.large.enable=false "
                "(the KD reward needs the large model's log-probs)"
            )
        if not task_reward and kd.coef == 0.0:
            raise ValueError(
                f"{PREFIX}.task_reward=false needs {PREFIX}.kd.coef > 0 (otherwise the small model has no signal)"
            )
        return cls(kd=kd, is_=is_, large=large, task_reward=task_reward)

    def to_dict(self) -> dict[str, Any]:
        """The YAML layout (key ``is``, not ``is_``), e.g. for logging the resolved config."""
        out = dataclasses.asdict(self)
        out["is"] = out.pop("is_")
        return out


def kd_coef_at(step: int, kd_cfg: KDConfig | Mapping[str, Any]) -> float:
    """The KD coefficient ``beta`` at 0-based training ``step``.

    ``constant``: ``beta = coef``.
    ``linear``:   ``beta = coef + (coef_final - coef) * min(step / decay_steps, 1)``.
    """
    if not isinstance(kd_cfg, KDConfig):
        kd_cfg = _build_kd(_to_plain(kd_cfg, f"{PREFIX}.kd"))
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"kd_coef_at: step={step!r} must be an int >= 0")
    step = int(step)
    if kd_cfg.coef_schedule == "constant":
        return float(kd_cfg.coef)
    frac = min(step / kd_cfg.decay_steps, 1.0)
    return float(kd_cfg.coef + (kd_cfg.coef_final - kd_cfg.coef) * frac)


def _to_plain(mapping: Any, key: str) -> dict[str, Any]:
    if mapping is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(mapping, DictConfig):
            mapping = OmegaConf.to_container(mapping, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with verl
        pass
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{key}={mapping!r} must be a mapping")
    return dict(mapping)


def _reject_unknown(raw: Mapping[str, Any], allowed: set[str], key: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{key}.{unknown[0]} is not a known key; allowed keys: {sorted(allowed)}")


def _choice(raw: Mapping[str, Any], name: str, default: str, allowed: tuple[str, ...], key: str) -> str:
    value = raw.get(name, default)
    if value not in allowed:
        raise ValueError(f"{key}.{name}={value!r} not in {list(allowed)}")
    return value


def _bool(raw: Mapping[str, Any], name: str, default: bool, key: str) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key}.{name}={value!r} must be a bool (true or false)")
    return value


def _number(raw: Mapping[str, Any], name: str, default: float, key: str) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{key}.{name}={value!r} must be a number")
    return float(value)


def _build_kd(raw: dict[str, Any]) -> KDConfig:
    key = f"{PREFIX}.kd"
    _reject_unknown(raw, {f.name for f in dataclasses.fields(KDConfig)}, key)
    coef = _number(raw, "coef", 1.0, key)
    if coef < 0:
        raise ValueError(f"{key}.coef={coef!r} must be >= 0")
    credit = _choice(raw, "credit", "token", KD_CREDITS, key)
    clamp = _number(raw, "clamp", 10.0, key)
    if clamp <= 0 or clamp == float("inf"):
        raise ValueError(f"{key}.clamp={clamp!r} must be a finite number > 0")
    schedule = _choice(raw, "coef_schedule", "constant", KD_SCHEDULES, key)
    coef_final = _number(raw, "coef_final", 0.0, key)
    if coef_final < 0:
        raise ValueError(f"{key}.coef_final={coef_final!r} must be >= 0")
    decay_steps = raw.get("decay_steps", 0)
    if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 0:
        raise ValueError(f"{key}.decay_steps={decay_steps!r} must be an int >= 0")
    if schedule == "linear" and decay_steps == 0:
        raise ValueError(f"{key}.decay_steps=0 must be > 0 when {key}.coef_schedule='linear'")
    return KDConfig(coef, credit, clamp, schedule, coef_final, decay_steps)


def _build_is(raw: dict[str, Any]) -> ISConfig:
    key = f"{PREFIX}.is"
    _reject_unknown(raw, {"level", "mode", "threshold", "self_normalize"}, key)
    level = _choice(raw, "level", "token", IS_LEVELS, key)
    mode = _choice(raw, "mode", "truncate", IS_MODES, key)
    threshold = _number(raw, "threshold", 2.0, key)
    if threshold <= 0 or threshold == float("inf"):
        raise ValueError(f"{key}.threshold={threshold!r} must be a finite number > 0")
    if mode == "mask" and threshold < 1:
        raise ValueError(f"{key}.threshold={threshold!r} must be >= 1 when {key}.mode='mask'")
    self_normalize = _bool(raw, "self_normalize", False, key)
    return ISConfig(level, mode, threshold, self_normalize)


def _build_large(raw: dict[str, Any]) -> LargeConfig:
    key = f"{PREFIX}.large"
    _reject_unknown(raw, {f.name for f in dataclasses.fields(LargeConfig)}, key)
    enable = _bool(raw, "enable", True, key)
    train = _bool(raw, "train", True, key)
    advantage = _choice(raw, "advantage", "grpo", LARGE_ADVANTAGES, key)
    return LargeConfig(enable, train, advantage)
