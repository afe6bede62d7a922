"""Start-up checks, the large worker's config and the trainer's advantage pass: fast, no Ray, no training.

Bad configs must fail before Ray starts or a model loads, with one line naming the key and the
values. Expected values are computed here independently (loops), or are verl's own GRPO function
for the baseline equivalence.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recipe.codistill_grpo.configuration import (
    ConfigError,
    build_large_worker_config,
    check_allocation,
    check_config,
    compose_config,
    resolved,
    skip_small_zero_grad,
)
from tests.support import grpo_reference

PAIR = "qwen2.5-math-1.5b_7b"


def cpu_config(overrides=(), exp="codistill", pair=PAIR):
    """The pair x experiment with the CPU substitutions (the tiny pair), as the CPU smoke run composes it."""
    return compose_config(pair, exp, list(overrides), platform="cpu")


def _error(overrides, exp="codistill") -> str:
    with pytest.raises(ConfigError) as err:
        check_config(cpu_config(overrides, exp=exp))
    msg = str(err.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------ good configs


def test_cpu_config_passes_and_keeps_the_real_reward():
    plan = check_config(cpu_config())
    cfg = plan.config
    assert cfg.algorithm.adv_estimator == "codistill"
    assert plan.codistill.kd.coef == 1.0 and plan.codistill.is_.level == "token"
    assert cfg.reward.custom_reward_function.path == "pkg://verl_ext.reward.math_reward"
    from verl.utils.import_utils import load_extern_object

    from verl_ext.reward.math_reward import compute_score

    assert load_extern_object(cfg.reward.custom_reward_function.path, "compute_score") is compute_score
    assert cfg.trainer.use_v1 is False and "file" in cfg.trainer.logger


# ------------------------------------------------------------------------------------------ bad configs


def test_group_size_one():
    assert _error(["actor_rollout_ref.rollout.n=1"]).startswith("actor_rollout_ref.rollout.n=1 must be >= 2")


def test_verls_grpo_estimator_is_refused_with_the_recipe_alternative():
    msg = _error(["algorithm.adv_estimator=grpo"])
    assert msg.startswith("algorithm.adv_estimator='grpo' must be 'codistill'") and "exp=grpo_small" in msg


def test_logger_without_file_is_refused():
    assert _error(["trainer.logger=[console]"]) == (
        "trainer.logger=['console'] must include 'file' (it writes the run's metrics.jsonl)"
    )


def test_unknown_is_level():
    assert (
        _error(["algorithm.codistill.is.level=foo"])
        == "algorithm.codistill.is.level='foo' not in ['token', 'sequence', 'geo_mean']"
    )


def test_kd_without_large_model():
    msg = _error(["algorithm.codistill.large.enable=false"])
    assert msg.startswith("algorithm.codistill.kd.coef=1.0 must be 0 when algorithm.codistill.large.enable=false")


def test_batch_not_divisible_by_the_data_parallel_size():
    # 4 prompts x 4 samples = 16 responses over 3 ranks
    assert _error(["trainer.n_gpus_per_node=3"]) == (
        "data.train_batch_size * rollout.n = 4 * 4 = 16 responses is not divisible by the small actor's "
        "data-parallel size 3 (3 GPU(s) / sequence-parallel 1)"
    )
    # the large model on its own pool of 3 ranks
    msg = _error(["algorithm.codistill.large.placement=separate", "algorithm.codistill.large.n_gpus_per_node=3"])
    assert msg == (
        "data.train_batch_size * rollout.n = 4 * 4 = 16 responses is not divisible by the large actor's "
        "data-parallel size 3 (3 GPU(s) / sequence-parallel 1)"
    )


def test_train_batch_not_a_multiple_of_the_mini_batch():
    assert _error(["data.train_batch_size=6"]) == (
        "data.train_batch_size=6 is not a multiple of actor_rollout_ref.actor.ppo_mini_batch_size=4 "
        "(both count prompts; each prompt has actor_rollout_ref.rollout.n=4 responses)"
    )
    assert _error(["actor_rollout_ref.actor.ppo_mini_batch_size=8"]).startswith(
        "data.train_batch_size=4 is not a multiple of actor_rollout_ref.actor.ppo_mini_batch_size=8"
    )


def test_mini_batch_not_divisible_by_the_data_parallel_size():
    # 4 prompts, mini-batch 2 prompts x 3 samples = 6 responses over 4 ranks; the batch (12) divides
    msg = _error(
        [
            "trainer.n_gpus_per_node=4",
            "data.train_batch_size=4",
            "actor_rollout_ref.actor.ppo_mini_batch_size=2",
            "actor_rollout_ref.rollout.n=3",
            "pair.small.log_prob_micro_batch_size_per_gpu=3",
        ]
    )
    assert msg == (
        "actor_rollout_ref.actor.ppo_mini_batch_size * rollout.n = 2 * 3 = 6 responses is not divisible by the "
        "small actor's data-parallel size 4 (4 GPU(s) / sequence-parallel 1)"
    )


def test_the_large_models_own_values_are_checked():
    """Mini-batch and sequence-parallel size of the large model, not the small model's."""
    assert _error(["+large_actor.actor.ppo_mini_batch_size=3"]) == (
        "data.train_batch_size=4 is not a multiple of large_actor.actor.ppo_mini_batch_size=3 "
        "(both count prompts; each prompt has actor_rollout_ref.rollout.n=4 responses)"
    )
    four = [
        "trainer.n_gpus_per_node=4",
        "pair.small.actor.ppo_micro_batch_size_per_gpu=4",
        "pair.small.log_prob_micro_batch_size_per_gpu=4",
        "pair.large.actor.ppo_micro_batch_size_per_gpu=4",
        "pair.large.log_prob_micro_batch_size_per_gpu=4",
    ]
    assert _error([*four, "+large_actor.actor.ulysses_sequence_parallel_size=3"]) == (
        "large_actor.actor.ulysses_sequence_parallel_size=3: the large actor's 4 GPU(s) are not divisible by its "
        "sequence-parallel size"
    )
    assert _error(["pair.large.actor.ppo_micro_batch_size_per_gpu=5"]) == (
        "large_actor.actor.ppo_micro_batch_size_per_gpu=5 does not divide the large actor's mini-batch per GPU 16 "
        "(ppo_mini_batch_size 4 * rollout.n 4 / data-parallel 1)"
    )
    assert _error(["pair.large.log_prob_micro_batch_size_per_gpu=5"]) == (
        "large_actor.rollout.log_prob_micro_batch_size_per_gpu=5 does not divide the large actor's share of the "
        "batch per GPU 16 (train_batch_size 4 * rollout.n 4 / data-parallel 1)"
    )
    # the same values on the small model are fine: the checks read each model's own
    check_config(
        cpu_config(["+large_actor.actor.ppo_mini_batch_size=2", "pair.large.actor.ppo_micro_batch_size_per_gpu=8"])
    )
    check_config(cpu_config([*four, "+large_actor.actor.ulysses_sequence_parallel_size=2"]))


