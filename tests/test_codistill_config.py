"""``algorithm.codistill`` validation: defaults, every error message, the KD schedule."""

from __future__ import annotations

import re

import numpy as np
import pytest
from omegaconf import OmegaConf

from verl_ext.codistill.config import CoDistillConfig, ISConfig, KDConfig, LargeConfig, kd_coef_at


def test_defaults_follow_algorithm_md():
    cfg = CoDistillConfig.from_dict({})
    assert cfg.kd == KDConfig(
        coef=1.0, credit="token", clamp=10.0, coef_schedule="constant", coef_final=0.0, decay_steps=0
    )
    assert cfg.is_ == ISConfig(level="token", mode="truncate", threshold=2.0, self_normalize=False, behavior="fsdp")
    assert cfg.large == LargeConfig(
        enable=True, train=True, advantage="grpo", placement="colocate", nnodes=1, n_gpus_per_node=8, skip_zero_grad=True
    )
    assert cfg.task_reward is True
    assert CoDistillConfig.from_dict(None) == cfg


def test_contract_yaml_block_from_dictconfig():
    yaml = """
    kd: {coef: 0.5, credit: sequence, clamp: 5.0, coef_schedule: linear, coef_final: 0.1, decay_steps: 10}
    is: {level: geo_mean, mode: mask, threshold: 3, self_normalize: true, behavior: rollout}
    large: {enable: true, train: false, advantage: is_baseline, placement: separate, nnodes: 2, n_gpus_per_node: 4}
    task_reward: false
    """
    cfg = CoDistillConfig.from_dict(OmegaConf.create(yaml))
    assert cfg.kd == KDConfig(coef=0.5, credit="sequence", clamp=5.0, coef_schedule="linear", coef_final=0.1, decay_steps=10)
    assert cfg.is_ == ISConfig(level="geo_mean", mode="mask", threshold=3.0, self_normalize=True, behavior="rollout")
    assert cfg.large == LargeConfig(enable=True, train=False, advantage="is_baseline", placement="separate", nnodes=2,
                                    n_gpus_per_node=4)
    assert cfg.task_reward is False
    assert cfg.to_dict()["is"] == {
        "level": "geo_mean", "mode": "mask", "threshold": 3.0, "self_normalize": True, "behavior": "rollout"
    }
    assert CoDistillConfig.from_dict(cfg.to_dict()) == cfg


def test_interpolations_are_resolved():
    root = OmegaConf.create({"beta": 0.25, "algorithm": {"codistill": {"kd": {"coef": "${beta}"}}}})
    assert CoDistillConfig.from_dict(root.algorithm.codistill).kd.coef == 0.25


P = "algorithm.codistill"
ERRORS = [
    ({"is": {"level": "foo"}}, f"{P}.is.level='foo' not in ['token', 'sequence', 'geo_mean']"),
    ({"is": {"mode": "clip"}}, f"{P}.is.mode='clip' not in ['truncate', 'mask', 'none']"),
    ({"is": {"threshold": -1.0}}, f"{P}.is.threshold=-1.0 must be a finite number > 0"),
    ({"is": {"threshold": 0}}, f"{P}.is.threshold=0.0 must be a finite number > 0"),
    ({"is": {"mode": "mask", "threshold": 0.5}}, f"{P}.is.threshold=0.5 must be >= 1 when {P}.is.mode='mask'"),
    ({"is": {"threshold": "2"}}, f"{P}.is.threshold='2' must be a number"),
    ({"is": {"self_normalize": "yes"}}, f"{P}.is.self_normalize='yes' must be a bool (true or false)"),
    ({"is": {"lvl": "token"}}, f"{P}.is.lvl is not a known key; allowed keys: ['behavior', 'level', 'mode', 'self_normalize', 'threshold']"),
    ({"is": {"behavior": "vllm"}}, f"{P}.is.behavior='vllm' not in ['fsdp', 'rollout']"),
    ({"kd": {"clamp": 0.0}}, f"{P}.kd.clamp=0.0 must be a finite number > 0"),
    ({"kd": {"clamp": -3}}, f"{P}.kd.clamp=-3.0 must be a finite number > 0"),
    ({"kd": {"clamp": float("inf")}}, f"{P}.kd.clamp=inf must be a finite number > 0"),
    ({"kd": {"coef": -0.1}}, f"{P}.kd.coef=-0.1 must be >= 0"),
    ({"kd": {"coef": True}}, f"{P}.kd.coef=True must be a number"),
    ({"kd": {"coef": float("nan")}}, f"{P}.kd.coef=nan must be a number"),
    ({"kd": {"credit": "gae"}}, f"{P}.kd.credit='gae' not in ['token', 'reward_to_go', 'sequence']"),
    ({"kd": {"coef_schedule": "cosine"}}, f"{P}.kd.coef_schedule='cosine' not in ['constant', 'linear']"),
    ({"kd": {"coef_final": -1}}, f"{P}.kd.coef_final=-1.0 must be >= 0"),
    ({"kd": {"decay_steps": -5}}, f"{P}.kd.decay_steps=-5 must be an int >= 0"),
    ({"kd": {"decay_steps": 2.5}}, f"{P}.kd.decay_steps=2.5 must be an int >= 0"),
    ({"kd": {"coef_schedule": "linear"}}, f"{P}.kd.decay_steps=0 must be > 0 when {P}.kd.coef_schedule='linear'"),
    ({"kd": {"beta": 1}}, f"{P}.kd.beta is not a known key; allowed keys: ['clamp', 'coef', 'coef_final', 'coef_schedule', 'credit', 'decay_steps']"),
    ({"large": {"advantage": "gae"}}, f"{P}.large.advantage='gae' not in ['grpo', 'is_baseline']"),
    ({"large": {"enable": 1}}, f"{P}.large.enable=1 must be a bool (true or false)"),
    ({"large": {"train": None}}, f"{P}.large.train=None must be a bool (true or false)"),
    ({"large": {"path": "x"}}, f"{P}.large.path is not a known key; allowed keys: ['advantage', 'enable', 'n_gpus_per_node', 'nnodes', 'placement', 'skip_zero_grad', 'train']"),
    ({"large": {"placement": "remote"}}, f"{P}.large.placement='remote' not in ['colocate', 'separate']"),
    ({"large": {"nnodes": 0}}, f"{P}.large.nnodes=0 must be an int >= 1"),
    ({"large": {"n_gpus_per_node": 2.5}}, f"{P}.large.n_gpus_per_node=2.5 must be an int >= 1"),
    ({"large": {"skip_zero_grad": "yes"}}, f"{P}.large.skip_zero_grad='yes' must be a bool (true or false)"),
    ({"task_reward": "false"}, f"{P}.task_reward='false' must be a bool (true or false)"),
    ({"kd_coef": 1.0}, f"{P}.kd_coef is not a known key; allowed keys: ['is', 'kd', 'large', 'task_reward']"),
    ({"is": "token"}, f"{P}.is='token' must be a mapping"),
    (
        {"large": {"enable": False}},
        f"{P}.kd.coef=1.0 must be 0 when {P}.large.enable=false (the KD reward needs the large model's log-probs)",
    ),
    (
        {"task_reward": False, "kd": {"coef": 0.0}},
        f"{P}.task_reward=false needs {P}.kd.coef > 0 (otherwise the small model has no signal)",
    ),
]


