#!/usr/bin/env python
"""Math reward throughput: sequential in-process grading vs the process pool, with adversarial inputs.

    python scripts/bench_reward.py                       # 400 real-looking + 10 adversarial, timeout 5 s

Examples, formats, equations and options: docs/benchmarks.md, section scripts/bench_reward.py.
"""

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
# (response, ground truth, kind): the adversarial kinds, cycled
ADVERSARIAL = [
    ("\\boxed{" + "\\frac{" * 100 + "1" + "}{2}" * 100 + "}", "1", "nested_frac_x100"),  # bracket-depth guard
    ("\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}", "3", "power_tower"),  # sympy runs to the timeout
    ("\\boxed{(10^{10})!}", "3", "huge_factorial"),  # sympy runs to the timeout
    (FILLER + "\\boxed{" + "9" * 100_000 + "}", "3", "1e5_char_boxed"),  # size guard
    (("x + " * 25_000)[:100_000], "3", "1e5_char_unboxed"),  # no box: format 0
]


def real_looking(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """n (response, ground truth, "real-looking"): reasoning ending in a boxed answer, right at even indices, wrong at
    odd ones; random numbers, so no cache helps."""
    items = []
    for i in range(n):
        a, b, c = rng.randint(1, 97), rng.randint(2, 99), rng.randint(2, 30)
        gold, same, wrong = [  # (ground truth, an equivalent form, a wrong answer)
            (f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{2 * a}}}{{{2 * b}}}", f"\\frac{{{a + b}}}{{{b}}}"),
            (f"{c}\\sqrt{{3}}", f"\\sqrt{{{3 * c * c}}}", f"{c}\\sqrt{{2}}"),
            (f"({a}, {b})", f"({a},{b})", f"({b}, {a + 1})"),
            (f"[{a}, {a + b})", f"[{a},{a + b})", f"({a}, {a + b}]"),
            (f"x^2 + {2 * c}x + {c * c}", f"(x+{c})^2", f"(x-{c})^2"),
            (f"\\frac{{\\pi}}{{{c}}}", f"\\pi/{c}", f"\\pi/{c + 1}"),
            (f"{a}", f"{a}.0", f"{a + 1}"),
            (f"{a} + {b}i", f"{b}i + {a}", f"{a} - {b}i"),
            (f"-\\frac{{{2 * a + 1}}}{{2}}", f"-{a}.5", f"{a}.5"),
            (f"\\{{{a}, {b + 100}\\}}", f"\\{{{b + 100}, {a}\\}}", f"\\{{{a}\\}}"),
        ][rng.randrange(10)]
        response = FILLER * rng.randint(1, 6) + f"Therefore the answer is $\\boxed{{{wrong if i % 2 else same}}}$."
        items.append((response, gold, "real-looking"))
    return items


def run(workers: int, solutions, golds, timeout: float) -> dict:
    """One timed score_batch (a pool's workers started before it): seconds, the 1-minute load after it (other
    processes' use of the cores), per-item latencies, summary and scores."""
    if workers:
        start = time.perf_counter()
        get_pool(workers)
        print(f"pool({workers}) start-up: {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    results = score_batch(solutions, golds, timeout=timeout, num_workers=workers)
    elapsed = time.perf_counter() - start
    latency, scores = np.array([r["latency_s"] for r in results]), [r["score"] for r in results]
    return dict(elapsed=elapsed, load=os.getloadavg()[0], latency=latency, summary=summarize(results), scores=scores)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=400, help="real-looking responses")
    p.add_argument("--adversarial", type=int, default=10, help="adversarial responses mixed in (5 kinds, cycled)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-item bound (s)")
    p.add_argument("--workers", default=[2], type=lambda s: list(map(int, s.split(","))), help="pool sizes, e.g. 2,4")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rng = random.Random(args.seed)
    items = real_looking(rng, args.n) + [ADVERSARIAL[i % len(ADVERSARIAL)] for i in range(args.adversarial)]
    rng.shuffle(items)
    solutions, golds, kinds = zip(*items)
    adv_kinds = sorted(set(kinds) - {"real-looking"})
    print(
        f"items: {args.n} real-looking + {args.adversarial} adversarial "
        f"({', '.join(adv_kinds)}); timeout {args.timeout} s; cpus {os.cpu_count()}"
    )
    print(f"expected accuracy (by construction): {((args.n + 1) // 2) / len(items):.3f}")  # even indices are right
    score_batch(["\\boxed{\\frac{1}{2}}"], ["0.5"], num_workers=0)  # imports outside the timed region, as the pool's
    rows = {f"pool({w})" if w else "sequential": run(w, solutions, golds, args.timeout) for w in [0, *args.workers]}

    base = rows["sequential"]
    print(
        f"{'mode':<12}{'resp/s':>9}{'total s':>9}{'ratio':>7}{'worst s':>9}{'p50 ms':>8}{'p99 ms':>9}"
        f"{'acc':>7}{'t/o':>5}{'err':>5}{'load':>6}  same scores"
    )
    for mode, r in rows.items():
        s, (p50, p99) = r["summary"], 1000 * np.percentile(r["latency"], [50, 99])
        print(
            f"{mode:<12}{len(items) / r['elapsed']:>9.1f}{r['elapsed']:>9.2f}{base['elapsed'] / r['elapsed']:>7.2f}"
            f"{r['latency'].max():>9.2f}{p50:>8.1f}{p99:>9.1f}{s['accuracy']:>7.3f}{s['timeouts']:>5}{s['errors']:>5}"
            f"{r['load']:>6.1f}  {r['scores'] == base['scores']}"
        )
    for w in args.workers:
        print(f"pool({w}) workers killed and replaced: {get_pool(w).kills}")
    print("worst latency (s) by input kind:")
    print(f"  {'kind':<20}" + "".join(f"{mode:>12}" for mode in rows))
    for kind in ["real-looking", *adv_kinds]:
        mask = np.array(kinds) == kind
        print(f"  {kind:<20}" + "".join(f"{r['latency'][mask].max():>12.3f}" for r in rows.values()))


if __name__ == "__main__":
    main()
