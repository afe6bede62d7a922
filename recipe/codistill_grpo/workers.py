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


class SkipZeroGradTrainingWorker(TrainingWorker):
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
    """verl's actor/rollout/ref worker with the skipping training engine (small and large actors)."""

    actor_worker_cls = SkipZeroGradTrainingWorker
