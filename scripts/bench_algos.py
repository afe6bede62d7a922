#!/usr/bin/env python
"""Benchmark: the CoDistill algorithm path vs verl's plain GRPO path on one realistic batch.

    python scripts/bench_algos.py                      # 512 x 4096, group size 8, CPU
    python scripts/bench_algos.py --device cuda        # on a GPU
    python scripts/bench_algos.py --batch 64 --seq-len 1024 --repeats 3

GRPO path (what verl runs for ``adv_estimator=grpo``): ``compute_grpo_outcome_advantage`` +
``compute_policy_loss_vanilla`` forward and backward.
CoDistill path: KD reward + small advantage + ``small/`` metrics (one call), large IS weights +
``large/`` metrics, large advantage, teacher loss forward and backward. The row "CoDistill + small
loss" adds the small model's vanilla loss, i.e. everything the two updates compute.

Time: wall-clock milliseconds, median (and min) over ``--repeats`` runs after ``--warmup`` runs,
synchronising the device around each phase. The three paths run interleaved within each repeat;
on a shared, loaded machine the min is the least disturbed figure, so the ratios are printed as the
median of per-repeat ratios, the ratio of medians and the ratio of mins. Memory: peak bytes allocated during the path above what
was allocated before it (inputs excluded). On CUDA: ``torch.cuda.max_memory_allocated`` minus the
allocation at the start. On CPU: the allocator's own allocation/free events recorded by
``torch.profiler`` (``profile_memory=True``), replayed in time order; that is the peak of live
tensor bytes requested from the CPU allocator in one extra run of each path.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Callable

import numpy as np
import torch

from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, compute_policy_loss_vanilla
from verl.workers.config import FSDPActorConfig
from verl_ext.codistill.advantage import compute_codistill_advantage_and_metrics
from verl_ext.codistill.importance import compute_large_advantage, compute_large_is_weights
from verl_ext.codistill.teacher_loss import codistill_teacher_policy_loss


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
    out = {k: v.to(device) for k, v in out.items()}
    out["uid"] = uid
    return out


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
            s["adv_s"], _, s["m_s"] = compute_codistill_advantage_and_metrics(
                b["rewards"], b["mask"], b["uid"], b["ls"], b["ll"]
            )

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

        phases = [
            ("kd reward + small adv + metrics", small_adv),
            ("IS weights + metrics", is_weights),
            ("large advantage", large_adv),
            ("teacher loss fwd+bwd", teacher_loss),
        ]
        if with_small_loss:
            phases.append(("small vanilla loss fwd+bwd", small_loss))
        return phases

    def run_once(self, phases) -> tuple[float, dict[str, float]]:
        """One run of a path: (total ms, {phase: ms})."""
        state: dict = {}
        per_phase = {}
        self.sync()
        start = time.perf_counter()
        for name, fn in phases:
            t0 = time.perf_counter()
            fn(state)
            self.sync()
            per_phase[name] = (time.perf_counter() - t0) * 1e3
        return (time.perf_counter() - start) * 1e3, per_phase

    def peak_bytes(self, phases) -> int:
        state: dict = {}
        if self.device.type == "cuda":
            self.sync()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _, fn in phases:
                fn(state)
            self.sync()
            return torch.cuda.max_memory_allocated() - base
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for _, fn in phases:
                fn(state)
        del state
        events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.typed[0] == _EventType.Allocation:
                events.append((node.start_time_ns, node.typed[1].alloc_size))
        live = peak = 0
        for _, size in sorted(events):
            live += size
            peak = max(peak, live)
        return peak


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
        f"{name}, torch {torch.__version__}, median of {args.repeats} (after {args.warmup} warm-up)"
    )
    mem_note = "cuda max_memory_allocated" if device.type == "cuda" else "profiler allocator events"
    print(f"{'phase':<34}{'median ms':>11}{'min ms':>10}{'peak MiB':>11}   (memory: {mem_note})")
    for label in paths:
        for phase, times in per_phase[label].items():
            print(f"  {phase:<32}{statistics.median(times):>11.1f}{min(times):>10.1f}")
        print(f"{label:<34}{statistics.median(totals[label]):>11.1f}{min(totals[label]):>10.1f}"
              f"{peaks[label] / 2**20:>11.1f}")
    base = totals["GRPO path"]
    for label in ("CoDistill path", "CoDistill + small loss"):
        ratios = [t / g for t, g in zip(totals[label], base)]
        print(
            f"ratio {label} / GRPO path: time {statistics.median(ratios):.2f}x (median of per-repeat ratios; "
            f"ratio of medians {statistics.median(totals[label]) / statistics.median(base):.2f}x, "
            f"ratio of mins {min(totals[label]) / min(base):.2f}x), "
            f"peak memory {peaks[label] / peaks['GRPO path']:.2f}x; target time <= 3x"
        )


if __name__ == "__main__":
    main()
