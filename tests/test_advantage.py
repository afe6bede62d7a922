"""Small-model advantage: KD reward, credit modes, GRPO equivalence, registration.

Expected values come from slow loop references over samples and tokens (python floats) or are
worked out by hand in the test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl.trainer.ppo.core_algos import (
    compute_grpo_outcome_advantage,
    compute_grpo_vectorized_outcome_advantage,
    get_adv_estimator_fn,
)

import verl_ext.codistill as codistill
from tests.support import group_stats, grpo_reference, make_batch
from verl_ext.codistill.advantage import (
    compute_codistill_advantage_from_config,
    compute_codistill_outcome_advantage,
    compute_kd_reward,
)

# ---------------------------------------------------------------- slow references (batch: tests/support.py)


def ref_grpo_scalar(rewards, labels, eps, norm):
    """The GRPO reference of tests/support.py on the row sums of ``rewards`` (bs, T)."""
    return grpo_reference([float(sum(row)) for row in rewards.double().tolist()], labels, eps, norm)


def ref_kd(ls, ll, mask, c):
    n, t = ls.shape
    out = [[0.0] * t for _ in range(n)]
    for i in range(n):
        for j in range(t):
            if mask[i, j] > 0:
                out[i][j] = min(max(float(ll[i, j]) - float(ls[i, j]), -c), c)
    return out


def ref_advantage(rewards, mask, labels, ls, ll, beta, credit, c, eps, norm, task_reward):
    n, t = ls.shape
    d = ref_kd(ls.double(), ll.double(), mask, c)
    a_r = ref_grpo_scalar(rewards, labels, eps, norm) if task_reward else [0.0] * n
    if credit == "sequence":
        seq = []
        for i in range(n):
            cnt = sum(1 for j in range(t) if mask[i, j] > 0)
            seq.append(sum(d[i]) / cnt if cnt else 0.0)
        stats = group_stats(seq, labels)
    out = [[0.0] * t for _ in range(n)]
    for i in range(n):
        for j in range(t):
            if mask[i, j] == 0:
                continue
            if credit == "token":
                k = d[i][j]
            elif credit == "reward_to_go":
                k = sum(d[i][jj] for jj in range(j, t))
            else:
                mean, std = stats[labels[i]]
                k = (seq[i] - mean) / (std + eps)
            out[i][j] = a_r[i] + beta * k
    return torch.tensor(out, dtype=torch.float64)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("clamp", [10.0, 0.5])
def test_kd_reward_matches_loop_reference(clamp):
    _, mask, _, ls, ll = make_batch(1)
    d = compute_kd_reward(ls, ll, mask, clamp=clamp)
    expected = torch.tensor(ref_kd(ls, ll, mask, clamp), dtype=torch.float32)
    assert torch.allclose(d, expected, atol=1e-6, rtol=0)
    assert d[1, 0] == clamp and d[2, 1] == -clamp  # the extreme gaps hit the clamp
    assert torch.all(d[0] == 0)  # empty response


@pytest.mark.parametrize("credit", ["token", "reward_to_go", "sequence"])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("task_reward", [True, False])
def test_advantage_matches_loop_reference(credit, norm, task_reward):
    rewards, mask, labels, ls, ll = make_batch(2)
    adv, ret = compute_codistill_outcome_advantage(
        rewards, mask, labels, ls, ll, kd_coef=0.7, kd_credit=credit, kd_clamp=10.0,
        epsilon=1e-6, norm_adv_by_std_in_grpo=norm, task_reward=task_reward,
    )  # fmt: skip
    expected = ref_advantage(rewards, mask, labels, ls, ll, 0.7, credit, 10.0, 1e-6, norm, task_reward)
    assert adv.shape == ls.shape and adv.dtype == torch.float32
    assert torch.allclose(adv.double(), expected, atol=2e-5, rtol=1e-5), (adv.double() - expected).abs().max()
    assert torch.equal(adv, ret)
    assert torch.all(adv[mask == 0] == 0)


def test_advantage_float64_is_exact_to_reference():
    rewards, mask, labels, ls, ll = make_batch(3, dtype=torch.float64)
    for credit in ["token", "reward_to_go", "sequence"]:
        adv, _ = compute_codistill_outcome_advantage(rewards, mask, labels, ls, ll, kd_coef=1.3, kd_credit=credit)
        expected = ref_advantage(rewards, mask, labels, ls, ll, 1.3, credit, 10.0, 1e-6, True, True)
        assert adv.dtype == torch.float64
        assert torch.allclose(adv, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kd_coef_zero_reproduces_verl_grpo(norm, seed):
    rewards, mask, labels, ls, ll = make_batch(seed)
    ours, _ = compute_codistill_outcome_advantage(
        rewards, mask, labels, ls, ll, kd_coef=0.0, norm_adv_by_std_in_grpo=norm
    )
    verl_adv, _ = compute_grpo_outcome_advantage(rewards, mask, labels, norm_adv_by_std_in_grpo=norm)
    verl_vec, _ = compute_grpo_vectorized_outcome_advantage(rewards, mask, labels, norm_adv_by_std_in_grpo=norm)
    assert (ours - verl_adv).abs().max().item() <= 1e-6
    assert (ours - verl_vec).abs().max().item() <= 1e-6
    # the all-equal group is exactly 0 and the singleton keeps its raw reward (mean 0, std 1)
    assert torch.all(ours[5:8] == 0)
    r4 = rewards[4].sum().item()
    assert ours[4, 0].item() == pytest.approx(r4 / (1 + 1e-6) if norm else r4, abs=1e-7)


# Hand-worked 2x3 example, one group of two, beta = 0.5, c = 1.5, eps = 0, no std normalisation:
#   ls = [[-1,-2,-3],[-1,-1,-1]], ll = [[-2,-1,-3],[-1,-3,0]], m = [[1,1,1],[1,1,0]], r = [1, 0]
#   A_R = [0.5, -0.5];  ll - ls = [[-1,1,0],[0,-2,(1)]]  ->  d = [[-1,1,0],[0,-1.5,0]]
HAND = dict(
    ls=torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]]),
    ll=torch.tensor([[-2.0, -1.0, -3.0], [-1.0, -3.0, 0.0]]),
    mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
    rewards=torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
    index=np.array(["g", "g"], dtype=object),
)


def _hand(credit, norm=False):
    h = HAND
    adv, _ = compute_codistill_outcome_advantage(
        h["rewards"], h["mask"], h["index"], h["ls"], h["ll"], kd_coef=0.5, kd_credit=credit,
        kd_clamp=1.5, epsilon=0.0, norm_adv_by_std_in_grpo=norm,
    )  # fmt: skip
    return adv


def test_hand_worked_kd_reward():
    d = compute_kd_reward(HAND["ls"], HAND["ll"], HAND["mask"], clamp=1.5)
    assert torch.equal(d, torch.tensor([[-1.0, 1.0, 0.0], [0.0, -1.5, 0.0]]))


def test_hand_worked_token_credit():
    # A = (A_R + 0.5 d) m = [[0.5-0.5, 0.5+0.5, 0.5], [-0.5, -0.5-0.75, 0]]
    expected = torch.tensor([[0.0, 1.0, 0.5], [-0.5, -1.25, 0.0]])
    assert torch.allclose(_hand("token"), expected, atol=1e-7)


def test_hand_worked_reward_to_go_credit():
    # K = [[-1+1+0, 1+0, 0], [0-1.5, -1.5, 0]] = [[0,1,0],[-1.5,-1.5,0]]
    expected = torch.tensor([[0.5, 1.0, 0.5], [-1.25, -1.25, 0.0]])
    assert torch.allclose(_hand("reward_to_go"), expected, atol=1e-7)


def test_hand_worked_sequence_credit():
    # D = [0/3, -1.5/2] = [0, -0.75]; mean -0.375; unbiased std = 0.375*sqrt(2); K = [+1, -1]/sqrt(2)
    k = 1 / math.sqrt(2)
    a0, a1 = 0.5 + 0.5 * k, -0.5 - 0.5 * k
    expected = torch.tensor([[a0, a0, a0], [a1, a1, 0.0]])
    assert torch.allclose(_hand("sequence"), expected, atol=1e-6)


def test_hand_worked_std_normalised_token_credit():
    # unbiased std of r=[1,0] is 1/sqrt(2): A_R = [+-0.5*sqrt(2)]
    a = 0.5 * math.sqrt(2)
    expected = torch.tensor([[a - 0.5, a + 0.5, a], [-a, -a - 0.75, 0.0]])
    assert torch.allclose(_hand("token", norm=True), expected, atol=1e-6)


def test_task_reward_off_is_kd_only():
    h = HAND
    adv, _ = compute_codistill_outcome_advantage(
        h["rewards"], h["mask"], h["index"], h["ls"], h["ll"], kd_coef=0.5, kd_clamp=1.5, task_reward=False
    )
    assert torch.allclose(adv, torch.tensor([[-0.5, 0.5, 0.0], [0.0, -0.75, 0.0]]), atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("credit", ["token", "reward_to_go", "sequence"])
def test_finite_outputs_for_extreme_finite_inputs(dtype, credit):
    rewards, mask, labels, ls, ll = make_batch(4, dtype=dtype)
    big = torch.finfo(dtype).max
    ls[1, :] = -big
    ll[1, :] = big  # ll - ls overflows to +inf before the clamp
    ll[2, :] = -big
    adv, _ = compute_codistill_outcome_advantage(rewards, mask, labels, ls, ll, kd_credit=credit)
    assert torch.isfinite(adv).all()
    d = compute_kd_reward(ls, ll, mask)
    assert torch.isfinite(d).all() and d[1, 0] == 10.0


def test_bad_arguments_raise():
    rewards, mask, labels, ls, ll = make_batch(0)
    with pytest.raises(ValueError, match=r"kd_credit='tok' not in \['token', 'reward_to_go', 'sequence'\]"):
        compute_codistill_outcome_advantage(rewards, mask, labels, ls, ll, kd_credit="tok")
    with pytest.raises(ValueError, match=r"index has 3 entries, expected one group id per response \(15\)"):
        compute_codistill_outcome_advantage(rewards, mask, labels[:3], ls, ll)
    with pytest.raises(ValueError, match=r"large_log_probs has shape \(15, 6\), expected \(15, 7\)"):
        compute_codistill_outcome_advantage(rewards, mask, labels, ls, ll[:, :6])
    with pytest.raises(ValueError, match=r"kd clamp=0.0 must be > 0"):
        compute_kd_reward(ls, ll, mask, clamp=0.0)


# ---------------------------------------------------------------- registration


@pytest.mark.parametrize("credit", ["token", "reward_to_go", "sequence"])
@pytest.mark.parametrize("task_reward", [True, False])
def test_verls_pass_then_kd_part_equals_the_loop_reference(credit, task_reward):
    """The production path: verl's own compute_advantage with adv_estimator=codistill (rewards only),
    then add_kd_advantage with both log-probs, against the slow reference of the whole A_s."""
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from verl_ext.codistill.advantage import add_kd_advantage

    assert get_adv_estimator_fn("codistill") is compute_codistill_advantage_from_config
    rewards, mask, labels, ls, ll = make_batch(5)
    algo = OmegaConf.create(
        {
            "adv_estimator": "codistill",
            "norm_adv_by_std_in_grpo": True,
            "codistill": {"kd": {"coef": 0.3, "credit": credit, "clamp": 4.0}, "task_reward": task_reward},
        }
    )
    batch = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": labels}
    )
    batch = compute_advantage(batch, adv_estimator="codistill", norm_adv_by_std_in_grpo=True, config=algo)
    outcome = batch.batch["advantages"]
    a_r = ref_grpo_scalar(rewards, labels, 1e-6, True) if task_reward else [0.0] * len(labels)
    want_outcome = torch.tensor(a_r, dtype=torch.float64)[:, None] * mask.double()
    assert (outcome.double() - want_outcome).abs().max().item() < 1e-5
    adv, _ = add_kd_advantage(outcome, mask, labels, ls, ll, kd_coef=0.3, kd_credit=credit, kd_clamp=4.0)
    want = ref_advantage(rewards, mask, labels, ls, ll, 0.3, credit, 4.0, 1e-6, True, task_reward)
    assert (adv.double() - want).abs().max().item() < 1e-4
    assert want.abs().max().item() > 0.1


@pytest.mark.parametrize("norm", [True, False])
def test_verls_compute_advantage_honours_norm_adv_by_std_in_grpo(norm):
    """Issue 16 item 1: through verl's own compute_advantage, the registered estimator with kd_coef=0
    gives verl's GRPO advantages for both values of algorithm.norm_adv_by_std_in_grpo (Dr. GRPO's
    false included); the hand-worked group [1, 0, 0, 0] gives [1.5, -0.5, ...] divided by
    std = 0.5 (+eps) with the flag, [0.75, -0.25, ...] without."""
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    rewards, mask, labels, _, _ = make_batch(5)
    algo = OmegaConf.create(
        {"adv_estimator": "codistill", "norm_adv_by_std_in_grpo": norm, "codistill": {"kd": {"coef": 0.0}}}
    )

    def verls(estimator, tensors):
        batch = DataProto.from_dict(tensors=dict(tensors), non_tensors={"uid": labels})
        return compute_advantage(batch, adv_estimator=estimator, norm_adv_by_std_in_grpo=norm, config=algo)

    ours = verls("codistill", {"token_level_rewards": rewards, "response_mask": mask}).batch["advantages"]
    grpo = verls("grpo", {"token_level_rewards": rewards, "response_mask": mask}).batch["advantages"]
    assert (ours - grpo).abs().max().item() < 1e-6
    assert grpo.abs().max().item() > 0.1

    one = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    hand = DataProto.from_dict(
        tensors={"token_level_rewards": one, "response_mask": torch.ones(4, 1)},
        non_tensors={"uid": np.array(["g"] * 4, dtype=object)},
    )
    got = compute_advantage(hand, adv_estimator="codistill", norm_adv_by_std_in_grpo=norm, config=algo)
    want = [1.5, -0.5, -0.5, -0.5] if norm else [0.75, -0.25, -0.25, -0.25]  # std of [1,0,0,0] is 0.5
    assert got.batch["advantages"][:, 0].tolist() == pytest.approx(want, abs=1e-5)


def test_registered_estimator_applies_schedule_and_task_reward():
    rewards, mask, labels, ls, ll = make_batch(6)
    algo = {
        "codistill": {
            "kd": {"coef": 1.0, "coef_schedule": "linear", "coef_final": 0.2, "decay_steps": 4},
            "task_reward": False,
        }
    }
    fn = get_adv_estimator_fn("codistill")
    adv, _ = fn(rewards, mask, labels, config=algo, small_log_probs=ls, large_log_probs=ll, step=2)
    direct, _ = compute_codistill_outcome_advantage(rewards, mask, labels, ls, ll, kd_coef=0.6, task_reward=False)
    assert torch.allclose(adv, direct, atol=1e-7)


def test_registered_estimator_errors_name_what_is_missing():
    rewards, mask, labels, ls, ll = make_batch(0)
    fn = get_adv_estimator_fn("codistill")
    with pytest.raises(ValueError, match="needs both keyword tensors small_log_probs"):
        fn(rewards, mask, labels, config={"codistill": {}}, small_log_probs=ls)
    with pytest.raises(ValueError, match=r"needs algorithm.codistill in the algorithm config"):
        fn(rewards, mask, labels, config={"adv_estimator": "grpo"}, small_log_probs=ls, large_log_probs=ll)


def test_registration_by_plugin_entry_point_and_idempotent_reload():
    """A fresh process: `import verl` alone loads the recipe's verl.plugins entry point (pyproject.toml),
    which registers both names; importing and reloading the modules again does not raise."""
    code = (
        "import importlib, verl\n"
        "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY\n"
        "assert 'codistill' in ADV_ESTIMATOR_REGISTRY and 'codistill_teacher' in POLICY_LOSS_REGISTRY\n"
        "import sys; assert 'recipe.codistill_grpo.plugin' in sys.modules\n"
        "import verl_ext.codistill as c\n"
        "importlib.reload(importlib.import_module('verl_ext.codistill.advantage'))\n"
        "importlib.reload(c)\n"
        "import verl_ext.codistill.advantage as a\n"
        "assert ADV_ESTIMATOR_REGISTRY['codistill'] is a.compute_codistill_advantage_from_config\n"
        "assert POLICY_LOSS_REGISTRY['codistill_teacher'] is c.codistill_teacher_policy_loss\n"
        "assert 'recipe.codistill_grpo.cpu.platform' not in sys.modules  # the CPU shim only with VERL_PLATFORM=cpu\n"
        "print('registered')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES", "VERL_PLATFORM")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "registered" in out.stdout


def test_registry_refuses_a_different_function_under_our_name():
    from verl.trainer.ppo import core_algos

    saved = core_algos.ADV_ESTIMATOR_REGISTRY["codistill"]

    def impostor(*args, **kwargs):
        return None

    core_algos.ADV_ESTIMATOR_REGISTRY["codistill"] = impostor
    try:
        with pytest.raises(ValueError, match="'codistill' is already taken by"):
            codistill.register()
    finally:
        core_algos.ADV_ESTIMATOR_REGISTRY["codistill"] = saved


@pytest.mark.parametrize("credit", ["token", "reward_to_go", "sequence"])
def test_one_computation_of_the_small_advantage(credit, monkeypatch):
    """Issue 16 item 16: the full-advantage entry is verl's outcome pass followed by add_kd_advantage (what
    training calls), bit for bit, and it goes through add_kd_advantage rather than a second copy."""
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    import verl_ext.codistill.advantage as adv_mod

    rewards, mask, labels, ls, ll = make_batch(9)
    algo = OmegaConf.create({"adv_estimator": "codistill", "codistill": {"kd": {"coef": 0.7, "credit": credit}}})
    batch = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": labels}
    )
    outcome = compute_advantage(batch, adv_estimator="codistill", norm_adv_by_std_in_grpo=True, config=algo).batch[
        "advantages"
    ]
    trained, _ = adv_mod.add_kd_advantage(outcome, mask, labels, ls, ll, kd_coef=0.7, kd_credit=credit)
    full, _ = compute_codistill_outcome_advantage(rewards, mask, labels, ls, ll, kd_coef=0.7, kd_credit=credit)
    assert torch.equal(full, trained)

    calls = []
    real = adv_mod.add_kd_advantage
    monkeypatch.setattr(adv_mod, "add_kd_advantage", lambda *a, **k: calls.append(1) or real(*a, **k))
    compute_codistill_outcome_advantage(rewards, mask, labels, ls, ll, kd_coef=0.7, kd_credit=credit)
    assert calls == [1]
