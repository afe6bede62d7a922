#!/usr/bin/env python
"""Per-phase step time of two runs of the recipe, through the real entry point, side by side.

    # CPU (the pair's config with platform=cpu): CoDistill vs the small-model GRPO baseline
    python scripts/bench_step.py --steps 6 --warmup 2
    # the zero-gradient skip: CoDistill with and without it (same pair, same seeds)
    python scripts/bench_step.py --compare skip --pair toy --steps 8 --warmup 2
    # the CPU rollout: requests batched vs answered one at a time
    python scripts/bench_step.py --compare batching --pair toy --steps 6 --warmup 2
    # GPU: the pair's real config (pass what your cluster needs after --)
    python scripts/bench_step.py --platform gpu --steps 8 -- trainer.n_gpus_per_node=8

Details (formats, equations, options): docs/benchmarks.md, section scripts/bench_step.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = "recipe.codistill_grpo.main_codistill"

# label -> (metric keys added, metric keys subtracted): verl's timers and the recipe's sub-phase timers
PHASES = [
    ("generate", ["timing_s/gen"], []),
    ("reward", ["timing_s/reward"], []),
    ("small log-prob", ["timing_s/old_log_prob"], ["timing_s/large_log_prob"]),
    ("large log-prob", ["timing_s/large_log_prob"], []),
    ("advantage", ["timing_s/adv", "timing_s/kd_advantage"], []),
    ("small update", ["timing_s/small_update"], []),
    ("large update", ["timing_s/large_update"], []),
    ("weight sync", ["timing_s/update_weights"], []),
    ("step (total)", ["timing_s/step"], []),
]
COMPARISONS = {
    "grpo": [("codistill", ["exp=codistill"]), ("grpo_small", ["exp=grpo_small"])],
    "skip": [
        ("skip", ["exp=codistill"]),
        ("no_skip", ["exp=codistill", "algorithm.codistill.large.skip_zero_grad=false"]),
    ],
    # the CPU rollout answering waiting requests in batches vs one request at a time (as before batching)
    "batching": [
        ("batched", ["exp=codistill"]),
        ("one_by_one", ["exp=codistill", "+actor_rollout_ref.rollout.engine_kwargs.hf.max_batch_size=1"]),
    ],
}


def run(out: Path, pair: str, platform: str, steps: int, variant: list[str], extra: list[str]) -> dict[int, dict]:
    args = [f"pair={pair}", f"platform={platform}", *variant, f"run.dir={out}", "run.fresh=true"]
    args += [f"trainer.total_training_steps={steps}", "trainer.save_freq=-1", *extra]
    print(f"bench_step: {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", ENTRY, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_step: run failed (exit {proc.returncode}), see {out}/train.log\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["data"] for r in rows}


def phase_means(rows: dict[int, dict], warmup: int) -> dict[str, float | None]:
    steps = [s for s in sorted(rows) if s > warmup]
    if not steps:
        raise SystemExit(f"bench_step: no steps after the {warmup} warm-up steps; raise --steps")
    means: dict[str, float | None] = {}
    for label, plus, minus in PHASES:
        if not all(plus[0] in rows[s] for s in steps):
            means[label] = None
            continue
        means[label] = sum(
            sum(float(rows[s].get(k, 0.0)) for k in plus) - sum(float(rows[s].get(k, 0.0)) for k in minus)
            for s in steps
        ) / len(steps)
    return means


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))  # this checkout's recipe package
    from recipe.codistill_grpo.cli import parse_with_overrides

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="qwen2.5-math-1.5b_7b")
    p.add_argument("--platform", default="cpu", choices=("cpu", "gpu"))
    p.add_argument(
        "--compare",
        default="grpo",
        choices=sorted(COMPARISONS),
        help="grpo: codistill vs grpo_small; skip: codistill with vs without the zero-gradient skip; "
        "batching (platform cpu): the CPU rollout batching requests vs answering one at a time",
    )
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="leading steps left out of the means")
    p.add_argument("--out", help="output folder (default: a temporary folder)")
    ns, extra = parse_with_overrides(p, argv)

    out = Path(ns.out or tempfile.mkdtemp(prefix="bench_step_")).resolve()
    (a, a_args), (b, b_args) = COMPARISONS[ns.compare]
    print(
        f"bench_step: pair {ns.pair}, platform {ns.platform}, {ns.steps} steps, first {ns.warmup} left out; "
        f"runs in {out}",
        flush=True,
    )
    first = run(out / a, ns.pair, ns.platform, ns.steps, a_args, extra)
    second = run(out / b, ns.pair, ns.platform, ns.steps, b_args, extra)
    ma, mb = phase_means(first, ns.warmup), phase_means(second, ns.warmup)

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:9.1f}"

    print(f"\n{'phase':<16}{a + ' ms':>14}{b + ' ms':>14}{'ratio':>8}")
    for label, _, _ in PHASES:
        x, y = ma[label], mb[label]
        ratio = f"{x / y:7.2f}x" if (x is not None and y) else "      -"
        print(f"{label:<16}{ms(x):>14}{ms(y):>14}{ratio:>8}")
    for name, rows in ((a, first), (b, second)):
        skipped = [rows[s].get("large/skipped_frac") for s in sorted(rows) if s > ns.warmup]
        if any(v is not None for v in skipped):
            vals = [v for v in skipped if v is not None]
            print(f"{name}: large/skipped_frac mean {sum(vals) / len(vals):.3f} over {len(vals)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