@pytest.mark.parametrize("block, message", ERRORS, ids=[m.split("=")[0].split(" ")[0] for _, m in ERRORS])
def test_every_validation_error_names_key_and_allowed_values(block, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        CoDistillConfig.from_dict(block)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_top_level_must_be_a_mapping():
    with pytest.raises(ValueError, match=re.escape(f"{P}=3 must be a mapping")):
        CoDistillConfig.from_dict(3)


def test_grpo_small_baseline_config_is_valid():
    cfg = CoDistillConfig.from_dict({"kd": {"coef": 0.0}, "large": {"enable": False}})
    assert cfg.large.enable is False and cfg.kd.coef == 0.0


def test_kd_coef_schedule_constant_and_linear():
    const = KDConfig(coef=0.7)
    assert [kd_coef_at(s, const) for s in (0, 5, 1000)] == [0.7, 0.7, 0.7]
    # linear from 1.0 to 0.2 over 4 steps: 1.0, 0.8, 0.6, 0.4, 0.2, then held at 0.2
    lin = KDConfig(coef=1.0, coef_schedule="linear", coef_final=0.2, decay_steps=4)
    got = [kd_coef_at(s, lin) for s in range(7)]
    assert got == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2])
    # a warm-up upwards works too, and a plain mapping is validated first
    up = {"coef": 0.0, "coef_schedule": "linear", "coef_final": 2.0, "decay_steps": 2}
    assert [kd_coef_at(s, up) for s in range(4)] == pytest.approx([0.0, 1.0, 2.0, 2.0])
    assert kd_coef_at(np.int64(1), lin) == pytest.approx(0.8)


def test_kd_coef_at_rejects_bad_step_and_bad_mapping():
    with pytest.raises(ValueError, match=re.escape("kd_coef_at: step=-1 must be an int >= 0")):
        kd_coef_at(-1, KDConfig())
    with pytest.raises(ValueError, match=re.escape("kd_coef_at: step=1.5 must be an int >= 0")):
        kd_coef_at(1.5, KDConfig())
    with pytest.raises(ValueError, match=re.escape(f"{P}.kd.coef_schedule='step' not in ['constant', 'linear']")):
        kd_coef_at(0, {"coef_schedule": "step"})


def test_schema_is_the_recipe_configs_node():
    """The composed config's algorithm.codistill holds every schema key with its default (written once)."""
    from recipe.codistill_grpo.configuration import compose_config

    node = OmegaConf.to_container(compose_config("qwen2.5-math-1.5b_7b", "codistill").algorithm.codistill)
    assert node == {
        "kd": {"coef": 1.0, "credit": "token", "clamp": 10.0, "coef_schedule": "constant", "coef_final": 0.0, "decay_steps": 0},
        "is": {"level": "token", "mode": "truncate", "threshold": 2.0, "self_normalize": False, "behavior": "fsdp"},
        "large": {"enable": True, "train": True, "advantage": "grpo", "placement": "colocate", "nnodes": 1,
                  "n_gpus_per_node": 8, "skip_zero_grad": True},
        "task_reward": True,
    }


def test_config_objects_are_frozen_like_verls():
    from dataclasses import FrozenInstanceError

    cfg = CoDistillConfig.from_dict({})
    with pytest.raises(FrozenInstanceError):
        cfg.kd.coef = 2.0
