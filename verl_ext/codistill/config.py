"""Schema of the ``algorithm.codistill`` block, in verl's ``BaseConfig`` style.

The defaults are written once, here; the recipe's hydra config takes its ``algorithm.codistill``
node from ``CoDistillConfig().to_dict()`` (so every key is in the composed config and can be
overridden on the command line without ``+``). Every check is in a ``__post_init__`` and raises
``ValueError`` with one line that names the full key::

    algorithm.codistill.is.level='foo' not in ['token', 'sequence', 'geo_mean']

``CoDistillConfig.from_dict`` builds the dataclasses from a dict or an OmegaConf node (the YAML
key ``is`` is the field ``is_``: ``is`` is a Python keyword).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from verl.base_config import BaseConfig

PREFIX = "algorithm.codistill"

KD_CREDITS = ("token", "reward_to_go", "sequence")
KD_SCHEDULES = ("constant", "linear")
IS_LEVELS = ("token", "sequence", "geo_mean")
IS_MODES = ("truncate", "mask", "none")
IS_BEHAVIORS = ("fsdp", "rollout")
LARGE_ADVANTAGES = ("grpo", "is_baseline")
PLACEMENTS = ("colocate", "separate")


def _choice(value: Any, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} not in {list(allowed)}")


def _bool(value: Any, key: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value!r} must be a bool (true or false)")


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise ValueError(f"{key}={value!r} must be a number")
    return float(value)


def _positive_finite(value: Any, key: str) -> float:
    value = _number(value, key)
    if value <= 0 or math.isinf(value):
        raise ValueError(f"{key}={value!r} must be a finite number > 0")
    return value


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{key}={value!r} must be an int >= {minimum}")
    return int(value)


@dataclass
class KDConfig(BaseConfig):
    """Small-model KD reward: ``A_s = (A_R + beta * K) * m`` with ``beta = kd_coef_at(step)``.

    ``coef``: beta >= 0 (0 gives verl's GRPO advantages). ``credit``: token | reward_to_go |
    sequence. ``clamp``: c > 0 in ``d = clamp(ll - ls, -c, c)``. ``coef_schedule``: constant |
    linear (from ``coef`` to ``coef_final`` over ``decay_steps`` steps).
    """

    coef: float = 1.0
    credit: str = "token"
    clamp: float = 10.0
    coef_schedule: str = "constant"
    coef_final: float = 0.0
    decay_steps: int = 0

    def __post_init__(self):
        key = f"{PREFIX}.kd"
        coef = _number(self.coef, f"{key}.coef")
        if coef < 0:
            raise ValueError(f"{key}.coef={coef!r} must be >= 0")
        _choice(self.credit, KD_CREDITS, f"{key}.credit")
        clamp = _positive_finite(self.clamp, f"{key}.clamp")
        _choice(self.coef_schedule, KD_SCHEDULES, f"{key}.coef_schedule")
        coef_final = _number(self.coef_final, f"{key}.coef_final")
        if coef_final < 0:
            raise ValueError(f"{key}.coef_final={coef_final!r} must be >= 0")
        decay_steps = _int(self.decay_steps, f"{key}.decay_steps", 0)
        if self.coef_schedule == "linear" and decay_steps == 0:
            raise ValueError(f"{key}.decay_steps=0 must be > 0 when {key}.coef_schedule='linear'")
        object.__setattr__(self, "coef", coef)
        object.__setattr__(self, "clamp", clamp)
        object.__setattr__(self, "coef_final", coef_final)
        object.__setattr__(self, "decay_steps", decay_steps)


@dataclass
class ISConfig(BaseConfig):
    """Large-model importance weights ``w = pi_l_old / pi_sampler`` (YAML key ``is``).

    ``level``: token | sequence | geo_mean. ``mode``: truncate (``min(w, C)``) | mask (``w`` kept in
    ``[1/C, C]``, else 0) | none (``w = 1``). ``threshold``: C > 0 (>= 1 for mask).
    ``self_normalize``: divide by the batch mean weight. ``behavior``: which small-model log-prob
    stands for the sampler: fsdp (the small actor's recomputed ``old_log_probs``) | rollout (the
    rollout engine's own ``rollout_log_probs``).
    """

    level: str = "token"
    mode: str = "truncate"
    threshold: float = 2.0
    self_normalize: bool = False
    behavior: str = "fsdp"

    def __post_init__(self):
        key = f"{PREFIX}.is"
        _choice(self.level, IS_LEVELS, f"{key}.level")
        _choice(self.mode, IS_MODES, f"{key}.mode")
        threshold = _positive_finite(self.threshold, f"{key}.threshold")
        if self.mode == "mask" and threshold < 1:
            raise ValueError(f"{key}.threshold={threshold!r} must be >= 1 when {key}.mode='mask'")
        _bool(self.self_normalize, f"{key}.self_normalize")
        _choice(self.behavior, IS_BEHAVIORS, f"{key}.behavior")
        object.__setattr__(self, "threshold", threshold)


@dataclass
class LargeConfig(BaseConfig):
    """The large model: loaded (``enable``), trained (``train``), its advantage, where it runs.

    ``advantage``: grpo | is_baseline. ``placement``: colocate (the small actor's resource pool)
    | separate (its own pool of ``nnodes`` x ``n_gpus_per_node``). ``skip_zero_grad``: sequences
    whose loss term is identically zero skip the large model's forward and backward (exact).
    """

    enable: bool = True
    train: bool = True
    advantage: str = "grpo"
    placement: str = "colocate"
    nnodes: int = 1
    n_gpus_per_node: int = 8
    skip_zero_grad: bool = True

    def __post_init__(self):
        key = f"{PREFIX}.large"
        _bool(self.enable, f"{key}.enable")
        _bool(self.train, f"{key}.train")
        _choice(self.advantage, LARGE_ADVANTAGES, f"{key}.advantage")
        _choice(self.placement, PLACEMENTS, f"{key}.placement")
        _int(self.nnodes, f"{key}.nnodes", 1)
        _int(self.n_gpus_per_node, f"{key}.n_gpus_per_node", 1)
        _bool(self.skip_zero_grad, f"{key}.skip_zero_grad")


_SECTIONS = {"kd": KDConfig, "is": ISConfig, "large": LargeConfig}


@dataclass
class CoDistillConfig(BaseConfig):
    """The whole ``algorithm.codistill`` block; ``is_`` holds the YAML key ``is``.

    ``task_reward=false`` is the KD-only ablation (``A_R = 0``).
    """

    kd: KDConfig = field(default_factory=KDConfig)
    is_: ISConfig = field(default_factory=ISConfig)
    large: LargeConfig = field(default_factory=LargeConfig)
    task_reward: bool = True

    def __post_init__(self):
        _bool(self.task_reward, f"{PREFIX}.task_reward")
        if not self.large.enable and self.kd.coef != 0.0:
            raise ValueError(
                f"{PREFIX}.kd.coef={self.kd.coef!r} must be 0 when {PREFIX}.large.enable=false "
                "(the KD reward needs the large model's log-probs)"
            )
        if not self.task_reward and self.kd.coef == 0.0:
            raise ValueError(
                f"{PREFIX}.task_reward=false needs {PREFIX}.kd.coef > 0 (otherwise the small model has no signal)"
            )

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None) -> CoDistillConfig:
        """Build and validate from a dict or ``DictConfig`` of the ``algorithm.codistill`` block.

        ``None`` or an empty mapping gives the defaults. Raises ``ValueError`` (one line, full key
        named) on unknown keys, wrong types and out-of-range values.
        """
        if isinstance(mapping, CoDistillConfig):
            return mapping
        raw = _to_plain(mapping, PREFIX)
        _reject_unknown(raw, {*_SECTIONS, "task_reward"}, PREFIX)
        sections = {}
        for name, section_cls in _SECTIONS.items():
            block = _to_plain(raw.get(name), f"{PREFIX}.{name}")
            _reject_unknown(block, {f.name for f in _fields(section_cls)}, f"{PREFIX}.{name}")
            sections[name] = section_cls(**block)
        return cls(
            kd=sections["kd"], is_=sections["is"], large=sections["large"], task_reward=raw.get("task_reward", True)
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML layout (key ``is``, not ``is_``): the recipe config's ``algorithm.codistill`` node."""
        return {
            "kd": _section_dict(self.kd),
            "is": _section_dict(self.is_),
            "large": _section_dict(self.large),
            "task_reward": self.task_reward,
        }


def _fields(section_cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(section_cls) if f.name != "_target_"]


def _section_dict(section: BaseConfig) -> dict[str, Any]:
    return {f.name: getattr(section, f.name) for f in _fields(type(section))}


def kd_coef_at(step: int, kd_cfg: KDConfig | Mapping[str, Any]) -> float:
    """The KD coefficient ``beta`` at 0-based training ``step``.

    ``constant``: ``beta = coef``.
    ``linear``:   ``beta = coef + (coef_final - coef) * min(step / decay_steps, 1)``.
    """
    if not isinstance(kd_cfg, KDConfig):
        raw = _to_plain(kd_cfg, f"{PREFIX}.kd")
        _reject_unknown(raw, {f.name for f in _fields(KDConfig)}, f"{PREFIX}.kd")
        kd_cfg = KDConfig(**raw)
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"kd_coef_at: step={step!r} must be an int >= 0")
    if kd_cfg.coef_schedule == "constant":
        return float(kd_cfg.coef)
    frac = min(int(step) / kd_cfg.decay_steps, 1.0)
    return float(kd_cfg.coef + (kd_cfg.coef_final - kd_cfg.coef) * frac)


def _to_plain(mapping: Any, key: str) -> dict[str, Any]:
    if mapping is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    if isinstance(mapping, DictConfig):
        mapping = OmegaConf.to_container(mapping, resolve=True)
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{key}={mapping!r} must be a mapping")
    return dict(mapping)


def _reject_unknown(raw: Mapping[str, Any], allowed: set[str], key: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{key}.{unknown[0]} is not a known key; allowed keys: {sorted(allowed)}")
