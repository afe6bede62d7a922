"""The recipe's actor worker: verl's ``ActorRolloutRefWorker`` whose training engine skips the
sequences that cannot change the weights (``algorithm.codistill.large.skip_zero_grad``).

A sequence whose loss term is identically zero (advantage 0 on every valid token, or importance
weight 0 on every valid token; no entropy bonus, no KL loss: the start-up checks refuse the skip
otherwise) gives exactly zero gradient, yet the engine runs its forward and backward. The trainer
marks such rows with a boolean ``codistill_skip`` field; here, after verl has cut the batch into
its mini-batches (so mini-batch membership and the number of optimizer steps are unchanged), each
mini-batch drops its marked rows before the forward/backward, and the loss is normalised by the
mini-batch's full token count (the skipped tokens still count, as in verl's token-mean).

On several data-parallel ranks every rank must run the same number of micro-batches (FSDP's
collectives): without dynamic batch sizes each rank keeps ``k`` micro-batches, ``k`` the largest
number any rank needs, filling up with marked rows (their loss term is zero); with dynamic batch
sizes verl's own micro-batching already aligns the counts.
"""

from __future__ import annotations

import torch
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

SKIP_FIELD = "codistill_skip"
FULL_TOKENS = "codistill_batch_num_tokens"


def _lm_head_fsdp_module(module: torch.nn.Module):
    """The causal LM's ``lm_head`` when FSDP2 sharded it as a unit of its own, else ``None``.

    verl's ``apply_fsdp2`` wraps ``lm_head`` separately when the model does not tie it to the input
    embedding (``tie_word_embeddings=false``: Qwen2.5-Math-7B, Llama-3.1-8B, the CPU stand-ins);
    a tied head belongs to the root unit, which FSDP2 unshards around the root's forward anyway.
    """
    from torch.distributed.fsdp import FSDPModule

    get_head = getattr(module, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else getattr(module, "lm_head", None)
    return head if isinstance(head, FSDPModule) and isinstance(module, FSDPModule) else None


def install_fused_lm_head_hooks(module: torch.nn.Module) -> bool:
    """Let verl's fused log-prob forward use an FSDP2-sharded ``lm_head`` weight.

    verl's fused forward (``verl/models/transformers/dense_common.py``, ``forward_with_torch_backend``)
    reads ``self.lm_head.weight`` inside the causal LM's forward and never calls ``lm_head``'s own
    forward, so FSDP2 never all-gathers that unit: the weight is still a sharded ``DTensor`` and the
    chunked matmul stops with ``aten.mm.default got mixed torch.Tensor and DTensor``. Two hooks on
    the root module close the gap with FSDP2's public API:

    - forward pre-hook (after FSDP's own): ``lm_head.unshard()``, the all-gather its forward would do
      (in the mixed-precision ``param_dtype``), so the weight is a plain full tensor;
    - forward post-hook: without autograd (the log-prob passes) ``lm_head.reshard()`` at once. With
      autograd the full weight is saved for the backward; FSDP2's end-of-backward callback runs the
      post-backward of every unit that did not get one from autograd, which reduce-scatters the
      ``lm_head`` gradient into its shard and reshards it (``reshard_after_backward``).

    Returns whether hooks were installed (only for an FSDP2 root whose ``lm_head`` is its own unit).
    """
    head = _lm_head_fsdp_module(module)
    if head is None:
        return False

    def unshard_head(_module, _args, _kwargs):
        head.unshard()

    def reshard_head(_module, _args, _kwargs, output):
        if not torch.is_grad_enabled():
            head.reshard()
        return output

    module.register_forward_pre_hook(unshard_head, with_kwargs=True)
    module.register_forward_hook(reshard_head, with_kwargs=True)
    return True


class FusedLmHeadMixin:
    """A verl ``TrainingWorker`` whose FSDP2 model gets ``install_fused_lm_head_hooks`` once its engine is
    built, when ``model.use_fused_kernels`` is on (otherwise nothing changes)."""

    def reset(self):
        super().reset()
        module = getattr(self.engine, "module", None)
        if not self.engine_config.use_fused_kernels or module is None or module is getattr(self, "_hooked", None):
            return
        if install_fused_lm_head_hooks(module):
            self._hooked = module


class _FullTokenCountLoss:
    """Calls the loss with ``batch_num_tokens`` = the mini-batch's count before rows were skipped."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn

    def __call__(self, **kwargs):
        data = kwargs.get("data")
        if data is not None:
            full = tu.get_non_tensor_data(data=data, key=FULL_TOKENS, default=None)
            if full is not None:
                tu.assign_non_tensor(data, batch_num_tokens=full)
        return self.loss_fn(**kwargs)


class FusedLmHeadTrainingWorker(FusedLmHeadMixin, TrainingWorker):
    """verl's training worker with the fused-log-prob hooks (the frozen teacher's ``ref`` engine)."""


class SkipZeroGradTrainingWorker(FusedLmHeadMixin, TrainingWorker):
    """verl's training worker; a mini-batch with a ``codistill_skip`` field drops its marked rows."""

    def set_loss_fn(self, loss_fn):
        super().set_loss_fn(_FullTokenCountLoss(loss_fn))

    def train_batch(self, data):
        if SKIP_FIELD not in data.keys():
            return super().train_batch(data)
        skip = tu.pop(data, SKIP_FIELD).bool()
        group = self.engine.get_data_parallel_group()
        full = data["loss_mask"].sum().to(torch.float64).reshape(1)
        torch.distributed.all_reduce(full, group=group)
        keep = torch.nonzero(~skip).flatten()
        skipped = torch.nonzero(skip).flatten()
        use_dynamic = tu.get_non_tensor_data(
            data=data, key="use_dynamic_bsz", default=self.engine_config.use_dynamic_bsz
        )
        if use_dynamic:
            rows = keep if keep.numel() else skipped[:1]
        else:
            micro = int(
                tu.get_non_tensor_data(
                    data=data, key="micro_batch_size_per_gpu", default=self.engine_config.micro_batch_size_per_gpu
                )
            )
            need = torch.tensor([max(1, -(-keep.numel() // micro))], dtype=torch.int64)
            torch.distributed.all_reduce(need, op=torch.distributed.ReduceOp.MAX, group=group)
            rows = torch.cat([keep, skipped[: int(need) * micro - keep.numel()]]).sort().values
        selected = tu.index_select_tensor_dict(data, rows)
        tu.assign_non_tensor(selected, **{FULL_TOKENS: int(full.item())})
        return super().train_batch(selected)


class CoDistillActorWorker(ActorRolloutRefWorker):
    """verl's actor/rollout/ref worker with the skipping training engine (small and large actors) and
    the fused-log-prob hooks on both of its engines (actor and ``ref``)."""

    actor_worker_cls = SkipZeroGradTrainingWorker
    ref_worker_cls = FusedLmHeadTrainingWorker
