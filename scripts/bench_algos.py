#!/usr/bin/env python
"""Benchmark: the CoDistill algorithm path vs verl's plain GRPO path on one realistic batch.

    python scripts/bench_algos.py                      # 512 x 4096, group size 8, CPU
    python scripts/bench_algos.py --device cuda        # on a GPU
    python scripts/bench_algos.py --threads 1          # steadier on a busy CPU machine
    python scripts/bench_algos.py --batch 64 --seq-len 1024 --repeats 3

Details (formats, equations, options): docs/benchmarks.md, section scripts/bench_algos.py.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

import numpy as np
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, compute_policy_loss_vanilla
from verl.workers.config import FSDPActorConfig

from verl_ext.codistill.advantage import add_kd_advantage, compute_codistill_advantage_from_config
from verl_ext.codistill.config import CoDistillConfig
from verl_ext.codistill.importance import compute_large_advantage, compute_large_is_weights
from verl_ext.codistill.teacher_loss import codistill_teacher_policy_loss

CODISTILL = CoDistillConfig()


def make_batch(bs: int, seq_len: int, group: int, device: torch.device, seed: int) -> dict:
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


class Runner:
    """Runs the two paths phase by phase; each phase returns after its outputs are materialised."""

    def __init__(self, batch: dict, device: torch.device):
        self.b = batch
        self.device = device
        self.cfg = FSDPActorConfig(strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=1)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _leaf(self, key: str) -> torch.Tensor:
        return self.b[key].detach().clone().requires_grad_(True)

    def grpo_phases(self) -> list[tuple[str, Callable[[dict], None]]]:
        b = self.b

        def advantage(s):
            s["adv"], _ = compute_grpo_outcome_advantage(b["rewards"], b["mask"], b["uid"])

        def loss(s):
            lp = self._leaf("small_new")
            pg, _ = compute_policy_loss_vanilla(b["ls"], lp, s["adv"], b["mask"].bool(), "token-mean", self.cfg)
            pg.backward()

        return [("verl grpo advantage", advantage), ("verl vanilla loss fwd+bwd", loss)]

    def codistill_phases(self, with_small_loss: bool = False) -> list[tuple[str, Callable[[dict], None]]]:
        b = self.b

        def small_adv(s):
            # what a step runs: the registered estimator in verl's pass, then the KD part
            outcome, _ = compute_codistill_advantage_from_config(b["rewards"], b["mask"], b["uid"], config=CODISTILL)
            s["adv_s"], s["m_s"] = add_kd_advantage(outcome, b["mask"], b["uid"], b["ls"], b["ll"])

        def is_weights(s):
            s["w"], s["m_l"] = compute_large_is_weights(b["ls"], b["ll"], b["mask"])

        def large_adv(s):
            s["adv_l"], _ = compute_large_advantage(b["rewards"], b["mask"], b["uid"], b["ls"], b["ll"])

        def teacher_loss(s):
            lp = self._leaf("large_new")
            loss, _ = codistill_teacher_policy_loss(
                b["ll"], lp, s["adv_l"], b["mask"].bool(), "token-mean", self.cfg, s["w"]
            )
            loss.backward()

        def small_loss(s):
            lp = self._leaf("small_new")
            pg, _ = compute_policy_loss_vanilla(b["ls"], lp, s["adv_s"], b["mask"].bool(), "token-mean", self.cfg)
            pg.backward()

        phases = [("kd reward + small adv + metrics", small_adv), ("IS weights + metrics", is_weights)]
        phases += [("large advantage", large_adv), ("teacher loss fwd+bwd", teacher_loss)]
        return phases + ([("small vanilla loss fwd+bwd", small_loss)] if with_small_loss else [])

    def run_once(self, phases) -> tuple[tuple[float, float], dict[str, tuple[float, float]]]:
        """One run of a path: ((wall ms, process CPU ms), {phase: (wall ms, process CPU ms)})."""
        state: dict = {}
        per_phase = {}
        self.sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        for name, fn in phases:
            t0, c0 = time.perf_counter(), time.process_time()
            fn(state)
            self.sync()
            per_phase[name] = ((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3)
        return ((time.perf_counter() - start) * 1e3, (time.process_time() - cpu_start) * 1e3), per_phase

    def peak_bytes(self, phases) -> int | None:
        """Peak bytes allocated during one run of the path above the allocation before it (CUDA only: None on CPU)."""
        if self.device.type != "cuda":
            return None
        state: dict = {}
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _, fn in phases:
            fn(state)
        self.sync()
        return torch.cuda.max_memory_allocated() - base


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
    runner = Runner(make_batch(args.batch, args.seq_len, args.group_size, device, args.seed), device)

    paths = {
        "GRPO path": runner.grpo_phases(),
        "CoDistill path": runner.codistill_phases(),
        "CoDistill + small loss": runner.codistill_phases(with_small_loss=True),
    }
    # the paths run interleaved within each repeat, so load from other processes hits them alike
    totals = {label: [] for label in paths}
    per_phase = {label: {name: [] for name, _ in phases} for label, phases in paths.items()}
    for rep in range(args.warmup + args.repeats):
        for label, phases in paths.items():
            total, phase_ms = runner.run_once(phases)
            if rep >= args.warmup:
                totals[label].append(total)
                for name, ms in phase_ms.items():
                    per_phase[label][name].append(ms)
    peaks = {label: runner.peak_bytes(phases) for label, phases in paths.items()}

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    tokens = int(runner.b["mask"].sum())
    print(
        f"bench_algos: {args.batch} responses x {args.seq_len} tokens ({tokens} valid), group {args.group_size}, "
        f"{name}, torch {torch.__version__}, {args.repeats} repeats (after {args.warmup} warm-up)"
    )
    mem_note = "cuda max_memory_allocated" if device.type == "cuda" else "none on CPU"
    print(
        f"{'phase':<34}{'wall med ms':>12}{'wall min ms':>12}{'cpu med ms':>11}{'peak MiB':>10}   (memory: {mem_note})"
    )

    def row(label: str, runs: list[tuple[float, float]], peak: str = "") -> str:
        wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
        return f"{label:<34}{statistics.median(wall):>12.1f}{min(wall):>12.1f}{statistics.median(cpu):>11.1f}{peak:>10}"

    for label in paths:
        for phase, runs in per_phase[label].items():
            print(row("  " + phase, runs))
        print(row(label, totals[label], "-" if peaks[label] is None else f"{peaks[label] / 2**20:.1f}"))
    base = totals["GRPO path"]
    for label in ("CoDistill path", "CoDistill + small loss"):
        wall = statistics.median(t[0] / g[0] for t, g in zip(totals[label], base))
        cpu = statistics.median(t[1] / g[1] for t, g in zip(totals[label], base))
        mem = "" if peaks[label] is None else f", peak memory {peaks[label] / peaks['GRPO path']:.2f}x"
        print(
            f"ratio {label} / GRPO path (median of per-repeat ratios): wall time {wall:.2f}x, "
            f"process CPU time {cpu:.2f}x{mem}; target time <= 3x"
        )


if __name__ == "__main__":
    main()
