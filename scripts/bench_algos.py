#!/usr/bin/env python
"""Benchmark: the CoDistill algorithm path vs verl's plain GRPO path on one realistic batch.

    python scripts/bench_algos.py                      # 512 x 4096, group size 8, CPU

Examples, formats, equations and options: docs/benchmarks.md, section scripts/bench_algos.py.
"""

import argparse
import time
import uuid

import numpy as np
import pandas as pd
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, compute_policy_loss_vanilla
from verl.workers.config import FSDPActorConfig

from verl_ext.codistill.advantage import add_kd_advantage, compute_codistill_advantage_from_config
from verl_ext.codistill.config import CoDistillConfig
from verl_ext.codistill.importance import compute_large_advantage, compute_large_is_weights
from verl_ext.codistill.teacher_loss import codistill_teacher_policy_loss

CODISTILL = CoDistillConfig()
ACTOR = FSDPActorConfig(strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=1)


def make_batch(bs: int, seq_len: int, group: int, device: torch.device, seed: int) -> dict:
    """(bs, seq_len) response mask, sampled-token log-probs of both models (old and new), outcome rewards; uid (bs,)."""
    if bs % group:
        raise SystemExit(f"--batch={bs} must be a multiple of --group-size={group}")
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq_len + 1, (bs,), generator=g)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()  # int64, as verl's response_mask
    ls = -torch.empty(bs, seq_len).exponential_(1.0, generator=g)  # sampled-token log-probs
    ll = ls + 0.5 * torch.randn(bs, seq_len, generator=g)
    rewards = torch.zeros(bs, seq_len)
    rewards[torch.arange(bs), lengths - 1] = torch.randint(0, 2, (bs,), generator=g).float()
    uid = np.array([str(uuid.UUID(int=k)) for k in range(bs // group) for _ in range(group)], dtype=object)
    small_new = ls + 0.05 * torch.randn(bs, seq_len, generator=g)  # stands for the actor forward's output
    large_new = ll + 0.05 * torch.randn(bs, seq_len, generator=g)
    out = dict(mask=mask, ls=ls, ll=ll, rewards=rewards, small_new=small_new, large_new=large_new)
    return {**{k: v.to(device) for k, v in out.items()}, "uid": uid}


def make_paths(b: dict) -> dict[str, list]:
    """The three paths as lists of (phase name, fn(state) -> outputs); state maps each earlier phase to its outputs."""
    r, m, uid, ls, ll = b["rewards"], b["mask"], b["uid"], b["ls"], b["ll"]

    def loss(adv: str, s: dict, teacher: bool = False) -> None:
        """The small model's vanilla loss (teacher: the large one's, IS-weighted) forward + backward on a leaf copy of
        its new log-probs; advantages (IS weights) from the earlier phases s."""
        old, new = (ll, b["large_new"]) if teacher else (ls, b["small_new"])
        fn, extra = (codistill_teacher_policy_loss, [s[weights][0]]) if teacher else (compute_policy_loss_vanilla, [])
        logp = new.detach().clone().requires_grad_(True)
        fn(old, logp, s[adv][0], m.bool(), "token-mean", ACTOR, *extra)[0].backward()

    def small_adv(s):  # what a step runs: the registered estimator in verl's pass, then the KD part
        outcome, _ = compute_codistill_advantage_from_config(r, m, uid, config=CODISTILL)
        return add_kd_advantage(outcome, m, uid, ls, ll)

    small, weights = "kd reward + small adv + metrics", "IS weights + metrics"
    large, grpo = "large advantage", "verl grpo advantage"
    codistill = [
        (small, small_adv),
        (weights, lambda s: compute_large_is_weights(ls, ll, m)),
        (large, lambda s: compute_large_advantage(r, m, uid, ls, ll)),
        ("teacher loss fwd+bwd", lambda s: loss(large, s, teacher=True)),
    ]
    return {
        "GRPO path": [
            (grpo, lambda s: compute_grpo_outcome_advantage(r, m, uid)),
            ("verl vanilla loss fwd+bwd", lambda s: loss(grpo, s)),
        ],
        "CoDistill path": codistill,
        "CoDistill + small loss": [*codistill, ("small vanilla loss fwd+bwd", lambda s: loss(small, s))],
    }


def run_once(phases: list, device: torch.device) -> tuple[dict[str, tuple[float, float]], float | None]:
    """One run of a path: ({phase: (wall ms, process CPU ms)}, peak MiB allocated during it above the allocation
    before it: CUDA only, None on CPU), the device synchronised after each phase."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base, state, times = torch.cuda.memory_allocated() if cuda else 0, {}, {}
    for name, fn in phases:
        t0, c0 = time.perf_counter(), time.process_time()
        state[name] = fn(state)
        sync()
        times[name] = ((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3)
    return times, (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512, help="responses per batch")
    parser.add_argument("--seq-len", type=int, default=4096, help="max response tokens")
    parser.add_argument("--group-size", type=int, default=8, help="responses per prompt (GRPO group)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = make_batch(args.batch, args.seq_len, args.group_size, device, args.seed)
    paths = make_paths(batch)

    rows, peaks = [], {}  # the paths interleaved within each repeat: other processes' load hits them alike
    for rep in range(args.warmup + args.repeats):
        for label, phases in paths.items():
            times, peaks[label] = run_once(phases, device)  # the peak of the path's last run
            total = tuple(map(sum, zip(*times.values())))  # the path: the sum of its phases
            rows += [(rep, label, name, *ms) for name, ms in {**times, label: total}.items() if rep >= args.warmup]
    df = pd.DataFrame(rows, columns=["rep", "path", "phase", "wall", "cpu"])

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"bench_algos: {args.batch} responses x {args.seq_len} tokens ({int(batch['mask'].sum())} valid), group "
        f"{args.group_size}, {name}, torch {torch.__version__}, {args.repeats} repeats (after {args.warmup} warm-up)"
    )
    mem = "cuda max_memory_allocated" if device.type == "cuda" else "none on CPU"
    print(f"{'phase':<34}{'wall med ms':>12}{'wall min ms':>12}{'cpu med ms':>11}{'peak MiB':>10}   (memory: {mem})")
    stats = df.groupby(["path", "phase"], sort=False).agg({"wall": ["median", "min"], "cpu": "median"})
    for (label, phase), (med, low, cpu) in zip(stats.index, stats.to_numpy()):
        peak = "" if phase != label else "-" if peaks[label] is None else f"{peaks[label]:.1f}"
        print(f"{phase if phase == label else '  ' + phase:<34}{med:>12.1f}{low:>12.1f}{cpu:>11.1f}{peak:>10}")
    totals = df[df.phase == df.path].pivot(index="rep", columns="path")
    for label in ("CoDistill path", "CoDistill + small loss"):
        wall, cpu = ((totals[k][label] / totals[k]["GRPO path"]).median() for k in ("wall", "cpu"))
        mem = "" if peaks[label] is None else f", peak memory {peaks[label] / peaks['GRPO path']:.2f}x"
        print(
            f"ratio {label} / GRPO path (median of per-repeat ratios): wall time {wall:.2f}x, "
            f"process CPU time {cpu:.2f}x{mem}; target time <= 3x"
        )


if __name__ == "__main__":
    main()
