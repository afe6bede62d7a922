"""Test-only pieces loaded into real runs: a trainer subclass that dumps each step's batch.

Selected with ``run.trainer_class=tests.support.DumpingTrainer`` (the Ray workers import it, so the
test puts the repository on PYTHONPATH).
"""

from __future__ import annotations

import os

import ray
import torch

from recipe.codistill_grpo.trainer import LARGE_FIELDS, CoDistillTrainer

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
