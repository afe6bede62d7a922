"""End to end: the real entry point (``python -m recipe.codistill_grpo.main_codistill``) on CPU, tiny pair.

Four runs, shared between the tests through module-scoped fixtures (each is a subprocess: Ray,
FSDP2 over gloo, the ``hf`` CPU rollout):

* ``codistill``: 3 steps, CoDistill-GRPO, checkpoint every step, batch dumps, rollout weight dumps;
* ``resumed``: restarts from ``codistill``'s step-2 checkpoint and runs step 3;
* ``baseline``: 2 steps with ``large.enable=false, kd.coef=0``, validation on two eval suites;
* ``frozen``: 2 steps with ``large.train=false``, the large model on its own resource pool.

Expected values come from independent code in this file (loops over samples and tokens, a plain
HF forward), never from the recipe.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipe.codistill_grpo.cpu.overrides import cpu_env, cpu_overrides

ENTRY = "recipe.codistill_grpo.main_codistill"
RUN_TIMEOUT_S = 900

LISTED_METRICS = [
    "small/kd_reward_mean",
    "small/kd_reverse_kl",
    "small/adv_reward_part_abs",
    "small/adv_kd_part_abs",
    "small/reward_mean",
    "small/acc",
    "large/is_weight_mean",
    "large/is_weight_max",
    "large/is_weight_min",
    "large/is_clip_frac",
    "large/is_ess",
    "large/logprob_gap",
    "large/pg_loss",
    "large/pg_clipfrac",
    "large/grad_norm",
    "timing/gen",
    "timing/small_log_prob",
    "timing/large_log_prob",
    "timing/small_update",
    "timing/large_update",
    "timing/weight_sync",
]


# ------------------------------------------------------------------------------------------ helpers


def _run(out: Path, tiny_pair, tiny_data, steps: int, large: bool = True, extra: list[str] = (), save_freq=-1):
    out.mkdir(parents=True, exist_ok=True)
    args = cpu_overrides(
        small=tiny_pair["small"],
        large=tiny_pair["large"] if large else None,
        train=tiny_data["train"],
        val=tiny_data["test"],
        out_dir=str(out),
        steps=steps,
        save_freq=save_freq,
    )
    args += [f"codistill_debug.dump_dir={out / 'dump'}", *extra]
    env = {**os.environ, **cpu_env(str(out)), "CODISTILL_ROLLOUT_DUMP_DIR": str(out / "rollout")}
    proc = subprocess.run(
        [sys.executable, "-m", ENTRY, *args], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    (out / "train.log").write_text(proc.stdout + "\n" + proc.stderr)
    assert proc.returncode == 0, f"run failed (log: {out / 'train.log'}):\n{proc.stderr[-3000:]}"
    return out


def _metrics(out: Path) -> dict[int, dict]:
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rows[rec["step"]] = rec["data"]
    return rows


def _dump(out: Path, step: int) -> dict:
    return torch.load(out / "dump" / f"batch_step_{step}.pt", weights_only=False)


def _ckpt_state(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path / "model_world_size_1_rank_0.pt", weights_only=False)
    return {k: (v.to_local() if hasattr(v, "to_local") else v).detach().clone() for k, v in sd.items()}


def _optim_tensors(path: Path) -> list[torch.Tensor]:
    osd = torch.load(path / "optim_world_size_1_rank_0.pt", weights_only=False)
    out = []
    for pid in sorted(osd["state"]):
        for name in sorted(osd["state"][pid]):
            v = osd["state"][pid][name]
            if torch.is_tensor(v):
                out.append((v.to_local() if hasattr(v, "to_local") else v).detach().clone().float())
    return out


def _hf_state(path: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def _hf_log_probs(model_dir: str, state: dict | None, d: dict) -> torch.Tensor:
    """log p(response token) under a plain HF forward of the same padded batch, (B, T)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", torch_dtype=torch.float32)
    if state is not None:
        model.load_state_dict(state, strict=True)
    model.eval()
    resp = d["responses"]
    T = resp.shape[1]
    with torch.no_grad():
        logits = model(
            input_ids=d["input_ids"], attention_mask=d["attention_mask"], position_ids=d["position_ids"]
        ).logits
    logits = logits[:, -T - 1 : -1, :].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)