def test_large_kl_loss_is_refused_not_switched_off():
    assert _error(["+large_actor.actor.use_kl_loss=true"]) == (
        "large_actor.actor.use_kl_loss=true is not supported: the large model trains without a KL-to-reference "
        "loss (no reference copy of it is loaded); set it to false"
    )


def test_zero_grad_skip_refused_where_it_cannot_be_exact():
    msg = _error(["+large_actor.actor.entropy_coeff=0.01"])
    assert msg.startswith(
        "algorithm.codistill.large.skip_zero_grad=true cannot be exact with large_actor.actor.entropy_coeff=0.01"
    )
    assert msg.endswith("set algorithm.codistill.large.skip_zero_grad=false")
    assert "loss_agg_mode='seq-mean-token-sum-norm'" in _error(
        ["+large_actor.actor.loss_agg_mode=seq-mean-token-sum-norm"]
    )
    # without the skip the same configs run
    check_config(
        cpu_config(["+large_actor.actor.entropy_coeff=0.01", "algorithm.codistill.large.skip_zero_grad=false"])
    )

    # the small actor skips only where exact: the GRPO baselines (no KD term), no entropy bonus or KL loss
    def small_skips(overrides=(), exp="codistill"):
        plan = check_config(cpu_config(list(overrides), exp=exp))
        return skip_small_zero_grad(plan.codistill, plan.config.actor_rollout_ref.actor)

    assert small_skips(exp="grpo_small") is True
    assert small_skips() is False
    assert small_skips(["actor_rollout_ref.actor.entropy_coeff=0.01"], exp="grpo_small") is False


