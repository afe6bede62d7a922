#!/usr/bin/env python
"""Math reward throughput: sequential in-process grading vs the process pool, with adversarial inputs.

    python scripts/bench_reward.py                       # 400 real-looking + 10 adversarial, timeout 5 s
    python scripts/bench_reward.py --n 1000 --workers 2,4 --timeout 2

Details (formats, equations, options): docs/benchmarks.md, section scripts/bench_reward.py.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from verl_ext.reward.math_reward import get_pool, score_batch, summarize  # noqa: E402

FILLER = (
    "First we rewrite the expression so that both terms share a denominator. "
    "Expanding and collecting like terms gives a quadratic, whose discriminant we check is positive. "
)


def _answer(rng: random.Random) -> tuple[str, str, str]:
    """(ground truth, an equivalent form, a wrong answer) with random numbers, so no cache helps."""
    a, b = rng.randint(1, 97), rng.randint(2, 99)
    c = rng.randint(2, 30)
    kind = rng.randrange(10)
    if kind == 0:
        return f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{2 * a}}}{{{2 * b}}}", f"\\frac{{{a + b}}}{{{b}}}"
    if kind == 1:
        return f"{c}\\sqrt{{3}}", f"\\sqrt{{{3 * c * c}}}", f"{c}\\sqrt{{2}}"
    if kind == 2:
        return f"({a}, {b})", f"({a},{b})", f"({b}, {a + 1})"
    if kind == 3:
        return f"[{a}, {a + b})", f"[{a},{a + b})", f"({a}, {a + b}]"
    if kind == 4:
        return f"x^2 + {2 * c}x + {c * c}", f"(x+{c})^2", f"(x-{c})^2"
    if kind == 5:
        return f"\\frac{{\\pi}}{{{c}}}", f"\\pi/{c}", f"\\pi/{c + 1}"
    if kind == 6:
        return f"{a}", f"{a}.0", f"{a + 1}"
    if kind == 7:
        return f"{a} + {b}i", f"{b}i + {a}", f"{a} - {b}i"
    if kind == 8:
        return f"-\\frac{{{2 * a + 1}}}{{2}}", f"-{a}.5", f"{a}.5"
    return f"\\{{{a}, {b + 100}\\}}", f"\\{{{b + 100}, {a}\\}}", f"\\{{{a}\\}}"


def real_looking(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    solutions, golds = [], []
    for i in range(n):
        gold, same, wrong = _answer(rng)
        pred = same if i % 2 == 0 else wrong
        solutions.append(FILLER * rng.randint(1, 6) + f"Therefore the answer is $\\boxed{{{pred}}}$.")
        golds.append(gold)
    return solutions, golds


def adversarial(k: int) -> tuple[list[str], list[str], list[str]]:
    nested = "\\boxed{" + "\\frac{" * 100 + "1" + "}{2}" * 100 + "}"  # bracket-depth guard
    tower = "\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}"  # sympy runs to the timeout
    factorial = "\\boxed{(10^{10})!}"  # sympy runs to the timeout
    huge_boxed = FILLER + "\\boxed{" + "9" * 100_000 + "}"  # size guard
    huge_text = ("x + " * 25_000)[:100_000]  # no box: format 0
    kinds = [
        ("nested_frac_x100", nested, "1"),
        ("power_tower", tower, "3"),
        ("huge_factorial", factorial, "3"),
        ("1e5_char_boxed", huge_boxed, "3"),
        ("1e5_char_unboxed", huge_text, "3"),
    ]
    picked = [kinds[i % len(kinds)] for i in range(k)]
    return [p[1] for p in picked], [p[2] for p in picked], [p[0] for p in picked]


def run(mode: str, workers: int, solutions, golds, timeout: float) -> dict:
    start = time.perf_counter()
    results = score_batch(solutions, golds, timeout=timeout, num_workers=workers)
    elapsed = time.perf_counter() - start
    load = os.getloadavg()[0]  # 1-minute load at the end: other processes competing for the cores
    latency = np.array([r["latency_s"] for r in results])
    return {
        "mode": mode,
        "elapsed": elapsed,
        "load": load,
        "rate": len(results) / elapsed,
        "worst": latency.max(),
        "latency": latency,
        "p50": float(np.percentile(latency, 50)),
        "p99": float(np.percentile(latency, 99)),
        "summary": summarize(results),
        "scores": [r["score"] for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=400, help="real-looking responses")
    p.add_argument("--adversarial", type=int, default=10, help="adversarial responses mixed in (5 kinds, cycled)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-item bound (s)")
    p.add_argument("--workers", default="2", help="pool sizes to measure, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rng = random.Random(args.seed)
    solutions, golds = real_looking(rng, args.n)
    adv_solutions, adv_golds, adv_kinds = adversarial(args.adversarial)
    order = list(range(len(solutions) + len(adv_solutions)))
    rng.shuffle(order)
    all_solutions = [(solutions + adv_solutions)[i] for i in order]
    all_golds = [(golds + adv_golds)[i] for i in order]
    all_kinds = [(["real-looking"] * len(solutions) + adv_kinds)[i] for i in order]
    print(
        f"items: {args.n} real-looking + {args.adversarial} adversarial "
        f"({', '.join(sorted(set(adv_kinds)))}); timeout {args.timeout} s; cpus {os.cpu_count()}"
    )

    expected = ((args.n + 1) // 2) / len(all_solutions)  # every even-indexed real-looking item is right
    print(f"expected accuracy (by construction): {expected:.3f}")
    score_batch(["\\boxed{\\frac{1}{2}}"], ["0.5"], num_workers=0)  # imports outside the timed region, as the pool's
    rows = [run("sequential", 0, all_solutions, all_golds, args.timeout)]
    for w in [int(x) for x in args.workers.split(",")]:
        start = time.perf_counter()
        get_pool(w)  # start the workers outside the timed region
        print(f"pool({w}) start-up: {time.perf_counter() - start:.2f} s")
        rows.append(run(f"pool({w})", w, all_solutions, all_golds, args.timeout))

    base = rows[0]
    print(
        f"{'mode':<12}{'resp/s':>9}{'total s':>9}{'ratio':>7}{'worst s':>9}{'p50 ms':>8}{'p99 ms':>9}"
        f"{'acc':>7}{'t/o':>5}{'err':>5}{'load':>6}  same scores"
    )
    for r in rows:
        s = r["summary"]
        print(
            f"{r['mode']:<12}{r['rate']:>9.1f}{r['elapsed']:>9.2f}{r['rate'] / base['rate']:>7.2f}{r['worst']:>9.2f}"
            f"{1000 * r['p50']:>8.1f}{1000 * r['p99']:>9.1f}{s['accuracy']:>7.3f}{s['timeouts']:>5}{s['errors']:>5}"
            f"{r['load']:>6.1f}"
            f"  {r['scores'] == base['scores']}"
        )
    for w in [int(x) for x in args.workers.split(",")]:
        print(f"pool({w}) workers killed and replaced: {get_pool(w).kills}")
    kinds = ["real-looking"] + sorted(set(adv_kinds))
    print("worst latency (s) by input kind:")
    print(f"  {'kind':<20}" + "".join(f"{r['mode']:>12}" for r in rows))
    for kind in kinds:
        mask = np.array([k == kind for k in all_kinds])
        print(f"  {kind:<20}" + "".join(f"{r['latency'][mask].max():>12.3f}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
