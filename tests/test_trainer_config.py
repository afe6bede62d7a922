"""Start-up checks, config plumbing and the trainer's advantage pass: fast, no Ray, no model training.

Bad configs must fail before Ray starts or a model loads, with one clear line. Expected values are
computed here independently (loops), or are verl's own GRPO function for the baseline equivalence.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recipe.codistill_grpo.cpu.overrides import cpu_env, cpu_overrides
from recipe.codistill_grpo.trainer import build_large_worker_config, validate_codistill_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipe" / "codistill_grpo" / "config"


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="codistill", overrides=overrides)


@pytest.fixture()
def base_overrides(tiny_pair, tiny_data, tmp_path) -> list[str]:
    return cpu_overrides(
        small=tiny_pair["small"], large=tiny_pair["large"], train=tiny_data["train"], val=tiny_data["test"],
        out_dir=str(tmp_path), steps=2,
    )


def _error(overrides: list[str]) -> str:
    cfg = compose_config(overrides)
    with pytest.raises(ValueError) as err:
        validate_codistill_config(cfg)
    msg = str(err.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------ good config


def test_default_cpu_config_passes(base_overrides):
    cfg = compose_config(base_overrides)
    validate_codistill_config(cfg)  # no exception
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.algorithm.codistill.kd.coef == 1.0 and cfg.algorithm.codistill["is"].level == "token"
    assert cfg.reward.custom_reward_function.path.endswith("cpu/toy_reward.py")


def test_recipe_default_reward_is_the_math_reward():
    cfg = compose_config(["actor_rollout_ref.model.path=/x", "large_actor.model.path=/y"])
    assert cfg.reward.custom_reward_function.path == "pkg://verl_ext.reward.math_reward"
    from verl.utils.import_utils import load_extern_object
    from verl_ext.reward.math_reward import compute_score

    assert load_extern_object(cfg.reward.custom_reward_function.path, "compute_score") is compute_score
    assert cfg.reward.custom_reward_function.name == "compute_score"
    assert cfg.trainer.use_v1 is False


# ------------------------------------------------------------------------------------------ bad configs


def test_tokenizer_mismatch(base_overrides, tiny_pair, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "large_other_tok"
    shutil.copytree(tiny_pair["large"], other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<|not_in_small|>"])
    tok.save_pretrained(other)
    msg = _error(base_overrides + [f"large_actor.model.path={other}"])
    assert "tokenizers differ" in msg and str(other) in msg and "<|not_in_small|>" in msg


def test_missing_large_model_path(base_overrides):
    msg = _error(base_overrides + ["large_actor.model.path=???"])
    assert msg.startswith("large_actor.model.path is missing")
    msg = _error(base_overrides + ["large_actor.model.path=/nonexistent/large_model"])
    assert msg == "large_actor.model.path='/nonexistent/large_model' does not exist"


def test_rollout_n_one(base_overrides):
    msg = _error(base_overrides + ["actor_rollout_ref.rollout.n=1"])
    assert msg.startswith("actor_rollout_ref.rollout.n=1 must be >= 2")


def test_batch_not_divisible_by_dp(base_overrides):
    # 4 prompts x 4 samples = 16 rows over 3 data-parallel ranks
    msg = _error(base_overrides + ["trainer.n_gpus_per_node=3"])
    assert msg == "data.train_batch_size * rollout.n = 16 is not divisible by the small actor's data-parallel size 3"
    # the large model on its own pool of 3 ranks
    msg = _error(base_overrides + ["large_actor.placement=separate", "large_actor.n_gpus_per_node=3"])
    assert msg == "data.train_batch_size * rollout.n = 16 is not divisible by the large actor's data-parallel size 3"


def test_unknown_is_level(base_overrides):
    msg = _error(base_overrides + ["algorithm.codistill.is.level=foo"])
    assert msg == "algorithm.codistill.is.level='foo' not in ['token', 'sequence', 'geo_mean']"


def test_kd_without_large_model(base_overrides):
    msg = _error(base_overrides + ["algorithm.codistill.large.enable=false"])
    assert msg.startswith("algorithm.codistill.kd.coef=1.0") and "large" in msg


def test_entry_point_fails_before_ray(base_overrides):
    """Through the real entry point: one line on stderr, exit status 1, Ray never started."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.codistill_grpo.main_codistill", *base_overrides, "algorithm.codistill.is.level=foo"],
        env={**os.environ, **cpu_env()}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "codistill: algorithm.codistill.is.level='foo' not in ['token', 'sequence', 'geo_mean']"
    assert "ray init kwargs" not in proc.stdout + proc.stderr
    print(f"bad-config exit after {time.perf_counter() - start:.1f}s")


