"""``algorithm.codistill``: the project's rules and their one-line errors (each names the full key and
the allowed values; the cross-field rules), the defaults against docs/algorithm.md's table (parsed
here), and the KD schedule against hand-worked values."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from verl_ext.codistill.config import CoDistillConfig, KDConfig, kd_coef_at

DOC = Path(__file__).resolve().parents[1] / "docs" / "algorithm.md"


def documented_defaults() -> dict[str, object]:
    """``{dotted key: default}`` from the table under "Every key of `algorithm.codistill`" in
    docs/algorithm.md (each default cell parsed as YAML: `1.0` a float, `true` a bool, `8` an int)."""
    text = DOC.read_text().split("## Every key of `algorithm.codistill` and its default", 1)[1]
    out = {}
    for line in text.split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[1].startswith("`"):
            out[cells[0].strip("`")] = yaml.safe_load(cells[1].strip("`"))
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_documented_table_is_complete():
    doc = documented_defaults()
    assert len(doc) == 19 and doc["kd.coef"] == 1.0 and doc["is.threshold"] == 2.0 and doc["task_reward"] is True


def test_defaults_are_the_documented_ones():
    doc = documented_defaults()
    for cfg in (CoDistillConfig.from_dict({}), CoDistillConfig.from_dict(None)):
        got = flatten(cfg.to_dict())
        assert got == doc
        # the same types as written in the doc (2.0 a float, 8 an int, true a bool)
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in doc.items()}


def test_interpolations_are_resolved_before_the_checks():
    root = OmegaConf.create({"beta": -0.25, "algorithm": {"codistill": {"kd": {"coef": "${beta}"}}}})
    with pytest.raises(ValueError, match=re.escape("algorithm.codistill.kd.coef=-0.25 must be >= 0")):
        CoDistillConfig.from_dict(root.algorithm.codistill)
    root.beta = 0.25
    cfg = CoDistillConfig.from_dict(root.algorithm.codistill)
    assert kd_coef_at(7, cfg.kd) == 0.25


P = "algorithm.codistill"
ERRORS = [
    ({"is": {"level": "foo"}}, f"{P}.is.level='foo' not in ['token', 'sequence', 'geo_mean']"),
    ({"is": {"mode": "clip"}}, f"{P}.is.mode='clip' not in ['truncate', 'mask', 'none']"),
    ({"is": {"threshold": -1.0}}, f"{P}.is.threshold=-1.0 must be a finite number > 0"),
    ({"is": {"threshold": 0}}, f"{P}.is.threshold=0.0 must be a finite number > 0"),
    ({"is": {"mode": "mask", "threshold": 0.5}}, f"{P}.is.threshold=0.5 must be >= 1 when {P}.is.mode='mask'"),
    ({"is": {"threshold": "2"}}, f"{P}.is.threshold='2' must be a number"),
    ({"is": {"self_normalize": "yes"}}, f"{P}.is.self_normalize='yes' must be a bool (true or false)"),
    (
        {"is": {"lvl": "token"}},
        f"{P}.is.lvl is not a known key; allowed keys: ['behavior', 'level', 'mode', 'self_normalize', 'threshold']",
    ),
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
    (
        {"kd": {"beta": 1}},
        f"{P}.kd.beta is not a known key; allowed keys: "
        "['clamp', 'coef', 'coef_final', 'coef_schedule', 'credit', 'decay_steps']",
    ),
    ({"large": {"advantage": "gae"}}, f"{P}.large.advantage='gae' not in ['grpo', 'is_baseline']"),
    ({"large": {"enable": 1}}, f"{P}.large.enable=1 must be a bool (true or false)"),
    ({"large": {"train": None}}, f"{P}.large.train=None must be a bool (true or false)"),
    (
        {"large": {"path": "x"}},
        f"{P}.large.path is not a known key; allowed keys: "
        "['advantage', 'enable', 'n_gpus_per_node', 'nnodes', 'placement', 'skip_zero_grad', 'train']",
    ),
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


@pytest.mark.parametrize("block", [
    {"kd": {"coef": 0.0}, "large": {"enable": False}},  # grpo_small / grpo_large
    {"task_reward": False, "kd": {"coef": 0.5}},  # kd_only
    {"large": {"enable": False, "train": False}, "kd": {"coef": 0}},  # an int 0 is a zero coefficient
    {"is": {"mode": "mask", "threshold": 1}},  # the mask boundary C = 1 is allowed
    {"is": {"mode": "truncate", "threshold": 0.5}},  # C < 1 is only refused for mask
])  # fmt: skip
def test_cross_field_rules_accept_their_boundaries(block):
    CoDistillConfig.from_dict(block)


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
    # 0.5 -> 0.1 over 3 steps: 0.5 - 0.4 k / 3 = 1/2, 11/30, 7/30, 1/10, then 1/10
    odd = KDConfig(coef=0.5, coef_schedule="linear", coef_final=0.1, decay_steps=3)
    assert [kd_coef_at(s, odd) for s in (0, 1, 2, 3, 10)] == pytest.approx([0.5, 11 / 30, 7 / 30, 0.1, 0.1], rel=1e-12)


def test_kd_coef_at_rejects_bad_step_and_bad_mapping():
    with pytest.raises(ValueError, match=re.escape("kd_coef_at: step=-1 must be an int >= 0")):
        kd_coef_at(-1, KDConfig())
    with pytest.raises(ValueError, match=re.escape("kd_coef_at: step=1.5 must be an int >= 0")):
        kd_coef_at(1.5, KDConfig())
    with pytest.raises(ValueError, match=re.escape(f"{P}.kd.coef_schedule='step' not in ['constant', 'linear']")):
        kd_coef_at(0, {"coef_schedule": "step"})
    with pytest.raises(
        ValueError, match=re.escape(f"{P}.kd.decay_steps=0 must be > 0 when {P}.kd.coef_schedule='linear'")
    ):
        kd_coef_at(3, {"coef_schedule": "linear"})


def test_recipe_config_node_holds_the_documented_defaults():
    """The composed config's algorithm.codistill has every documented key with its documented default."""
    from recipe.codistill_grpo.configuration import compose_config

    node = OmegaConf.to_container(compose_config("qwen2.5-math-1.5b_7b", "codistill").algorithm.codistill)
    assert flatten(node) == documented_defaults()
