"""The zero-gradient skip (algorithm.codistill.large.skip_zero_grad): exact.

Pairs of real runs through the entry point (platform=cpu, the tiny pair, fp32), identical but for the
skip: the weights and optimizer state after the step must be the same within 1e-6, on batches with
zero-variance groups (a reward constant for half the prompts) and masked importance weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from verl_ext.codistill.zero_grad import zero_gradient_rows

pytestmark = pytest.mark.slow  # the slow tier: Ray end-to-end runs

REPO = Path(__file__).resolve().parents[1]


def test_zero_gradient_rows_against_a_loop():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(9, 6, generator=g)
    adv[0] = 0.0
    adv[1, :3] = 0.0  # zero where valid (length 3), nonzero on padding
    w = torch.rand(9, 6, generator=g) + 0.1
    w[2] = 0.0
    w[3, ::2] = 0.0
    adv[3, 1::2] = 0.0  # every valid token has A = 0 or w = 0
    mask = torch.ones(9, 6)
    mask[1, 3:] = 0.0
    mask[4] = 0.0  # empty response
    want = [not any(mask[i, t] and adv[i, t] != 0 and w[i, t] != 0 for t in range(6)) for i in range(9)]
    assert (
        zero_gradient_rows(adv, mask, w).tolist() == want == [True, True, True, True, True, False, False, False, False]
    )
    want_no_w = [not any(mask[i, t] and adv[i, t] != 0 for t in range(6)) for i in range(9)]
    assert zero_gradient_rows(adv, mask).tolist() == want_no_w


def run(run_dir: Path, exp: str, skip: bool, extra: list[str]) -> dict:
    args = [
        "pair=qwen2.5-math-1.5b_7b",
        f"exp={exp}",
        "platform=cpu",
        f"run.dir={run_dir}",
        "trainer.total_training_steps=1",
        f"reward.custom_reward_function.path={REPO / 'tests' / 'toy_reward.py'}",
        "reward.custom_reward_function.name=compute_score_half_constant",
        # lr 1e-4: a step moves weights by ~1e-4 (Adam), so a missing sequence's gradient shows far above 1e-6,
        # while float reordering of the gradient sums (other micro-batches) stays below it
        "pair.small.actor.optim.lr=1e-4",
        "pair.large.actor.optim.lr=1e-4",
        f"algorithm.codistill.large.skip_zero_grad={str(skip).lower()}",
        # the recipe's seeded `hf` rollout draws each request from its own seed, so the two runs of a pair train on
        # the same samples; vLLM draws from one engine RNG in its scheduler's order (two runs, other samples)
        "actor_rollout_ref.rollout.name=hf",
        *extra,
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.codistill_grpo.main_codistill", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["data"]


def states(folder: Path) -> list[torch.Tensor]:
    out = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(("model_world_size", "optim_world_size")):
            sd = torch.load(folder / name, weights_only=False)
            items = sd["state"].items() if "state" in sd else sd.items()
            for _, v in sorted(items, key=lambda kv: str(kv[0])):
                for t in v.values() if isinstance(v, dict) else [v]:
                    if torch.is_tensor(t):
                        out.append((t.to_local() if hasattr(t, "to_local") else t).detach().float().clone())
    return out


def assert_same(a: Path, b: Path, sub: str, initial: str) -> None:
    """Weights and optimizer state of the step-1 checkpoints within 1e-6; the step itself moved the weights."""
    x, y = states(a / "checkpoints" / "global_step_1" / sub), states(b / "checkpoints" / "global_step_1" / sub)
    assert len(x) == len(y) > 0
    for s, t in zip(x, y):
        torch.testing.assert_close(s, t, rtol=0, atol=1e-6)
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(initial).state_dict()
    end = (
        torch.load(a / "checkpoints" / "global_step_1" / sub / "model_world_size_1_rank_0.pt", weights_only=False)
        if (a / "checkpoints" / "global_step_1" / sub / "model_world_size_1_rank_0.pt").exists()
        else None
    )
    if end is not None:
        moved = max(
            ((v.to_local() if hasattr(v, "to_local") else v).float() - start[k].float()).abs().max().item()
            for k, v in end.items()
        )
        assert moved > 1e-5, f"{sub}: the step did not move the weights ({moved})"


@pytest.mark.parametrize("ranks", [1, 2])
def test_codistill_step_is_the_same_with_and_without_the_skip(tmp_path, tiny_dir, ranks):
    extra = ["algorithm.codistill.is.mode=mask", "algorithm.codistill.is.threshold=1.3"]
    if ranks == 2:
        # one rollout replica (TP 2): with one per rank, which replica answers a request (and so its seed) varies
        extra += [
            "trainer.n_gpus_per_node=2",
            "ray_kwargs.ray_init.num_gpus=2",
            "+pair.cpu.micro_batch=4",
            "pair.small.rollout.tensor_model_parallel_size=2",
        ]
    on = run(tmp_path / "on", "codistill", True, extra)
    off = run(tmp_path / "off", "codistill", False, extra)
    assert 0.0 < on["large/skipped_frac"] < 1.0, on["large/skipped_frac"]
    assert "large/skipped_frac" not in off and "small/skipped_frac" not in on  # the KD term: no small skip
    assert 0.0 < on["large/is_clip_frac"]  # masked weights
    for sub, model in (("actor", "small"), ("large_actor", "large")):
        assert_same(tmp_path / "on", tmp_path / "off", sub, str(tiny_dir / "models" / model))
    for key in ("large/pg_loss", "large/grad_norm", "small/pg_loss"):
        assert on[key] == pytest.approx(off[key], rel=1e-5, abs=1e-7), key


def test_grpo_baseline_step_is_the_same_with_and_without_the_skip(tmp_path, tiny_dir):
    on = run(tmp_path / "on", "grpo_small", True, [])
    off = run(tmp_path / "off", "grpo_small", False, [])
    assert 0.0 < on["small/skipped_frac"] < 1.0
    assert_same(tmp_path / "on", tmp_path / "off", "actor", str(tiny_dir / "models" / "small"))
    assert on["small/pg_loss"] == pytest.approx(off["small/pg_loss"], rel=1e-5, abs=1e-7)