# ------------------------------------------------------------------------------------------ large worker config


def test_large_worker_config_merge(base_overrides, tiny_pair):
    cfg = compose_config(base_overrides + ["large_actor.actor.optim.lr=3e-5", "large_actor.log_prob_micro_batch_size_per_gpu=2"])
    OmegaConf.resolve(cfg)
    merged = build_large_worker_config(cfg, frozen=False)
    assert merged.model.path == tiny_pair["large"]
    assert merged.actor.optim.lr == 3e-5
    assert merged.rollout.log_prob_micro_batch_size_per_gpu == 2
    assert merged.actor.policy_loss.loss_mode == "codistill_teacher"
    assert merged.actor.use_kl_loss is False
    assert "placement" not in merged and "n_gpus_per_node" not in merged
    # the small model's config is untouched
    assert cfg.actor_rollout_ref.model.path == tiny_pair["small"]
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "vanilla"


# ------------------------------------------------------------------------------------------ advantage pass


def _trainer_stub(codistill: dict, norm: bool = True):
    from verl_ext.codistill.config import CoDistillConfig

    from recipe.codistill_grpo.trainer import CoDistillTrainer

    trainer = CoDistillTrainer.__new__(CoDistillTrainer)
    trainer.cd = CoDistillConfig.from_dict(codistill)
    trainer.config = OmegaConf.create({"algorithm": {"norm_adv_by_std_in_grpo": norm}})
    trainer.global_steps = 1
    return trainer