def _grpo_reference(scores: list[float], uids: list[str], eps: float = 1e-6) -> list[float]:
    """verl's GRPO outcome advantage, one sample at a time (unbiased std, size-1 group: mean 0, std 1)."""
    out = []
    for i, u in enumerate(uids):
        group = [scores[j] for j in range(len(uids)) if uids[j] == u]
        if len(group) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(group) / len(group)
            std = math.sqrt(sum((x - mean) ** 2 for x in group) / (len(group) - 1))
        out.append((scores[i] - mean) / (std + eps))
    return out


def _row_key(d: dict, i: int) -> tuple:
    return tuple(d["prompts"][i].tolist()), tuple(d["responses"][i].tolist())


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def codistill_run(runs_root, tiny_pair, tiny_data) -> Path:
    return _run(runs_root / "codistill", tiny_pair, tiny_data, steps=3, save_freq=1)


@pytest.fixture(scope="module")
def resumed_run(runs_root, codistill_run, tiny_pair, tiny_data) -> Path:
    out = runs_root / "resumed"
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True)
    shutil.copytree(codistill_run / "checkpoints" / "global_step_2", ckpt / "global_step_2")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")
    return _run(out, tiny_pair, tiny_data, steps=3, save_freq=1)


@pytest.fixture(scope="module")
def second_eval_suite(runs_root) -> str:
    import pandas as pd

    from recipe.codistill_grpo.cpu.tiny_pair import tiny_math_rows

    path = runs_root / "eval_b.parquet"
    pd.DataFrame(tiny_math_rows(6, "test", seed=7, data_source="tiny_arith_b")).to_parquet(path)
    return str(path)


@pytest.fixture(scope="module")
def baseline_run(runs_root, tiny_pair, tiny_data, second_eval_suite) -> Path:
    # also exercises verl's in-loop validation on two eval suites (test_freq=2: at the last step)
    extra = [f"data.val_files=[{tiny_data['test']},{second_eval_suite}]", "trainer.test_freq=2"]
    return _run(runs_root / "baseline", tiny_pair, tiny_data, steps=2, large=False, extra=extra)


@pytest.fixture(scope="module")
def frozen_run(runs_root, tiny_pair, tiny_data) -> Path:
    # also exercises the separate placement: the large model on its own resource pool (2nd logical GPU)
    extra = [
        "algorithm.codistill.large.train=false",
        "large_actor.placement=separate", "large_actor.n_gpus_per_node=1", "large_actor.nnodes=1",
        "ray_kwargs.ray_init.num_gpus=2",
    ]
    return _run(runs_root / "frozen", tiny_pair, tiny_data, steps=2, extra=extra)


# ------------------------------------------------------------------------------------------ CoDistill run


def test_both_models_weights_change(codistill_run, tiny_pair):
    for sub, model in (("actor", "small"), ("large_actor", "large")):
        start = _hf_state(tiny_pair[model])
        end = _ckpt_state(codistill_run / "checkpoints" / "global_step_3" / sub)
        assert set(end) <= set(start), f"{sub}: checkpoint names are not the HF model's"
        moved = max((end[k].float() - start[k].float()).abs().max().item() for k in end)
        assert moved > 1e-4, f"{sub}: weights did not change after 3 steps (max abs change {moved})"


def test_rollout_weights_follow_small_actor(codistill_run):
    for step in (1, 2, 3):
        actor = _ckpt_state(codistill_run / "checkpoints" / f"global_step_{step}" / "actor")
        rollout = torch.load(codistill_run / "rollout" / f"rollout_weights_step_{step}_r0.pt", weights_only=False)
        for name, tensor in actor.items():
            torch.testing.assert_close(rollout[name].float(), tensor.float(), rtol=0, atol=0, msg=f"step {step} {name}")


def test_every_listed_metric_present_and_finite(codistill_run):
    rows = _metrics(codistill_run)
    assert sorted(rows) == [1, 2, 3]
    for step, data in rows.items():
        missing = [k for k in LISTED_METRICS if k not in data]
        assert not missing, f"step {step}: missing {missing}"
        bad = {k: data[k] for k in LISTED_METRICS if not math.isfinite(float(data[k]))}
        assert not bad, f"step {step}: non-finite {bad}"
        assert 0.0 < data["large/is_ess"] <= 1.0


