"""End to end: the real entry point (``python -m recipe.codistill_grpo.main_codistill ... platform=cpu``).

Runs (each a subprocess: Ray, FSDP2 over gloo, verl's vLLM rollout on vLLM's CPU build, the tiny pair), shared
between the tests through module-scoped fixtures:

* ``codistill``: 3 steps of exp=codistill, a checkpoint every step, the dumping test trainer;
* ``resumed``: a run folder holding ``codistill``'s step-2 checkpoint and all 3 metrics rows
  (as after a crash in step 3): it resumes by default and runs step 3;
* ``baseline``: 2 steps of exp=grpo_small, validation on two eval suites;
* ``frozen``: 2 steps of exp=frozen_teacher, the large model on its own resource pool.

The tiny random models score 0 under the math reward, so these runs use the dense toy reward
(``tests/toy_reward.py``) and a learning rate of 1e-3 to move both models. Expected values come from
independent code in this file or tests/support.py (loops, a plain HF forward), never from the recipe.
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

from tests.support import grpo_reference
from tests.test_run_script import console_lines

pytestmark = pytest.mark.slow  # the slow tier: Ray end-to-end runs

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900
PAIR = "qwen2.5-math-1.5b_7b"

LISTED_METRICS = [
    "small/kd_reward_mean",
    "small/kd_reverse_kl",
    "small/adv_reward_part_abs",
    "small/adv_kd_part_abs",
    "small/acc",
    "small/pg_loss",
    "small/grad_norm",
    "small/rollout_logprob_diff_mean",
    "small/rollout_logprob_diff_max",
    "large/is_weight_mean",
    "large/is_weight_max",
    "large/is_weight_min",
    "large/is_clip_frac",
    "large/is_ess",
    "large/logprob_gap",
    "large/pg_loss",
    "large/pg_clipfrac",
    "large/grad_norm",
    "timing_s/gen",
    "timing_s/old_log_prob",
    "timing_s/large_log_prob",
    "timing_s/update_actor",
    "timing_s/small_update",
    "timing_s/large_update",
    "timing_s/update_weights",
]


# ------------------------------------------------------------------------------------------ helpers


def run_recipe(run_dir: Path, exp: str, steps: int, extra: list[str] = (), check: bool = True):
    """The entry point with platform=cpu, the toy reward and the dumping trainer, into ``run_dir``."""
    args = [
        f"pair={PAIR}",
        f"exp={exp}",
        "platform=cpu",
        f"run.dir={run_dir}",
        f"trainer.total_training_steps={steps}",
        "trainer.save_freq=1",
        f"reward.custom_reward_function.path={REPO / 'tests' / 'toy_reward.py'}",
        "run.trainer_class=tests.support.DumpingTrainer",
        # the pair's lr (1e-6, sized for 1.5B/7B models) barely moves tiny random models in 3 steps
        "pair.small.actor.optim.lr=1e-3",
        "pair.large.actor.optim.lr=1e-3",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.codistill_grpo.main_codistill", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=REPO,
    )
    (Path(str(run_dir) + ".console.log")).write_text(proc.stdout + "\n" + proc.stderr)
    if check:
        assert proc.returncode == 0, f"run failed (log: {run_dir}.console.log):\n{proc.stderr[-3000:]}"
    return proc


def metrics(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {r["step"]: r["data"] for r in rows}


def dump(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "dump" / f"batch_step_{step}.pt", weights_only=False)


def ckpt_state(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path / "model_world_size_1_rank_0.pt", weights_only=False)
    return {k: (v.to_local() if hasattr(v, "to_local") else v).detach().clone() for k, v in sd.items()}


def optim_tensors(path: Path) -> list[torch.Tensor]:
    osd = torch.load(path / "optim_world_size_1_rank_0.pt", weights_only=False)
    out = []
    for pid in sorted(osd["state"]):
        for name in sorted(osd["state"][pid]):
            v = osd["state"][pid][name]
            if torch.is_tensor(v):
                out.append((v.to_local() if hasattr(v, "to_local") else v).detach().clone().float())
    return out


def hf_state(path: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def hf_log_probs(model_dir: str, state: dict | None, d: dict) -> torch.Tensor:
    """log p(response token) under a plain HF forward of the same padded batch, (B, T)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
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


