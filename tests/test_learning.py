"""Learning in miniature: from the shipped toy pair, a short CoDistill-GRPO run of the real recipe
raises the small model's held-out greedy accuracy (the RL signal) and lowers its held-out reverse
KL to the large model (the distillation signal).

Both are measured here independently of the training loop: greedy HF generate of each test question
scored by the project's math reward (the project's one evaluator, ``recipe.codistill_grpo.evaluation``),
and per-token log-probs of both models recomputed with plain HF forwards on the small model's greedy
responses. They are also compared with what the run's own
in-loop validation logged (``val-core/.../mean@1`` and ``val/kd_kl``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from recipe.codistill_grpo.configuration import compose_config, resolved
from recipe.codistill_grpo.cpu.stand_in import ensure_stand_in
from recipe.codistill_grpo.evaluation import evaluate_frame

pytestmark = pytest.mark.slow  # the slow tier: Ray end-to-end runs

REPO = Path(__file__).resolve().parents[1]
STEPS = 12
SEED = 11  # a training seed the README's results do not use (they use 1, 2, 3)
LR = 3e-4  # 3x the pair's small-model rate, so that 12 steps show what 40 show at the YAML's settings
MIN_GAIN = 19  # greedy answers out of 192 (10 points)
MAX_KL_RATIO = 0.95  # measured 0.86 on seed 11 (0.0506 -> 0.0436); the large model moves too


@pytest.fixture(scope="module")
def toy(output_dir) -> Path:
    """The toy pair as platform=cpu builds it (the shipped weights)."""
    cpu_pair = resolved(compose_config("toy", "codistill", platform="cpu")).run.cpu_pair
    ensure_stand_in(cpu_pair)
    return Path(cpu_pair.dir)


def _model(folder: Path, shard: Path | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if shard is not None:  # a verl FSDP checkpoint of one rank: the whole state dict
        state = torch.load(shard, weights_only=False)
        model.load_state_dict(
            {k: (v.to_local() if hasattr(v, "to_local") else v) for k, v in state.items()}, strict=True
        )
    return model


def held_out(small, large, tok, test: pd.DataFrame) -> tuple[int, float]:
    """(correct greedy answers of the small model, mean over response tokens of log pi_s - log pi_l
    on those greedy responses, EOS included, log-probs at temperature 1)."""
    greedy = evaluate_frame(small, tok, test, max_tokens=24, batch_size=64, return_ids=True)
    diff_sum, tokens = 0.0, 0
    for ((prompt, response),) in greedy.ids:  # one sequence at a time, no padding: plain forwards
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            lp = [
                torch.log_softmax(m(input_ids=ids).logits[0, len(prompt) - 1 : -1].double(), -1) for m in (small, large)
            ]
        picked = [x.gather(-1, torch.tensor(response)[:, None]).squeeze(-1) for x in lp]
        diff_sum += float((picked[0] - picked[1]).sum())
        tokens += len(response)
    return sum(c[0] == 1.0 for c in greedy.correct), diff_sum / tokens


def test_codistill_raises_accuracy_and_lowers_the_held_out_kl(toy, tmp_path):
    from transformers import AutoTokenizer

    test = pd.read_parquet(toy / "data" / "test.parquet")
    tok = AutoTokenizer.from_pretrained(toy / "models" / "small")
    base_correct, base_kl = held_out(_model(toy / "models" / "small"), _model(toy / "models" / "large"), tok, test)

    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.codistill_grpo.main_codistill",
            "pair=toy",
            "exp=codistill",
            "platform=cpu",
            f"run.seed={SEED}",
            f"run.dir={run}",
            f"trainer.total_training_steps={STEPS}",
            f"pair.cpu.test_freq={STEPS}",
            f"pair.small.actor.optim.lr={LR}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["step"]: r["data"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    step = run / "checkpoints" / f"global_step_{STEPS}"
    small = _model(toy / "models" / "small", step / "actor" / "model_world_size_1_rank_0.pt")
    large = _model(toy / "models" / "large", step / "large_actor" / "model_world_size_1_rank_0.pt")
    correct, kl = held_out(small, large, tok, test)
    print(
        f"held-out: greedy {base_correct}/192 -> {correct}/192 after {STEPS} CoDistill steps; "
        f"reverse KL small||large {base_kl:.4f} -> {kl:.4f}; logged val/kd_kl {rows[0]['val/kd_kl']:.4f} -> "
        f"{rows[STEPS]['val/kd_kl']:.4f}"
    )
    # the run's own validation measures what this test measures (verl's rollout and FSDP log-probs)
    accuracy = "val-core/toy_arith/acc/mean@1"
    assert abs(rows[0][accuracy] * 192 - base_correct) <= 1 and abs(rows[STEPS][accuracy] * 192 - correct) <= 2
    assert rows[0]["val/kd_kl"] == pytest.approx(base_kl, abs=2e-3)
    assert rows[STEPS]["val/kd_kl"] == pytest.approx(kl, abs=5e-3)
    # what the method should do: both signals move, by more than the run-to-run noise seen on other seeds
    assert correct >= base_correct + MIN_GAIN, (base_correct, correct)
    assert kl <= base_kl * MAX_KL_RATIO, (base_kl, kl)