def test_rollout_behavior_needs_the_rollouts_log_probs():
    assert _error(
        ["algorithm.codistill.is.behavior=rollout", "actor_rollout_ref.rollout.calculate_log_probs=false"]
    ) == (
        "algorithm.codistill.is.behavior='rollout' needs the rollout's log-probs: set "
        "actor_rollout_ref.rollout.calculate_log_probs=true"
    )


@pytest.mark.parametrize(
    "key", ["actor_rollout_ref.actor.checkpoint.async_save", "large_actor.actor.checkpoint.async_save"]
)
def test_async_checkpoint_save_is_refused(key):
    """Issue 16 item 4: verl writes no tracker for async saves, so such a run could never resume."""
    msg = _error([f"{'+' if key.startswith('large_actor') else ''}{key}=true"])
    assert msg.startswith(f"{key}=true is not supported: verl writes no tracker file for an async save")
    assert msg.endswith("set it to false")


def test_allocation_must_fit():
    plan = check_config(
        cpu_config(
            [
                "trainer.nnodes=2",
                "trainer.n_gpus_per_node=2",
                "pair.small.actor.ppo_micro_batch_size_per_gpu=4",
                "pair.small.log_prob_micro_batch_size_per_gpu=4",
                "pair.large.actor.ppo_micro_batch_size_per_gpu=4",
                "pair.large.log_prob_micro_batch_size_per_gpu=4",
            ]
        )
    )
    check_allocation(plan, {"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "h100:2"})
    with pytest.raises(ConfigError, match=r"^the run needs 2 node\(s\) \(trainer.nnodes=2\) but the allocation has 1$"):
        check_allocation(plan, {"SLURM_JOB_NUM_NODES": "1"})
    with pytest.raises(ConfigError, match=r"^trainer.n_gpus_per_node=2 but the allocation has 1 GPU\(s\) per node$"):
        check_allocation(plan, {"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "1"})
    separate = check_config(
        cpu_config(
            [
                "algorithm.codistill.large.placement=separate",
                "algorithm.codistill.large.nnodes=1",
                "algorithm.codistill.large.n_gpus_per_node=1",
            ]
        )
    )
    with pytest.raises(
        ConfigError, match=r"needs 2 node\(s\) \(trainer.nnodes=1 \+ algorithm.codistill.large.nnodes=1"
    ):
        check_allocation(separate, {"SLURM_JOB_NUM_NODES": "1"})
    check_allocation(plan, {})  # not in an allocation: nothing to check


@pytest.mark.slow
def test_entry_point_fails_before_ray_with_one_line():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.codistill_grpo.main_codistill",
            "platform=cpu",
            "algorithm.codistill.is.level=foo",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "codistill: algorithm.codistill.is.level='foo' not in ['token', 'sequence', 'geo_mean']"
    )
    assert "ray init kwargs" not in proc.stdout + proc.stderr


def test_group_options_are_names_not_paths():
    """hydra would load exp=../pair/<file> from outside configs/exp; the entry point refuses it."""
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.codistill_grpo.main_codistill", "platform=cpu", f"exp=../pair/{PAIR}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"codistill: unknown exp '../pair/{PAIR}'; available: "
        "codistill, frozen_teacher, grpo_large, grpo_small, kd_only, no_is"
    )
    with pytest.raises(ConfigError, match="unknown pair 'gpt'; available: llama-3.2-1b_3.1-8b, qwen2.5-math-1.5b_7b"):
        compose_config("gpt", "codistill")


# ------------------------------------------------------------------------------------------ the large worker's config


def test_large_worker_config_merge():
    cfg = cpu_config(["large_actor.actor.optim.lr=3e-5", "pair.large.log_prob_micro_batch_size_per_gpu=2"])
    merged = build_large_worker_config(cfg)
    small = resolved(cfg).actor_rollout_ref
    assert merged.model.path.endswith("tiny/models/large") and small.model.path.endswith("tiny/models/small")
    assert merged.actor.optim.lr == 3e-5 and small.actor.optim.lr == resolved(cfg).pair.small.actor.optim.lr
    assert merged.rollout.log_prob_micro_batch_size_per_gpu == 2
    assert merged.actor.policy_loss.loss_mode == "codistill_teacher"
    assert small.actor.policy_loss.loss_mode == "vanilla"
    # the frozen teacher's forward-only engine uses the large model's own strategy and micro-batch
    frozen = build_large_worker_config(cfg, frozen=True)
    assert frozen.ref.strategy == "fsdp2" and frozen.ref.log_prob_micro_batch_size_per_gpu == 2


def test_large_worker_config_rederives_verls_derived_keys():
    """Dynamic batch sizes and a token budget on the large model only reach its log-prob pass."""
    cfg = cpu_config(["+large_actor.actor.use_dynamic_bsz=true", "+large_actor.actor.ppo_max_token_len_per_gpu=12345"])
    merged = build_large_worker_config(cfg)
    assert merged.actor.use_dynamic_bsz is True
    assert merged.rollout.log_prob_use_dynamic_bsz is True  # verl's init_model asserts these are equal
    assert merged.rollout.log_prob_max_token_len_per_gpu == 12345
    assert merged.ref.log_prob_use_dynamic_bsz is True
    small = resolved(cfg).actor_rollout_ref
    assert small.rollout.log_prob_use_dynamic_bsz is False and small.rollout.log_prob_max_token_len_per_gpu == 16384
    check_config(cfg)


# ------------------------------------------------------------------------------------------ advantage pass


def _trainer_stub(codistill: dict, norm: bool = True, step: int = 1):
    from recipe.codistill_grpo.trainer import CoDistillTrainer
    from verl_ext.codistill.config import CoDistillConfig

    trainer = CoDistillTrainer.__new__(CoDistillTrainer)
    trainer.cd = CoDistillConfig.from_dict(codistill)
    trainer.config = OmegaConf.create({"algorithm": {"norm_adv_by_std_in_grpo": norm, "codistill": codistill}})
    trainer.global_steps = step
    return trainer


def _batch(codistill: dict, seed: int = 0, groups: int = 3, g: int = 4, T: int = 7):
    """A shuffled batch after verl's own advantage pass (adv_estimator=codistill: the outcome part)."""
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    gen = torch.Generator().manual_seed(seed)
    bs = groups * g
    lengths = torch.randint(1, T + 1, (bs,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    rewards = torch.zeros(bs, T)
    scores = torch.randint(0, 3, (bs,), generator=gen).float() / 2
    rewards[torch.arange(bs), lengths - 1] = scores
    ls = -torch.rand(bs, T, generator=gen) * 3
    ll = -torch.rand(bs, T, generator=gen) * 3
    rollout = ls + 0.05 * torch.randn(bs, T, generator=gen)
    uid = np.array([f"p{i // g}" for i in range(bs)], dtype=object)
    perm = torch.randperm(bs, generator=gen)
    data = DataProto.from_dict(
        tensors={
            "token_level_rewards": rewards[perm],
            "response_mask": mask[perm],
            "old_log_probs": ls[perm] * mask[perm],
            "large_old_log_probs": ll[perm] * mask[perm],
            "rollout_log_probs": rollout[perm] * mask[perm],
        },
        non_tensors={"uid": uid[perm.numpy()]},
    )
    algo = OmegaConf.create({"adv_estimator": "codistill", "norm_adv_by_std_in_grpo": True, "codistill": codistill})
    return compute_advantage(data, adv_estimator="codistill", norm_adv_by_std_in_grpo=True, config=algo)


def _loop_grpo(batch) -> list[float]:
    """tests/support.py's GRPO reference on the batch's scores and uids."""
    return grpo_reference(batch.batch["token_level_rewards"].sum(-1).tolist(), list(batch.non_tensor_batch["uid"]))


def test_kd_coef_zero_reproduces_verls_grpo():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    cd = {"kd": {"coef": 0.0}}
    batch = _batch(cd)
    ref, _ = compute_grpo_outcome_advantage(
        batch.batch["token_level_rewards"],
        batch.batch["response_mask"],
        batch.non_tensor_batch["uid"],
        norm_adv_by_std_in_grpo=True,
    )
    _trainer_stub(cd)._codistill_advantages(batch)
    assert (batch.batch["advantages"] - ref).abs().max().item() <= 1e-6
    assert ref.abs().max().item() > 0.1  # not a degenerate batch


@pytest.mark.parametrize("behavior", ["fsdp", "rollout"])
def test_advantage_pass_fields_against_loops(behavior):
    """A_s, w (token/truncate/C=2, sampler by is.behavior) and A_l (grpo) against per-sample, per-token loops."""
    cd = {"kd": {"coef": 0.5, "clamp": 1.0}, "is": {"behavior": behavior}}
    batch = _batch(cd, seed=3)
    metrics = _trainer_stub(cd)._codistill_advantages(batch)
    b = batch.batch
    a_r = _loop_grpo(batch)
    sampler = b["rollout_log_probs"] if behavior == "rollout" else b["old_log_probs"]
    bs, T = b["response_mask"].shape
    for i in range(bs):
        for t in range(T):
            m = b["response_mask"][i, t].item()
            gap = b["large_old_log_probs"][i, t].item() - b["old_log_probs"][i, t].item()
            want = (a_r[i] + 0.5 * min(max(gap, -1.0), 1.0)) * m  # the KD reward always uses ls
            assert abs(b["advantages"][i, t].item() - want) < 1e-5
            log_w = b["large_old_log_probs"][i, t].item() - sampler[i, t].item()
            assert abs(b["large_is_weights"][i, t].item() - min(math.exp(log_w), 2.0) * m) < 1e-5
            assert abs(b["large_advantages"][i, t].item() - a_r[i] * m) < 1e-5
    assert metrics["small/kd_coef"] == 0.5
    assert 0.0 < metrics["large/is_ess"] <= 1.0


def test_frozen_teacher_adds_no_large_training_fields():
    cd = {"large": {"train": False}}
    batch = _batch(cd)
    metrics = _trainer_stub(cd)._codistill_advantages(batch)
    assert "large_is_weights" not in batch.batch.keys() and "large_advantages" not in batch.batch.keys()
    assert "large/is_ess" in metrics


def test_modes_kd_only_no_is_and_schedule():
    """task_reward=false: A_s = beta*d*m; is.mode=none: w = m; linear schedule: beta at 0-based step 2."""
    cd = {
        "kd": {"coef": 1.0, "coef_schedule": "linear", "coef_final": 0.0, "decay_steps": 4, "clamp": 10.0},
        "is": {"mode": "none"},
        "task_reward": False,
    }
    batch = _batch(cd, seed=5)
    metrics = _trainer_stub(cd, step=3)._codistill_advantages(batch)  # 1-based step 3 -> beta = 1 - 2/4
    b = batch.batch
    assert metrics["small/kd_coef"] == 0.5
    bs, T = b["response_mask"].shape
    for i in range(bs):
        for t in range(T):
            m = b["response_mask"][i, t].item()
            gap = b["large_old_log_probs"][i, t].item() - b["old_log_probs"][i, t].item()
            assert abs(b["advantages"][i, t].item() - 0.5 * gap * m) < 1e-5
            assert b["large_is_weights"][i, t].item() == m


def test_non_finite_log_probs_stop_the_step_with_one_line(monkeypatch):
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    from recipe.codistill_grpo.trainer import CoDistillRunError

    mask = torch.ones(2, 3)
    lp = torch.tensor([[-1.0, float("nan"), -2.0], [float("-inf"), -1.0, -1.0]])
    monkeypatch.setattr(
        RayPPOTrainer,
        "_compute_old_log_prob",
        lambda self, batch: (DataProto.from_dict(tensors={"old_log_probs": lp}), 0.0),
    )
    trainer = _trainer_stub({"kd": {"coef": 0.0}, "large": {"enable": False}}, step=7)
    batch = DataProto.from_dict(tensors={"response_mask": mask})
    with pytest.raises(CoDistillRunError) as err:
        trainer._compute_old_log_prob(batch)
    assert str(err.value).startswith("step 7: 2 non-finite log-probs from the small model (of 6 response tokens)")


# ------------------------------------------------------------------------------------------ dry run, resume


@pytest.mark.slow
def test_dry_run_prints_plan_without_models():
    """A GPU config resolves on any machine: hub names are not read, nothing starts."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.codistill_grpo.main_codistill",
            f"pair={PAIR}",
            "exp=codistill",
            "run.dry_run=true",
            "algorithm.codistill.large.placement=separate",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "codistill: dry run (nothing started); the launch plan:" in out
    assert "128 prompts x 8 samples = 1024 responses/step, mini-batch 512" in out
    assert "Qwen/Qwen2.5-Math-7B trained (codistill_teacher loss), pool large_pool: 1 node(s) x 8 GPU(s)" in out
    assert "warning: small model Qwen/Qwen2.5-Math-1.5B is not a local dir and not in the HF cache" in out
    assert "ray init kwargs" not in out


def test_resume_refuses_another_models_large_checkpoint(tiny_pair, tmp_path):
    """The large checkpoint records its model's signature; resuming with another large model fails."""
    from recipe.codistill_grpo.trainer import (
        LARGE_CKPT_DIR,
        LARGE_META_FILE,
        CoDistillRunError,
        CoDistillTrainer,
        model_signature,
    )

    trainer = CoDistillTrainer.__new__(CoDistillTrainer)
    trainer.large_config = OmegaConf.create({"model": {"path": tiny_pair["large"]}})
    folder = tmp_path / "global_step_2"
    (folder / LARGE_CKPT_DIR).mkdir(parents=True)
    meta = folder / LARGE_CKPT_DIR / LARGE_META_FILE

    meta.write_text(json.dumps({"model_path": tiny_pair["large"], "signature": model_signature(tiny_pair["large"])}))
    assert trainer.check_large_checkpoint(str(folder)) == str(folder / LARGE_CKPT_DIR)

    meta.write_text(json.dumps({"model_path": tiny_pair["small"], "signature": model_signature(tiny_pair["small"])}))
    with pytest.raises(CoDistillRunError) as err:
        trainer.check_large_checkpoint(str(folder))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"resume: the large checkpoint at {folder / LARGE_CKPT_DIR} belongs to model {tiny_pair['small']!r}"
    )
    assert "'hidden_size': 32" in msg and "'hidden_size': 64" in msg


# ------------------------------------------------------------------------------------------ checkpoints


class _Group:
    """A worker group stand-in: save_checkpoint writes a file and records the keep count it was given."""

    def __init__(self, fail_at=None, error=None):
        self.keeps, self.fail_at, self.error = [], fail_at, error

    def save_checkpoint(self, path, hdfs_path, step, max_ckpt_to_keep=None):
        self.keeps.append(max_ckpt_to_keep)
        if step == self.fail_at:
            raise self.error
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "model.pt"), "w") as f:
            f.write(str(step))


def _saving_trainer(tmp_path, tiny_pair, keep=1, small=None, large=None):
    from recipe.codistill_grpo.trainer import CoDistillTrainer
    from verl_ext.codistill.config import CoDistillConfig

    trainer = CoDistillTrainer.__new__(CoDistillTrainer)
    trainer.cd = CoDistillConfig.from_dict({})
    trainer.config = OmegaConf.create(
        {
            "trainer": {
                "default_local_dir": str(tmp_path / "checkpoints"),
                "max_actor_ckpt_to_keep": keep,
                "default_hdfs_dir": None,
            },
            "actor_rollout_ref": {"actor": {"checkpoint": {"async_save": False}}},
        }
    )
    trainer.large_config = OmegaConf.create({"model": {"path": tiny_pair["large"]}})
    trainer.actor_rollout_wg, trainer.large_wg = small or _Group(), large or _Group()
    trainer.use_critic = False
    trainer.train_dataloader = type("Loader", (), {"state_dict": lambda self: {"epoch": 0}})()
    return trainer


def test_old_checkpoints_go_only_after_the_tracker_names_the_new_step(tmp_path, tiny_pair):
    """trainer.max_actor_ckpt_to_keep=1: the workers keep everything, old steps are deleted after the tracker."""
    trainer = _saving_trainer(tmp_path, tiny_pair, keep=1)
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        trainer.global_steps = step
        trainer._save_checkpoint()
    assert sorted(p.name for p in root.iterdir()) == ["global_step_2", "latest_checkpointed_iteration.txt"]
    assert (root / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert trainer.actor_rollout_wg.keeps == [None, None] and trainer.large_wg.keeps == [None, None]
    assert trainer.config.trainer.max_actor_ckpt_to_keep == 1  # restored after verl's save

    # a crash in step 3's save (the small actor's, after the large one's) leaves step 2 whole and named
    crashing = _saving_trainer(tmp_path, tiny_pair, keep=1, small=_Group(fail_at=3, error=RuntimeError("killed")))
    crashing.global_steps = 3
    with pytest.raises(RuntimeError, match="killed"):
        crashing._save_checkpoint()
    assert (root / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert (root / "global_step_2" / "actor" / "model.pt").read_text() == "2"
    assert (root / "global_step_2" / "large_actor" / "model.pt").read_text() == "2"


def _scored_batch():
    """Two prompts of 2 tokens, responses of 3 with lengths 3 and 1; scores 1 and 0 (hand-checkable)."""
    from verl import DataProto

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    scores = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    return DataProto.from_dict(
        tensors={
            "token_level_scores": scores,
            "token_level_rewards": scores,
            "advantages": mask * 0.5,
            "returns": mask * 0.5,
            "prompts": torch.ones(2, 2, dtype=torch.long),
            "responses": torch.ones(2, 3, dtype=torch.long),
            "response_mask": mask,
            "attention_mask": torch.cat([torch.ones(2, 2), mask], dim=1),
        }
    )


def test_the_steps_metrics_row_is_in_its_checkpoint_before_the_tracker(tmp_path, tiny_pair):
    """Issue 16 item 3: verl logs a step after its checkpoint; the checkpoint carries the row known at save
    time (the update's metrics and verl's data metrics), written before the tracker names the step."""
    from recipe.codistill_grpo.run_folder import STEP_ROW_FILE

    root = tmp_path / "checkpoints"
    trainer = _saving_trainer(tmp_path, tiny_pair, keep=None, small=_Group(fail_at=2, error=RuntimeError("killed")))
    trainer._checkpoint_row = (_scored_batch(), {"small/pg_loss": [0.25, 0.75], "large/is_ess": 0.5})
    trainer.global_steps = 1
    trainer._save_checkpoint()
    row = json.loads((root / "global_step_1" / STEP_ROW_FILE).read_text())
    assert row["step"] == 1 and row["at_checkpoint"] is True
    data = row["data"]
    assert data["small/pg_loss"] == 0.5 and data["large/is_ess"] == 0.5
    assert data["critic/score/mean"] == 0.5 and data["critic/score/max"] == 1.0
    assert data["response_length/mean"] == 2.0  # lengths 3 and 1
    trainer.global_steps = 2
    with pytest.raises(RuntimeError, match="killed"):
        trainer._save_checkpoint()
    assert (root / "global_step_2" / STEP_ROW_FILE).is_file()  # written first ...
    assert (root / "latest_checkpointed_iteration.txt").read_text() == "1"  # ... the tracker never named it


def test_disk_full_at_a_checkpoint_is_one_line_and_its_traceback_goes_to_train_log(tmp_path, tiny_pair):
    """One line naming the folder; the traceback is appended to <run.dir>/train.log (issue 16 item 15)."""
    import errno

    from recipe.codistill_grpo.trainer import CoDistillRunError

    full = _Group(fail_at=4, error=OSError(errno.ENOSPC, "No space left on device"))
    trainer = _saving_trainer(tmp_path, tiny_pair, large=full)
    trainer.config.run = {"dir": str(tmp_path)}
    (tmp_path / "train.log").write_text("earlier lines\n")
    trainer.global_steps = 4
    with pytest.raises(CoDistillRunError) as err:
        trainer._save_checkpoint()
    assert str(err.value) == (
        f"step 4: the checkpoint could not be written to {tmp_path}/checkpoints/global_step_4: "
        f"disk full (traceback in {tmp_path}/train.log)"
    )
    log = (tmp_path / "train.log").read_text()
    assert log.startswith("earlier lines\n") and "Traceback (most recent call last):" in log
    assert "OSError: [Errno 28] No space left on device" in log and "save_checkpoint" in log


def test_rollout_rejection_mask_is_the_large_models_mask():
    """Issue 16 item 12: verl's rollout rejection rewrites response_mask after the log-prob pass; the large
    loss uses the mask its advantage and weights were computed with, not the log-prob pass's."""
    cd = {"kd": {"coef": 0.5}}
    batch = _batch(cd, seed=2)
    before = batch.batch["response_mask"].clone()
    batch.batch["large_response_mask"] = before.clone()  # as the log-prob pass left it on main
    rejected = before.clone()
    rejected[[0, 5]] = 0.0  # rollout_rs rejects two sequences
    batch.batch["response_mask"] = rejected
    _trainer_stub(cd)._codistill_advantages(batch)
    assert torch.equal(batch.batch["large_response_mask"], rejected)
    assert batch.batch["large_advantages"][[0, 5]].abs().sum() == 0


def test_frozen_optimizer_check_fails_loudly_when_verl_renames_attributes(monkeypatch):
    """Issue 16 item 14: the frozen teacher's "no optimizer" check reads worker.ref.engine.optimizer; a
    renamed attribute stops the run instead of passing."""
    from types import SimpleNamespace

    import recipe.codistill_grpo.trainer as tr

    class Worker:
        def __init__(self, obj):
            self.__ray_call__ = SimpleNamespace(remote=lambda fn: fn(obj))

    def check(*objs):
        trainer = tr.CoDistillTrainer.__new__(tr.CoDistillTrainer)
        trainer.large_wg = SimpleNamespace(workers=[Worker(o) for o in objs])
        trainer._check_no_large_optimizer()

    monkeypatch.setattr(tr.ray, "get", lambda refs: list(refs))
    ok = SimpleNamespace(ref=SimpleNamespace(engine=SimpleNamespace(optimizer=None)))
    check(ok, ok)
    for renamed, missing in [
        (SimpleNamespace(reference=ok.ref), "worker has no attribute 'ref'"),
        (SimpleNamespace(ref=SimpleNamespace(train_engine=ok.ref.engine)), "worker.ref has no attribute 'engine'"),
        (
            SimpleNamespace(ref=SimpleNamespace(engine=SimpleNamespace(optim=None))),
            "worker.ref.engine has no attribute 'optimizer'",
        ),
    ]:
        with pytest.raises(
            tr.CoDistillRunError, match=f"cannot verify that the frozen large model has no optimizer: {missing}"
        ):
            check(ok, renamed)
    with pytest.raises(tr.CoDistillRunError, match="has an optimizer; expected none"):
        check(SimpleNamespace(ref=SimpleNamespace(engine=SimpleNamespace(optimizer=object()))))


def test_resuming_at_the_last_step_trains_nothing(tmp_path, tiny_pair, monkeypatch):
    """Issue 16 item 2 (the trainer's own guard, for runs whose total verl derives from the data): a
    checkpoint at the total stops before verl's fit would train step total+1."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    from recipe.codistill_grpo.trainer import CoDistillRunComplete

    trainer = _saving_trainer(tmp_path, tiny_pair)
    trainer.cd = trainer.cd.from_dict({"large": {"train": False}})
    trainer.total_training_steps = 3

    def loaded(step):
        def load(self):
            self.global_steps = step
            return step

        return load

    monkeypatch.setattr(RayPPOTrainer, "_load_checkpoint", loaded(3))
    with pytest.raises(
        CoDistillRunComplete, match=r"^the run is complete: its checkpoint is step 3 of 3; nothing to do"
    ):
        trainer._load_checkpoint()
    monkeypatch.setattr(RayPPOTrainer, "_load_checkpoint", loaded(2))
    assert trainer._load_checkpoint() == 2


def test_kd_only_keeps_the_large_models_outcome_advantage():
    """Issue 16 item 13: exp=kd_only (task_reward=false) drops A_R from the small model's advantage only;
    the large model's A_l is still the outcome advantage of the rewards (loop reference)."""
    cd = OmegaConf.to_container(resolved(cpu_config(exp="kd_only")).algorithm.codistill)
    assert cd["task_reward"] is False and cd["large"]["train"] is True and cd["large"]["advantage"] == "grpo"
    batch = _batch(cd, seed=7)
    _trainer_stub(cd)._codistill_advantages(batch)
    b = batch.batch
    a_r = _loop_grpo(batch)
    assert max(abs(x) for x in a_r) > 0.1
    for i in range(b["response_mask"].shape[0]):
        for t in range(b["response_mask"].shape[1]):
            m = b["response_mask"][i, t].item()
            assert abs(b["large_advantages"][i, t].item() - a_r[i] * m) < 1e-5