def _batch(seed: int = 0, groups: int = 3, g: int = 4, T: int = 7):
    from verl import DataProto

    gen = torch.Generator().manual_seed(seed)
    bs = groups * g
    mask = torch.ones(bs, T)
    lengths = torch.randint(1, T + 1, (bs,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    rewards = torch.zeros(bs, T)
    scores = torch.randint(0, 3, (bs,), generator=gen).float() / 2
    rewards[torch.arange(bs), lengths - 1] = scores
    ls = -torch.rand(bs, T, generator=gen) * 3
    ll = -torch.rand(bs, T, generator=gen) * 3
    uid = np.array([f"p{i // g}" for i in range(bs)], dtype=object)
    perm = torch.randperm(bs, generator=gen)
    data = DataProto.from_dict(
        tensors={
            "token_level_rewards": rewards[perm], "response_mask": mask[perm],
            "old_log_probs": ls[perm] * mask[perm], "large_old_log_probs": ll[perm] * mask[perm],
            "advantages": torch.zeros(bs, T),
        },
        non_tensors={"uid": uid[perm.numpy()]},
    )
    return data


def test_kd_coef_zero_reproduces_verls_grpo():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    trainer = _trainer_stub({"kd": {"coef": 0.0}})
    batch = _batch()
    ref, _ = compute_grpo_outcome_advantage(
        batch.batch["token_level_rewards"], batch.batch["response_mask"], batch.non_tensor_batch["uid"],
        norm_adv_by_std_in_grpo=True,
    )
    trainer._codistill_advantages(batch)
    assert (batch.batch["advantages"] - ref).abs().max().item() <= 1e-6
    assert ref.abs().max().item() > 0.1  # not a degenerate batch


def test_advantage_pass_fields_against_loops():
    """A_s, w (token/truncate/C=2) and A_l (grpo) against per-sample, per-token loops."""
    trainer = _trainer_stub({"kd": {"coef": 0.5, "clamp": 1.0}})
    batch = _batch(seed=3)
    metrics = trainer._codistill_advantages(batch)
    b = batch.batch
    scores = b["token_level_rewards"].sum(-1).tolist()
    uids = list(batch.non_tensor_batch["uid"])
    a_r = []
    for i, u in enumerate(uids):
        grp = [scores[j] for j in range(len(uids)) if uids[j] == u]
        mean = sum(grp) / len(grp)
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (len(grp) - 1))
        a_r.append((scores[i] - mean) / (std + 1e-6))
    bs, T = b["response_mask"].shape
    for i in range(bs):
        for t in range(T):
            m = b["response_mask"][i, t].item()
            gap = b["large_old_log_probs"][i, t].item() - b["old_log_probs"][i, t].item()
            want = (a_r[i] + 0.5 * min(max(gap, -1.0), 1.0)) * m
            assert abs(b["advantages"][i, t].item() - want) < 1e-5
            assert abs(b["large_is_weights"][i, t].item() - min(math.exp(gap), 2.0) * m) < 1e-5
            assert abs(b["large_advantages"][i, t].item() - a_r[i] * m) < 1e-5
    assert metrics["small/kd_coef"] == 0.5
    assert 0.0 < metrics["large/is_ess"] <= 1.0


def test_frozen_teacher_adds_no_large_training_fields():
    trainer = _trainer_stub({"large": {"train": False}})
    batch = _batch()
    metrics = trainer._codistill_advantages(batch)
    assert "large_is_weights" not in batch.batch.keys() and "large_advantages" not in batch.batch.keys()
    assert "large/is_ess" in metrics


def test_modes_kd_only_no_is_and_schedule():
    """task_reward=false: A_s = beta*d*m; is.mode=none: w = m; linear schedule: beta at 0-based step 2."""
    trainer = _trainer_stub(
        {
            "kd": {"coef": 1.0, "coef_schedule": "linear", "coef_final": 0.0, "decay_steps": 4, "clamp": 10.0},
            "is": {"mode": "none"},
            "task_reward": False,
        }
    )
    trainer.global_steps = 3  # 1-based verl step 3 -> 0-based step 2 -> beta = 1 + (0 - 1) * 2/4
    batch = _batch(seed=5)
    metrics = trainer._codistill_advantages(batch)
    b = batch.batch
    assert metrics["small/kd_coef"] == 0.5
    bs, T = b["response_mask"].shape
    for i in range(bs):
        for t in range(T):
            m = b["response_mask"][i, t].item()
            gap = b["large_old_log_probs"][i, t].item() - b["old_log_probs"][i, t].item()
            assert abs(b["advantages"][i, t].item() - 0.5 * gap * m) < 1e-5
            assert b["large_is_weights"][i, t].item() == m


def test_dry_run_prints_plan_without_models():
    """A GPU config resolves on any machine: hub names are not read, nothing starts."""
    args = [
        "codistill_debug.dry_run=true", "actor_rollout_ref.model.path=Qwen/Qwen2.5-Math-1.5B",
        "large_actor.model.path=Qwen/Qwen2.5-Math-7B", "large_actor.placement=separate",
        "data.train_files=train.parquet", "data.val_files=test.parquet", "actor_rollout_ref.rollout.name=vllm",
        "data.train_batch_size=128", "actor_rollout_ref.actor.ppo_mini_batch_size=32",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.codistill_grpo.main_codistill", *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "codistill dry run (models not read, nothing started):" in out
    assert "128 prompts x 8 samples = 1024 rows/step, mini-batch 256 rows" in out
    assert "Qwen/Qwen2.5-Math-7B trained (codistill_teacher loss), pool large_pool: 1 node(s) x 8 GPU(s)" in out
    assert "ray init kwargs" not in out


def test_resume_refuses_another_models_large_checkpoint(tiny_pair, tmp_path):
    """The large checkpoint records its model's signature; resuming with another large model fails."""
    import json

    from recipe.codistill_grpo.trainer import LARGE_CKPT_DIR, LARGE_META_FILE, CoDistillTrainer, model_signature

    trainer = CoDistillTrainer.__new__(CoDistillTrainer)
    trainer.config = OmegaConf.create({"large_actor": {"model": {"path": tiny_pair["large"]}}})
    trainer.large_config = OmegaConf.create({"model": {"path": tiny_pair["large"]}})
    folder = tmp_path / "global_step_2"
    (folder / LARGE_CKPT_DIR).mkdir(parents=True)
    meta = folder / LARGE_CKPT_DIR / LARGE_META_FILE

    meta.write_text(json.dumps({"model_path": tiny_pair["large"], "signature": model_signature(tiny_pair["large"])}))
    assert trainer.check_large_checkpoint(str(folder)) == str(folder / LARGE_CKPT_DIR)

    meta.write_text(json.dumps({"model_path": tiny_pair["small"], "signature": model_signature(tiny_pair["small"])}))
    with pytest.raises(RuntimeError) as err:
        trainer.check_large_checkpoint(str(folder))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"resume: the large checkpoint at {folder / LARGE_CKPT_DIR} belongs to model {tiny_pair['small']!r}")
    assert "'hidden_size': 32" in msg and "'hidden_size': 64" in msg