def row_key(d: dict, i: int) -> tuple:
    return tuple(d["prompts"][i].tolist()), tuple(d["responses"][i].tolist())


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def codistill_run(runs_root, tiny_dir) -> Path:
    run_recipe(runs_root / "codistill", "codistill", steps=3)
    return runs_root / "codistill"


@pytest.fixture(scope="module")
def resumed_run(runs_root, codistill_run) -> Path:
    out = runs_root / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(codistill_run / "checkpoints" / "global_step_2", out / "checkpoints" / "global_step_2")
    (out / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("2")
    shutil.copy(codistill_run / "metrics.jsonl", out / "metrics.jsonl")  # steps 1..3, step 3 never checkpointed
    (out / "train.log").write_text("the first attempt's log\n")
    proc = run_recipe(out, "codistill", steps=3)
    assert f"codistill: resuming run {out} from step 2 (checkpoints/global_step_2)" in proc.stdout
    return out


@pytest.fixture(scope="module")
def second_eval_suite(runs_root, tiny_data) -> str:
    import pandas as pd

    from recipe.codistill_grpo.cpu.tiny_pair import tiny_math_rows

    path = runs_root / "eval_b.parquet"
    pd.DataFrame(tiny_math_rows(6, "test", seed=7, data_source="tiny_arith_b")).to_parquet(path)
    return str(path)


@pytest.fixture(scope="module")
def baseline_run(runs_root, tiny_data, second_eval_suite) -> Path:
    # also exercises verl's in-loop validation on two eval suites (test_freq=2: at the last step)
    run_recipe(
        runs_root / "baseline",
        "grpo_small",
        steps=2,
        extra=[f"data.val_files=[{tiny_data['test']},{second_eval_suite}]", "trainer.test_freq=2"],
    )
    return runs_root / "baseline"


@pytest.fixture(scope="module")
def frozen_run(runs_root, tiny_dir) -> Path:
    # also exercises the separate placement: the large model on its own resource pool (2nd logical GPU)
    extra = [
        "algorithm.codistill.large.placement=separate",
        "algorithm.codistill.large.n_gpus_per_node=1",
        "algorithm.codistill.large.nnodes=1",
        "ray_kwargs.ray_init.num_gpus=2",
    ]
    run_recipe(runs_root / "frozen", "frozen_teacher", steps=2, extra=extra)
    return runs_root / "frozen"


# ------------------------------------------------------------------------------------------ CoDistill run


def test_both_models_weights_change(codistill_run, tiny_pair):
    for sub, model in (("actor", "small"), ("large_actor", "large")):
        start = hf_state(tiny_pair[model])
        end = ckpt_state(codistill_run / "checkpoints" / "global_step_3" / sub)
        assert set(end) <= set(start), f"{sub}: checkpoint names are not the HF model's"
        moved = max((end[k].float() - start[k].float()).abs().max().item() for k in end)
        assert moved > 1e-4, f"{sub}: weights did not change after 3 steps (max abs change {moved})"


# vLLM (fp32, CPU) against a plain HF eager forward of the same weights: measured max |diff| ~1e-6
ROLLOUT_LOGPROB_TOL = 1e-4


def test_rollout_generates_with_the_small_actors_weights(codistill_run, tiny_pair):
    """Step N's samples come from the small actor after step N-1 (the initial model for step 1): verl syncs the
    FSDP actor's weights into vLLM after each update. vLLM's own log-probs of the sampled tokens
    (``rollout_log_probs``) equal a plain HF forward of the actor's step N-1 checkpoint on the same tokens."""
    initial = hf_state(tiny_pair["small"])
    for step in (1, 2, 3):
        d = dump(codistill_run, step)
        m = d["response_mask"].bool()
        actor = (
            initial if step == 1 else ckpt_state(codistill_run / "checkpoints" / f"global_step_{step - 1}" / "actor")
        )
        want = hf_log_probs(tiny_pair["small"], actor, d)
        gap = (d["rollout_log_probs"][m] - want[m]).abs().max().item()
        assert gap < ROLLOUT_LOGPROB_TOL, (
            f"step {step}: rollout log-probs are not the synced actor's (max |diff| {gap})"
        )
        if step == 3:
            # the check can fail: the initial weights give other log-probs (lr 1e-3 moved the model)
            stale = hf_log_probs(tiny_pair["small"], initial, d)
            assert (d["rollout_log_probs"][m] - stale[m]).abs().max().item() > 100 * ROLLOUT_LOGPROB_TOL


def test_every_listed_metric_present_and_finite(codistill_run):
    rows = metrics(codistill_run)
    assert sorted(rows) == [1, 2, 3]
    for step, data in rows.items():
        missing = [k for k in LISTED_METRICS if k not in data]
        assert not missing, f"step {step}: missing {missing}"
        bad = {k: data[k] for k in LISTED_METRICS if not math.isfinite(float(data[k]))}
        assert not bad, f"step {step}: non-finite {bad}"
        assert 0.0 < data["large/is_ess"] <= 1.0
        assert not [k for k in data if k.startswith("actor/") and k != "actor/entropy"], (
            "small-actor metrics not under small/"
        )


def test_rollout_mismatch_metric_against_the_dumped_log_probs(codistill_run):
    d = dump(codistill_run, 2)
    m = d["response_mask"].bool()
    diff = (d["rollout_log_probs"].double() - d["old_log_probs"].double()).abs()[m]
    data = metrics(codistill_run)[2]
    assert data["small/rollout_logprob_diff_max"] == pytest.approx(diff.max().item(), abs=1e-7)
    assert data["small/rollout_logprob_diff_mean"] == pytest.approx(diff.mean().item(), abs=1e-7)


def test_console_is_quiet_and_says_what_happened(codistill_run):
    console = Path(str(codistill_run) + ".console.log").read_text().splitlines()
    assert (
        console[0] == f"codistill: new run in {codistill_run}"
        or f"codistill: new run in {codistill_run}" in console[:3]
    )
    assert len(console_lines("\n".join(console))) < 80
    assert sum(line.startswith("codistill: step ") and "/3 " in line for line in console) == 3
    assert f"codistill: done: steps 1..3 of 3 in {codistill_run}" in "\n".join(console)
    assert (codistill_run / "config.yaml").is_file() and (codistill_run / "cpu_substitutions.txt").is_file()
    assert "codistill: step 3/3" in (codistill_run / "train.log").read_text()


def test_large_group_is_a_trainable_actor_on_the_small_pool(codistill_run):
    log = Path(str(codistill_run) + ".console.log").read_text()
    assert "codistill: large model worker group (role actor) on resource pool 'global_pool' (colocate)" in log
    for step in (1, 2, 3):
        sub = codistill_run / "checkpoints" / f"global_step_{step}" / "large_actor"
        assert (sub / "optim_world_size_1_rank_0.pt").is_file() and (sub / "codistill_large_meta.json").is_file()


def test_small_advantage_is_codistill_of_the_step(codistill_run):
    """A_s[i,t] = (A_R[i] + beta * clamp(ll - ls, -10, 10)) * m, beta = 1, from the step's own tensors."""
    for step in (1, 2, 3):
        d = dump(codistill_run, step)
        a_r = grpo_reference(d["token_level_rewards"].sum(-1).tolist(), d["uid"])
        ls, ll, m, adv = d["old_log_probs"], d["large_old_log_probs"], d["response_mask"], d["advantages"]
        for i in range(adv.shape[0]):
            for t in range(adv.shape[1]):
                gap = min(max(ll[i, t].item() - ls[i, t].item(), -10.0), 10.0)
                want = (a_r[i] + gap) * m[i, t].item()
                assert abs(adv[i, t].item() - want) < 1e-5, (step, i, t, adv[i, t].item(), want)


def test_large_weights_and_advantage_of_the_step(codistill_run):
    """w = min(exp(ll - ls), 2) * m (token, truncate, C=2); A_l = A_R * m (grpo)."""
    d = dump(codistill_run, 2)
    a_r = grpo_reference(d["token_level_rewards"].sum(-1).tolist(), d["uid"])
    ls, ll, m = d["old_log_probs"], d["large_old_log_probs"], d["response_mask"]
    for i in range(ls.shape[0]):
        for t in range(ls.shape[1]):
            w = min(math.exp(min(max(ll[i, t].item() - ls[i, t].item(), -20.0), 20.0)), 2.0) * m[i, t].item()
            assert abs(d["large_is_weights"][i, t].item() - w) < 1e-5
            assert abs(d["large_advantages"][i, t].item() - a_r[i] * m[i, t].item()) < 1e-5


def test_log_probs_are_each_models_own(codistill_run, tiny_pair):
    """Step 1: ls from the initial small model, ll from the initial large model, on the same token ids."""
    d = dump(codistill_run, 1)
    m = d["response_mask"].bool()
    lengths = m.sum(-1)
    assert lengths.min() < lengths.max(), "all responses have one length: the mask alignment is untested"
    for key, model in (("old_log_probs", "small"), ("large_old_log_probs", "large")):
        want = hf_log_probs(tiny_pair[model], None, d)
        assert (d[key][m] - want[m]).abs().max().item() < 1e-4, key
    assert (d["old_log_probs"][m] - d["large_old_log_probs"][m]).abs().max().item() > 1e-2


def test_both_losses_on_the_first_step_against_independent_sums(codistill_run):
    """On-policy first mini-batch (ratio 1), token-mean: small pg_loss = -sum(A_s * m) / sum(m),
    large pg_loss = -sum(w * A_l * m) / sum(m), from the step's dumped tensors."""
    d = dump(codistill_run, 1)
    m = d["response_mask"].double()
    data = metrics(codistill_run)[1]
    small = -(d["advantages"].double() * m).sum().item() / m.sum().item()
    large = -(d["large_is_weights"].double() * d["large_advantages"].double() * m).sum().item() / m.sum().item()
    assert abs(small) > 1e-3 and abs(large) > 1e-3, "degenerate check: a zero token mean"
    assert data["small/pg_loss"] == pytest.approx(small, rel=1e-4, abs=1e-6)
    assert data["large/pg_loss"] == pytest.approx(large, rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------------------------------ resume


def test_resume_continues_from_saved_step(codistill_run, resumed_run, tiny_pair):
    full = dump(codistill_run, 3)
    res = dump(resumed_run, 3)
    assert not (resumed_run / "dump" / "batch_step_1.pt").exists(), "resumed run re-ran step 1"
    assert sorted(full["raw_prompt"]) == sorted(res["raw_prompt"]), "step-3 prompts differ from the uninterrupted run"

    # both models start step 3 from exactly the saved step-2 weights
    m = res["response_mask"].bool()
    for key, model, sub in (("old_log_probs", "small", "actor"), ("large_old_log_probs", "large", "large_actor")):
        state = ckpt_state(codistill_run / "checkpoints" / "global_step_2" / sub)
        want = hf_log_probs(tiny_pair[model], state, res)
        assert (res[key][m] - want[m]).abs().max().item() < 1e-4, key

    # the restarted vLLM engine generates with the saved step-2 weights (loaded from the checkpoint, then synced)
    want = hf_log_probs(tiny_pair["small"], ckpt_state(codistill_run / "checkpoints" / "global_step_2" / "actor"), res)
    assert (res["rollout_log_probs"][m] - want[m]).abs().max().item() < ROLLOUT_LOGPROB_TOL

    if (codistill_run / "dump" / "rollout_weights_step_1.pt").exists():  # the seeded `hf` rollout only
        # same samples as the uninterrupted run -> same step-3 update, which needs the saved optimizer state too.
        # vLLM draws from one engine RNG seeded at engine start (verl's per-request seed exists only with
        # full_determinism, which gives every sample of a prompt the same seed), so a restarted engine draws
        # other samples: this part holds for `hf` runs only.
        _assert_same_step3(full, res, codistill_run, resumed_run)


def _assert_same_step3(full: dict, res: dict, codistill_run: Path, resumed_run: Path) -> None:
    assert {row_key(full, i) for i in range(len(full["uid"]))} == {row_key(res, i) for i in range(len(res["uid"]))}
    for sub in ("actor", "large_actor"):
        a = ckpt_state(codistill_run / "checkpoints" / "global_step_3" / sub)
        b = ckpt_state(resumed_run / "checkpoints" / "global_step_3" / sub)
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=f"{sub} {name}")
        for x, y in zip(
            optim_tensors(codistill_run / "checkpoints" / "global_step_3" / sub),
            optim_tensors(resumed_run / "checkpoints" / "global_step_3" / sub),
            strict=True,
        ):
            torch.testing.assert_close(y, x, rtol=1e-3, atol=1e-8, msg=f"{sub} optimizer state")


def test_resume_keeps_history_each_step_once(codistill_run, resumed_run):
    """metrics.jsonl: steps 1-2 of the first attempt, step 3 of the resumed one; the first attempt's step 3
    (logged after its last checkpoint) is kept aside, not deleted; train.log is appended to."""
    rows = metrics(resumed_run)
    assert sorted(rows) == [1, 2, 3]
    first = metrics(codistill_run)
    assert rows[1] == first[1] and rows[2] == first[2]
    superseded = [json.loads(line) for line in (resumed_run / "metrics.superseded.jsonl").read_text().splitlines()]
    assert [r["step"] for r in superseded] == [3] and superseded[0]["data"] == first[3]
    log = (resumed_run / "train.log").read_text()
    assert log.startswith("the first attempt's log\n") and "codistill: step 3/3" in log


def test_resume_refuses_missing_large_checkpoint(runs_root, codistill_run):
    out = runs_root / "resume_missing_large"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(codistill_run / "checkpoints" / "global_step_2", out / "checkpoints" / "global_step_2")
    shutil.rmtree(out / "checkpoints" / "global_step_2" / "large_actor")
    (out / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("2")
    proc = run_recipe(out, "codistill", steps=3, check=False)
    assert proc.returncode == 1
    # the error is the last line but for vLLM's start-up output (a worker that started late may print after it)
    assert console_lines(proc.stderr)[-1] == (
        f"codistill: resume: no large-model checkpoint at {out}/checkpoints/global_step_2/large_actor (this run trains "
        "the large model; start over with --fresh / run.fresh=true, or point trainer.resume_from_path elsewhere)"
    )


# ------------------------------------------------------------------------------------------ baseline


def test_baseline_is_verls_grpo_and_loads_no_large_model(baseline_run):
    for step in (1, 2):
        d = dump(baseline_run, step)
        assert not any(k.startswith("large_") for k in d), "large fields in a baseline batch"
        a_r = grpo_reference(d["token_level_rewards"].sum(-1).tolist(), d["uid"])
        want = torch.tensor(a_r, dtype=torch.float64)[:, None] * d["response_mask"].double()
        assert (d["advantages"].double() - want).abs().max().item() < 1e-6
        m = d["response_mask"].double()
        want_loss = -(d["advantages"].double() * m).sum().item() / m.sum().item()
        assert abs(metrics(baseline_run)[step]["small/pg_loss"] - want_loss) < 1e-5
    rows = metrics(baseline_run)
    assert not [k for k in rows[1] if k.startswith("large/")]
    log = Path(str(baseline_run) + ".console.log").read_text()
    assert "codistill: large model worker group" not in log and "ActorRolloutRefWorker pid" not in log


def test_in_loop_validation_per_suite(baseline_run):
    """verl's validation at step 2 on both eval files, one metric set per data_source."""
    rows = metrics(baseline_run)
    assert not [k for k in rows[1] if k.startswith("val-")], "validated at step 1 with test_freq=2"
    for suite in ("tiny_arith", "tiny_arith_b"):
        keys = [k for k in rows[2] if k.startswith(f"val-core/{suite}/")]
        assert keys, f"no val-core metrics for {suite}"
        assert all(0.0 <= float(rows[2][k]) <= 1.0 for k in keys)


# ------------------------------------------------------------------------------------------ frozen teacher


def test_frozen_teacher_is_not_updated(frozen_run, tiny_pair):
    rows = metrics(frozen_run)
    assert "large/pg_loss" not in rows[2] and "large/grad_norm" not in rows[2]
    assert 0.0 < rows[2]["large/is_ess"] <= 1.0
    d = dump(frozen_run, 2)
    m = d["response_mask"].bool()
    want = hf_log_probs(tiny_pair["large"], None, d)  # still the initial large model at step 2
    assert (d["large_old_log_probs"][m] - want[m]).abs().max().item() < 1e-4
    assert "large_is_weights" not in d and "large_advantages" not in d
    assert not list((frozen_run / "checkpoints").rglob("large_actor"))
    log = Path(str(frozen_run) + ".console.log").read_text()
    assert "codistill: frozen large model loaded forward-only on 1 rank(s), optimizer state: none" in log
    assert "codistill: large model worker group (role ref) on resource pool 'large_pool' (separate)" in log


# ------------------------------------------------------------------------------------------ other IS settings


@pytest.fixture(scope="module")
def sequence_run(runs_root, tiny_dir) -> Path:
    # is.behavior=rollout: the IS weights' sampler is vLLM's own log-probs (rollout_log_probs)
    extra = [
        "algorithm.codistill.is.level=sequence",
        "algorithm.codistill.large.advantage=is_baseline",
        "algorithm.codistill.is.behavior=rollout",
    ]
    run_recipe(runs_root / "sequence", "codistill", steps=1, extra=extra)
    return runs_root / "sequence"


def test_sequence_weights_and_is_baseline_end_to_end(sequence_run):
    """is.level=sequence: w_i = min(exp(clamp(sum_t (ll - ls), -20, 20)), 2) on every valid token;
    large.advantage=is_baseline: A_l = (r_i - b_g) / (std_g r + eps), b_g = sum W r / sum W with
    W = exp(clamp(sum_t (ll - ls), -20, 20)); the large loss is -sum(w A_l m) / sum(m) on step 1.
    is.behavior=rollout: ls is the rollout engine's own log-probs (vLLM's), not the actor's recomputed ones."""
    d = dump(sequence_run, 1)
    ls, ll, m = d["rollout_log_probs"].double(), d["large_old_log_probs"].double(), d["response_mask"].double()
    scores = d["token_level_rewards"].sum(-1).tolist()
    uids = d["uid"]
    n = len(uids)
    log_w = [sum((ll[i, t] - ls[i, t]).item() for t in range(m.shape[1]) if m[i, t] > 0) for i in range(n)]
    big_w = [math.exp(min(max(x, -20.0), 20.0)) for x in log_w]
    for i in range(n):
        group = [j for j in range(n) if uids[j] == uids[i]]
        base = sum(big_w[j] * scores[j] for j in group) / sum(big_w[j] for j in group)
        mean = sum(scores[j] for j in group) / len(group)
        std = math.sqrt(sum((scores[j] - mean) ** 2 for j in group) / (len(group) - 1))
        want_adv = (scores[i] - base) / (std + 1e-6)
        for t in range(m.shape[1]):
            assert abs(d["large_is_weights"][i, t].item() - min(big_w[i], 2.0) * m[i, t].item()) < 1e-5
            assert abs(d["large_advantages"][i, t].item() - want_adv * m[i, t].item()) < 1e-4
    want_loss = -(d["large_is_weights"].double() * d["large_advantages"].double() * m).sum().item() / m.sum().item()
    assert abs(want_loss) > 1e-4  # a loss to compare (9.8e-4 with the head-size-32 tiny pair)
    assert metrics(sequence_run)[1]["large/pg_loss"] == pytest.approx(want_loss, rel=1e-4, abs=1e-6)
