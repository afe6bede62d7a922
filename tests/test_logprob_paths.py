"""The memory-lean log-prob path (verl's fused kernel, ``actor_rollout_ref.model.use_fused_kernels=true``,
``fused_kernel_options.impl_backend=torch``: lm_head + log-softmax in chunks of 512 positions) against the
plain path (full-vocabulary logits, then log-softmax).

* ``test_fused_forward_and_gradients_under_fsdp2``: two gloo ranks, verl's own monkey patch and FSDP2
  wrapping of the tiny small model (lm_head untied, so sharded as a unit of its own). Without the
  recipe's hooks (``workers.install_fused_lm_head_hooks``) the fused forward stops on the sharded
  weight; with them its log-probs and every parameter's gradient (reduce-scattered over the two
  ranks' different data) equal a plain, unsharded reference computed here.
* ``test_lean_run_equals_plain_run``: the real entry point on the tiny pair (fp32), one step of
  exp=codistill, once plain and once lean: both models' log-probs, both advantages, the importance
  weights and both models' weights after the update agree.

Tolerance: fp32 throughout. The two paths compute the same quantities with different reduction orders
(512-position chunks, log-sum-exp per chunk, gradients summed chunk by chunk), so they differ by fp32
rounding only: relative error ~1e-7 per operation, a few hundred operations deep on the tiny models.
1e-5 absolute on log-probs (magnitude ~6), advantages, importance weights and gradients; relative 1e-5
on the losses and gradient norms. The weights after one Adam step (lr 1e-3) agree within 1e-6 except
on a few coordinates (under 0.1%, under 1e-4): Adam's first step is lr * g / (|g| + 1e-8), which turns
a rounding difference in a gradient of ~1e-8 into a visible one (measured: at most 1.2e-5, one
coordinate in ~8k); a wrong gradient moves most coordinates by ~lr.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.test_trainer_e2e import run_recipe

LEAN = [
    "actor_rollout_ref.model.use_fused_kernels=true",
    "actor_rollout_ref.model.fused_kernel_options.impl_backend=torch",
]
PLAIN = ["actor_rollout_ref.model.use_fused_kernels=false", "large_actor.model.use_fused_kernels=false"]


# ------------------------------------------------------------------------------------------ the configs


@pytest.mark.slow
@pytest.mark.parametrize("exp", ["codistill", "frozen_teacher", "grpo_large", "grpo_small", "kd_only", "no_is"])
@pytest.mark.parametrize("pair", ["qwen2.5-math-1.5b_7b", "llama-3.2-1b_3.1-8b"])
def test_gpu_pairs_use_the_lean_path_for_both_models(pair, exp):
    """Every GPU pair x experiment: the generating model's worker and the large model's worker (actor or
    frozen ``ref``) run the fused log-prob path with the torch backend."""
    from recipe.codistill_grpo.configuration import check_config, compose_config

    plan = check_config(compose_config(pair, exp, ["trainer.nnodes=2"]))
    blocks = {"actor_rollout_ref": plan.config.actor_rollout_ref}
    if plan.large is not None:
        blocks["large worker"] = plan.large
    for who, block in blocks.items():
        assert block.model.use_fused_kernels is True, f"{pair} x {exp}: {who}"
        assert block.model.fused_kernel_options.impl_backend == "torch", f"{pair} x {exp}: {who}"


# ------------------------------------------------------------------------------------------ FSDP2, two ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_batch(rank: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s token ids (2 x 40) and per-token weights (different on each rank)."""
    g = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(0, vocab, (2, 40), generator=g)
    adv = torch.randn(2, 40, generator=g, dtype=torch.float64).float()
    return ids, adv