def test_large_group_is_a_trainable_actor_on_the_small_pool(codistill_run):
    log = (codistill_run / "train.log").read_text()
    assert "codistill: large model worker group (role actor) on resource pool 'global_pool' (colocate)" in log
    for step in (1, 2, 3):
        sub = codistill_run / "checkpoints" / f"global_step_{step}" / "large_actor"
        assert (sub / "optim_world_size_1_rank_0.pt").is_file() and (sub / "codistill_large_meta.json").is_file()


def test_small_advantage_is_codistill_of_the_step(codistill_run):
    """A_s[i,t] = (A_R[i] + beta * clamp(ll - ls, -10, 10)) * m, beta = 1, from the step's own tensors."""
    for step in (1, 2, 3):
        d = _dump(codistill_run, step)
        scores = d["token_level_rewards"].sum(-1).tolist()
        a_r = _grpo_reference(scores, d["uid"])
        ls, ll, m, adv = d["old_log_probs"], d["large_old_log_probs"], d["response_mask"], d["advantages"]
        for i in range(adv.shape[0]):
            for t in range(adv.shape[1]):
                gap = min(max(ll[i, t].item() - ls[i, t].item(), -10.0), 10.0)
                want = (a_r[i] + gap) * m[i, t].item()
                assert abs(adv[i, t].item() - want) < 1e-5, (step, i, t, adv[i, t].item(), want)


def test_large_weights_and_advantage_of_the_step(codistill_run):
    """w = min(exp(ll - ls), 2) * m (token, truncate, C=2); A_l = A_R * m (grpo)."""
    d = _dump(codistill_run, 2)
    scores = d["token_level_rewards"].sum(-1).tolist()
    a_r = _grpo_reference(scores, d["uid"])
    ls, ll, m = d["old_log_probs"], d["large_old_log_probs"], d["response_mask"]
    for i in range(ls.shape[0]):
        for t in range(ls.shape[1]):
            w = min(math.exp(min(max(ll[i, t].item() - ls[i, t].item(), -20.0), 20.0)), 2.0) * m[i, t].item()
            assert abs(d["large_is_weights"][i, t].item() - w) < 1e-5
            assert abs(d["large_advantages"][i, t].item() - a_r[i] * m[i, t].item()) < 1e-5


def test_log_probs_are_each_models_own(codistill_run, tiny_pair):
    """Step 1: ls from the initial small model, ll from the initial large model, on the same token ids."""
    d = _dump(codistill_run, 1)
    m = d["response_mask"].bool()
    lengths = m.sum(-1)
    assert lengths.min() < lengths.max(), "all responses have one length: the mask alignment is untested"
    for key, model in (("old_log_probs", "small"), ("large_old_log_probs", "large")):
        want = _hf_log_probs(tiny_pair[model], None, d)
        assert (d[key][m] - want[m]).abs().max().item() < 1e-4, key
    assert (d["old_log_probs"][m] - d["large_old_log_probs"][m]).abs().max().item() > 1e-2


def test_small_loss_is_on_the_codistill_advantage(codistill_run):
    """On-policy first mini-batch (ratio 1): verl's pg_loss = -sum(A_s * m) / sum(m) (token-mean)."""
    d = _dump(codistill_run, 1)
    m = d["response_mask"].double()
    want = -(d["advantages"].double() * m).sum().item() / m.sum().item()
    got = _metrics(codistill_run)[1]["actor/pg_loss"]
    assert abs(want) > 1e-3, "degenerate check: the codistill advantage has zero token mean"
    assert abs(got - want) < 1e-4 * max(1.0, abs(want)), (got, want)


# ------------------------------------------------------------------------------------------ resume


