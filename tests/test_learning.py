"""Learning in miniature: from the warmed-up toy pair, a short GRPO run of the real recipe raises the
small model's greedy accuracy on the held-out toy test set (256 questions) above its base.

Accuracies are computed here independently of the recipe (greedy HF generate of each question,
scored by the project's math reward) and compared with what the run's own in-loop validation logged."""

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
from verl_ext.reward.math_reward import compute_score

REPO = Path(__file__).resolve().parents[1]
STEPS = 20
SEED = 11  # a training seed the toy pair's reported results do not use (they use 1, 2, 3)


@pytest.fixture(scope="module")
def toy_small(output_dir) -> Path:
    """The toy pair's small model, built with the settings of configs/pair/toy.yaml."""
    cpu_pair = resolved(compose_config("toy", "grpo_small", platform="cpu")).run.cpu_pair
    ensure_stand_in(cpu_pair, ("small",))
    return Path(cpu_pair.dir)


def greedy_accuracy(model_dir: Path, test: pd.DataFrame, state: dict | None = None) -> tuple[float, int]:
    """(accuracy, correct) of greedy answers to every test question: HF generate, the math reward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if state is not None:
        model.load_state_dict(state, strict=True)
    texts = [tok.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False) for p in test["prompt"]]
    correct = 0
    for start in range(0, len(texts), 64):
        enc = tok(texts[start:start + 64], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id)
        answers = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        golds = [r["ground_truth"] for r in test["reward_model"].iloc[start:start + 64]]
        correct += sum(compute_score("toy_arith", a, g)["score"] == 1.0 for a, g in zip(answers, golds))
    return correct / len(texts), correct


def test_grpo_raises_the_small_models_greedy_accuracy(toy_small, tmp_path):
    test = pd.read_parquet(toy_small / "data" / "test.parquet")
    assert len(test) == 256
    base, base_correct = greedy_accuracy(toy_small / "models" / "small", test)

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.codistill_grpo.main_codistill", "pair=toy", "exp=grpo_small", "platform=cpu",
         f"run.seed={SEED}", f"run.dir={run}", f"trainer.total_training_steps={STEPS}", f"pair.cpu.test_freq={STEPS}"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["step"]: r["data"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    val = {step: rows[step]["val-core/toy_arith/acc/mean@1"] for step in (0, STEPS)}
    # the run's in-loop validation (verl's, through the CPU rollout) measures what this test measures
    assert abs(val[0] - base) <= 1 / 256, (val[0], base)

    shard = torch.load(run / "checkpoints" / f"global_step_{STEPS}" / "actor" / "model_world_size_1_rank_0.pt",
                       weights_only=False)
    state = {k: (v.to_local() if hasattr(v, "to_local") else v) for k, v in shard.items()}
    trained, trained_correct = greedy_accuracy(toy_small / "models" / "small", test, state)
    assert abs(val[STEPS] - trained) <= 2 / 256, (val[STEPS], trained)
    print(f"greedy test accuracy: base {base:.3f} ({base_correct}/256), after {STEPS} GRPO steps {trained:.3f} "
          f"({trained_correct}/256)")
    assert trained_correct >= base_correct + 5, (base_correct, trained_correct)