def _plain_log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[t+1] | ids[:t+1]) from the full logits (the last position: the rolled-around first id, as
    verl's fused forward labels it)."""
    hidden = model.model(input_ids=ids).last_hidden_state
    logits = hidden @ model.lm_head.weight.T
    labels = torch.roll(ids, shifts=-1, dims=-1)
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _fsdp2_worker(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
    from transformers import AutoModelForCausalLM
    from verl.models.transformers.monkey_patch import apply_monkey_patch
    from verl.utils.fsdp_utils import apply_fsdp2

    from recipe.codistill_grpo.workers import install_fused_lm_head_hooks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result: dict = {}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
        assert not model.config.tie_word_embeddings, "the stand-in's lm_head must be untied to be sharded on its own"
        vocab = model.config.vocab_size
        apply_monkey_patch(model, use_fused_kernels=True, fused_kernels_backend="torch")
        mesh = init_device_mesh("cpu", (world,))
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        apply_fsdp2(model, {"mesh": mesh, "mp_policy": mp_policy, "reshard_after_forward": True}, {})
        result["head_is_own_unit"] = isinstance(model.lm_head, FSDPModule)
        ids, adv = _rank_batch(rank, vocab)

        try:  # verl's fused forward as it is: the sharded head weight
            with torch.no_grad():
                model(input_ids=ids, use_cache=False, return_dict=True)
            result["unhooked_error"] = None
        except Exception as e:  # noqa: BLE001 (the error is the result)
            result["unhooked_error"] = f"{type(e).__name__}: {e}"
        for m in model.modules():  # a failed forward may leave units unsharded
            if isinstance(m, FSDPModule):
                m.reshard()

        assert install_fused_lm_head_hooks(model)
        with torch.no_grad():
            result["no_grad_log_probs"] = (
                model(input_ids=ids, use_cache=False, return_dict=True).log_probs.detach().clone()
            )
        result["head_sharded_after_no_grad"] = type(model.lm_head.weight).__name__ == "DTensor"
        out = model(input_ids=ids, use_cache=False, return_dict=True)
        result["log_probs"] = out.log_probs.detach().clone()
        (-(out.log_probs * adv).sum()).backward()
        result["head_sharded_after_backward"] = type(model.lm_head.weight).__name__ == "DTensor"
        grads = {}
        for name, p in model.named_parameters():
            g = p.grad
            grads[name] = None if g is None else (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
        result["grads"] = grads
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_fused_forward_and_gradients_under_fsdp2(tiny_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    world = 2
    mp.start_processes(
        _fsdp2_worker,
        args=(world, _free_port(), tiny_pair["small"], str(tmp_path)),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]

    # independent reference: the unsharded model, plain forward, both ranks' data
    ref = AutoModelForCausalLM.from_pretrained(tiny_pair["small"], dtype=torch.float32, attn_implementation="sdpa")
    vocab = ref.config.vocab_size
    total = 0.0
    want_lp = []
    for rank in range(world):
        ids, adv = _rank_batch(rank, vocab)
        lp = _plain_log_probs(ref, ids)
        want_lp.append(lp.detach())
        total = total - (lp * adv).sum()
    # FSDP2 averages the ranks' gradients (reduce-scatter with a 1/world factor)
    (total / world).backward()
    want_grads = {n: p.grad for n, p in ref.named_parameters()}

    for rank, res in enumerate(results):
        assert res["head_is_own_unit"]
        assert res["unhooked_error"] is not None and "DTensor" in res["unhooked_error"], res["unhooked_error"]
        for key in ("no_grad_log_probs", "log_probs"):
            err = (res[key] - want_lp[rank]).abs().max().item()
            assert err < 1e-5, f"rank {rank} {key}: max abs error {err}"
        assert res["head_sharded_after_no_grad"] and res["head_sharded_after_backward"]
        assert set(res["grads"]) == set(want_grads)
        assert want_grads["lm_head.weight"].abs().max().item() > 1e-3, "degenerate check: no lm_head gradient"
        for name, want in want_grads.items():
            got = res["grads"][name]
            assert got is not None, f"rank {rank}: no gradient for {name}"
            err = (got - want).abs().max().item()
            assert err < 1e-5, f"rank {rank} {name}: max abs gradient error {err}"


# ------------------------------------------------------------------------------------------ the real trainer


def _run(run_dir: Path, extra: list[str]) -> None:
    """One CoDistill step of the Qwen pair on CPU (toy reward, dumping trainer), as the e2e tests run it.

    Both runs generate with the recipe's seeded ``hf`` rollout, which draws each request's samples from its own
    seed: the two runs then train on the same samples, which is what lets their log-probs, advantages and
    updates be compared. vLLM draws from one engine RNG in the order its scheduler meets the concurrent
    requests, so two vLLM runs sample different responses (the log-prob paths under test are the FSDP
    actors', the same with either rollout)."""
    run_recipe(run_dir, "codistill", 1, [*extra, "actor_rollout_ref.rollout.name=hf"])


@pytest.fixture(scope="module")
def lean_and_plain(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("logprob_paths")
    runs = {"plain": root / "plain", "lean": root / "lean"}
    _run(runs["plain"], PLAIN)
    _run(runs["lean"], LEAN)
    return runs


def _by_sequence(dump: dict) -> dict:
    """The dump's tensors with rows sorted by their token ids. The CPU rollout answers the k-th request of
    a prompt with the k-th sample; which batch row is the k-th request follows arrival order, so two runs
    can hold the same sequences of a group in different rows."""
    ids = dump["input_ids"]
    order = sorted(range(ids.shape[0]), key=lambda i: ids[i].tolist())
    return {k: v[order] for k, v in dump.items() if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == len(order)}


def _ckpt(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path / "model_world_size_1_rank_0.pt", weights_only=False)
    return {k: (v.to_local() if hasattr(v, "to_local") else v).detach().clone() for k, v in sd.items()}


@pytest.mark.slow
def test_lean_run_equals_plain_run(lean_and_plain, tiny_pair):
    from transformers import AutoModelForCausalLM

    lean_log = Path(str(lean_and_plain["lean"]) + ".console.log").read_text()
    plain_log = Path(str(lean_and_plain["plain"]) + ".console.log").read_text()
    # verl prints this once per engine that patched its model: the small actor and the large actor
    assert lean_log.count("Using Torch backend for fused kernels") >= 2, "the lean run did not use the fused path"
    assert "Using Torch backend for fused kernels" not in plain_log

    runs = ("plain", "lean")
    plain, lean = (
        _by_sequence(torch.load(lean_and_plain[k] / "dump" / "batch_step_1.pt", weights_only=False)) for k in runs
    )
    # the same rollout (same seed, same initial weights), up to the order of the rows within a group
    assert torch.equal(plain["input_ids"], lean["input_ids"])
    m = plain["response_mask"].bool()
    assert torch.equal(m, lean["response_mask"].bool())
    for key in (
        "old_log_probs",
        "large_old_log_probs",
        "advantages",
        "large_advantages",
        "large_is_weights",
    ):
        assert key in plain and key in lean, key
        err = (plain[key][m] - lean[key][m]).abs().max().item()
        assert err < 1e-5, f"{key}: lean vs plain max abs difference {err}"
    assert plain["advantages"][m].abs().max().item() > 1e-3, "degenerate check: all-zero advantages"

    # one update of each model: the same loss and gradient norm, and the same weights after the step
    rows = {k: json.loads((lean_and_plain[k] / "metrics.jsonl").read_text().splitlines()[0])["data"] for k in runs}
    for key in ("small/pg_loss", "large/pg_loss", "small/grad_norm", "large/grad_norm"):
        assert rows["lean"][key] == pytest.approx(rows["plain"][key], rel=1e-5, abs=1e-7), key
    for sub, model in (("actor", "small"), ("large_actor", "large")):
        a = _ckpt(lean_and_plain["plain"] / "checkpoints" / "global_step_1" / sub)
        b = _ckpt(lean_and_plain["lean"] / "checkpoints" / "global_step_1" / sub)
        start = AutoModelForCausalLM.from_pretrained(tiny_pair[model]).state_dict()
        assert set(a) == set(b)
        moved = max((a[k].float() - start[k].float()).abs().max().item() for k in a)
        assert moved > 1e-4, f"{sub}: the update did not move the weights ({moved})"
        diff = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in sorted(a)])
        # Adam's first step moves a coordinate by lr * g / (|g| + eps), eps 1e-8: where |g| is ~1e-8 an fp32
        # rounding difference in g (~1e-10) shows as up to ~1e-5 in the weight (measured: 1 coordinate in
        # ~8k per tensor, at most 1.2e-5). A wrong gradient moves most coordinates by ~lr = 1e-3.
        off = (diff > 1e-6).float().mean().item()
        assert off < 1e-3, f"{sub}: {off:.2%} of the weights differ by more than 1e-6 after one update"
        assert diff.max().item() < 1e-4, f"{sub}: weights after one update differ by {diff.max().item()}"