def test_resume_continues_from_saved_step(codistill_run, resumed_run, tiny_pair):
    full = _dump(codistill_run, 3)
    res = _dump(resumed_run, 3)
    assert not (resumed_run / "dump" / "batch_step_1.pt").exists(), "resumed run re-ran step 1"
    assert sorted(full["raw_prompt"]) == sorted(res["raw_prompt"]), "step-3 prompts differ from the uninterrupted run"

    # both models start step 3 from exactly the saved step-2 weights
    m = res["response_mask"].bool()
    for key, model, sub in (("old_log_probs", "small", "actor"), ("large_old_log_probs", "large", "large_actor")):
        state = _ckpt_state(codistill_run / "checkpoints" / "global_step_2" / sub)
        want = _hf_log_probs(tiny_pair[model], state, res)
        assert (res[key][m] - want[m]).abs().max().item() < 1e-4, key

    # same samples as the uninterrupted run -> same step-3 update, which needs the saved optimizer state too
    full_rows = {_row_key(full, i): i for i in range(len(full["uid"]))}
    res_rows = {_row_key(res, i): i for i in range(len(res["uid"]))}
    assert full_rows.keys() == res_rows.keys(), "resumed step 3 drew different samples"
    for sub in ("actor", "large_actor"):
        a = _ckpt_state(codistill_run / "checkpoints" / "global_step_3" / sub)
        b = _ckpt_state(resumed_run / "checkpoints" / "global_step_3" / sub)
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=f"{sub} {name}")
        for x, y in zip(_optim_tensors(codistill_run / "checkpoints" / "global_step_3" / sub),
                        _optim_tensors(resumed_run / "checkpoints" / "global_step_3" / sub), strict=True):
            torch.testing.assert_close(y, x, rtol=1e-3, atol=1e-8, msg=f"{sub} optimizer state")


def test_resume_refuses_missing_large_checkpoint(runs_root, codistill_run, tiny_pair, tiny_data):
    out = runs_root / "resume_missing_large"
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True)
    shutil.copytree(codistill_run / "checkpoints" / "global_step_2", ckpt / "global_step_2")
    shutil.rmtree(ckpt / "global_step_2" / "large_actor")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")
    with pytest.raises(AssertionError) as err:
        _run(out, tiny_pair, tiny_data, steps=3)
    log = (out / "train.log").read_text()
    assert "resume: no large-model checkpoint at" in log and "global_step_2/large_actor" in log, err.value


# ------------------------------------------------------------------------------------------ baseline


def test_baseline_is_verls_grpo_and_loads_no_large_model(baseline_run):
    for step in (1, 2):
        d = _dump(baseline_run, step)
        assert not any(k.startswith("large_") for k in d), "large fields in a baseline batch"
        a_r = _grpo_reference(d["token_level_rewards"].sum(-1).tolist(), d["uid"])
        want = torch.tensor(a_r, dtype=torch.float64)[:, None] * d["response_mask"].double()
        assert (d["advantages"].double() - want).abs().max().item() < 1e-6
        m = d["response_mask"].double()
        want_loss = -(d["advantages"].double() * m).sum().item() / m.sum().item()
        assert abs(_metrics(baseline_run)[step]["actor/pg_loss"] - want_loss) < 1e-5
    rows = _metrics(baseline_run)
    assert not [k for k in rows[1] if k.startswith("large/")]
    log = (baseline_run / "train.log").read_text()
    assert "codistill: large model worker group" not in log and "ActorRolloutRefWorker pid" not in log


def test_in_loop_validation_per_suite(baseline_run):
    """verl's validation at step 2 on both eval files, one metric set per data_source."""
    rows = _metrics(baseline_run)
    assert not [k for k in rows[1] if k.startswith("val-")], "validated at step 1 with test_freq=2"
    for suite in ("tiny_arith", "tiny_arith_b"):
        keys = [k for k in rows[2] if k.startswith(f"val-core/{suite}/")]
        assert keys, f"no val-core metrics for {suite}"
        assert all(0.0 <= float(rows[2][k]) <= 1.0 for k in keys)


# ------------------------------------------------------------------------------------------ frozen teacher


def test_frozen_teacher_is_not_updated(frozen_run, tiny_pair):
    rows = _metrics(frozen_run)
    assert "large/pg_loss" not in rows[2] and "large/grad_norm" not in rows[2]
    assert 0.0 < rows[2]["large/is_ess"] <= 1.0
    # the large model of step 2 is still the initial one: its log-probs equal a plain HF forward
    d = _dump(frozen_run, 2)
    m = d["response_mask"].bool()
    want = _hf_log_probs(tiny_pair["large"], None, d)
    assert (d["large_old_log_probs"][m] - want[m]).abs().max().item() < 1e-4
    assert "large_is_weights" not in d and "large_advantages" not in d
    assert not (frozen_run / "checkpoints").exists() or not list((frozen_run / "checkpoints").rglob("large_actor"))
    log = (frozen_run / "train.log").read_text()
    assert "codistill: frozen large model loaded forward-only on 1 rank(s), optimizer state: none" in log
    assert "codistill: large model worker group (role ref) on resource pool 'large_pool' (separate)" in log
