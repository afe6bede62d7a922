"""Test-only pieces shared by the tests.

- ``DumpingTrainer``, loaded into real runs: a trainer subclass that dumps each step's batch. Selected
  with ``run.trainer_class=tests.support.DumpingTrainer`` (the Ray workers import it, so the test puts
  the repository on PYTHONPATH).
- ``make_batch``: the advantage / importance-weight tests' batch (groups, lengths, log-probs, rewards).
- ``group_stats`` and ``grpo_reference``: the slow obvious GRPO reference (python floats, one group
  at a time) every test compares verl's and the recipe's advantages with.
- ``run_evaluate``: ``scripts/evaluate.py`` on the tiny suite (in this process or as a subprocess) and its result.
- ``load_script``: a ``scripts/*.py`` file imported as a module (the scripts are not a package).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import ray
import torch

from recipe.codistill_grpo.trainer import LARGE_FIELDS, CoDistillTrainer

REPO = Path(__file__).resolve().parents[1]

DUMP_KEYS = (
    "prompts",
    "responses",
    "input_ids",
    "attention_mask",
    "position_ids",
    "response_mask",
    "token_level_rewards",
    "token_level_scores",
    "old_log_probs",
    "rollout_log_probs",
    "advantages",
    *LARGE_FIELDS,
)


class DumpingTrainer(CoDistillTrainer):
    """Writes ``<run.dir>/dump/batch_step_N.pt`` (the step's tensors once every advantage is in) and, with the
    ``hf`` rollout, the rollout server's weights that generated the step (``rollout_weights_step_N.pt``)."""

    def _update_actor(self, batch):
        # the recipe's _update_actor writes every advantage and weight into ``batch`` (in place) before the
        # updates; the rollout server still holds the weights that generated the step (verl syncs them later)
        output = super()._update_actor(batch)
        self._dump(batch)
        return output

    def _dump(self, batch):
        folder = os.path.join(self.config.run.dir, "dump")
        os.makedirs(folder, exist_ok=True)
        record = {k: batch.batch[k].detach().cpu().clone() for k in DUMP_KEYS if k in batch.batch.keys()}
        record["uid"] = list(batch.non_tensor_batch["uid"])
        record["global_steps"] = self.global_steps
        record["raw_prompt"] = [str(x) for x in batch.non_tensor_batch.get("raw_prompt", [])]
        torch.save(record, os.path.join(folder, f"batch_step_{self.global_steps}.pt"))
        if self.config.actor_rollout_ref.rollout.name != "hf":
            # vLLM holds its weights in the engine's worker process, out of Ray's reach: the tests compare
            # its log-probs (``rollout_log_probs``) with a plain HF forward of the actor's checkpoint instead
            return
        server = ray.get_actor("codistill_hf_server_0_0")
        weights = ray.get(
            server.__ray_call__.remote(lambda srv: {k: v.detach().clone() for k, v in srv.model.state_dict().items()})
        )
        torch.save(weights, os.path.join(folder, f"rollout_weights_step_{self.global_steps}.pt"))


# ------------------------------------------------------------------------------------------ batches


def make_batch(
    seed: int = 0, T: int = 7, dtype=torch.float32, ls_scale: float = 5.0, ll_noise: float = 2.0, extreme_ls=True
):
    """A batch of 15 responses: groups of sizes 4,1,3,2,5 (``uid-0`` .. ``uid-4``; ``uid-2``, rows 5..7, has
    all-equal rewards, ``uid-1`` is a singleton), lengths incl. 0 (row 0), 1 (row 5) and ``T`` (row 7),
    tokens with ``|ll - ls| > 30`` (rows 1, 2, 8) and, with ``extreme_ls``, ``ls[3, T-1] = -60``.

    ``ls = -U(0,1) * ls_scale``, ``ll = ls + N(0,1) * ll_noise``; a 0/1 outcome reward on each response's
    last valid token.

    Returns:
        rewards, mask: ``(15, T)`` in ``dtype`` (mask: 1 on valid tokens); labels: ``(15,)`` object array;
        ls, ll: ``(15, T)`` in ``dtype``.
    """
    g = torch.Generator().manual_seed(seed)
    sizes = [4, 1, 3, 2, 5]
    labels = [f"uid-{k}" for k, s in enumerate(sizes) for _ in range(s)]
    n = len(labels)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    lengths[0], lengths[5], lengths[7] = 0, 1, T  # empty, length-1, full
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(dtype)
    ls = -torch.rand(n, T, generator=g) * ls_scale
    ll = ls + torch.randn(n, T, generator=g) * ll_noise
    ll[1, 0], ll[2, 1], ll[8, 2] = ls[1, 0] + 35.0, ls[2, 1] - 40.0, ls[8, 2] + 31.0
    if extreme_ls:
        ls[3, T - 1] = -60.0  # extreme, possibly masked
    rewards_seq = torch.randint(0, 2, (n,), generator=g).float()
    rewards_seq[5:8] = 1.0  # group uid-2 (rows 5..7): all equal rewards
    rewards = torch.zeros(n, T)
    rewards[torch.arange(n), (lengths - 1).clamp_min(0)] = rewards_seq
    return rewards.to(dtype), mask, np.array(labels, dtype=object), ls.to(dtype), ll.to(dtype)


# ------------------------------------------------------------------------------------------ GRPO reference


def group_stats(values: Sequence[float], labels: Sequence[Hashable]) -> dict[Hashable, tuple[float, float]]:
    """``{label: (mean, std)}`` of ``values`` by group, verl's GRPO convention, in python floats.

    ``mean = sum(v) / n``, ``std = sqrt(sum((v - mean)^2) / (n - 1))`` (unbiased); a group of one
    response has mean 0 and std 1 (verl's ``compute_grpo_outcome_advantage``).
    """
    groups: dict[Hashable, list[float]] = {}
    for value, label in zip(values, labels):
        groups.setdefault(label, []).append(float(value))
    stats = {}
    for label, members in groups.items():
        if len(members) == 1:
            stats[label] = (0.0, 1.0)
        else:
            mean = sum(members) / len(members)
            stats[label] = (mean, math.sqrt(sum((v - mean) ** 2 for v in members) / (len(members) - 1)))
    return stats


def grpo_reference(
    scores: Sequence[float], labels: Sequence[Hashable], eps: float = 1e-6, norm: bool = True
) -> list[float]:
    """verl's GRPO outcome advantage, one response at a time: ``A[i] = (r_i - mean_g r) / (std_g r + eps)``
    (``r_i - mean_g r`` without ``norm``), the statistics of ``group_stats``."""
    stats = group_stats(scores, labels)
    out = []
    for score, label in zip(scores, labels):
        mean, std = stats[label]
        out.append((float(score) - mean) / (std + eps) if norm else float(score) - mean)
    return out


# ------------------------------------------------------------------------------------------ evaluate.py


def run_evaluate(model, name: str, suite_dir, out, max_tokens: int, limit: int, role: str, *extra, main=None) -> dict:
    """``scripts/evaluate.py`` of ``model`` as ``name`` on ``suite_dir``'s suite ``tiny`` (its first ``limit`` items,
    one reward worker, labelled pair ``tiny``, method ``base``, ``role``; ``extra``: more arguments), asserted to
    succeed: with ``main`` (the script's ``main``) in this process, else as a subprocess with vLLM's small CPU
    settings. Returns the result JSON ``<out>/<name>/tiny.json``."""
    argv = ["--checkpoint", model, "--name", name, "--data-dir", str(suite_dir), "--suites", "tiny", "--out", str(out)]
    argv += ["--max-tokens", str(max_tokens), "--limit", str(limit), "--reward-workers", "1", "--no-progress"]
    argv += ["--pair", "tiny", "--method", "base", "--role", role, *extra]
    if main is not None:
        assert main(argv) == 0
    else:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        script = [sys.executable, str(REPO / "scripts" / "evaluate.py")]
        proc = subprocess.run(script + argv, capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((Path(out) / name / "tiny.json").read_text())


def load_script(name: str):
    """``scripts/<name>.py`` as the module ``<name>_script`` (registered in ``sys.modules``: dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
