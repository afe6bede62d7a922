"""CoDistill-GRPO trainer: verl's v0 ``RayPPOTrainer`` plus a second, trainable large-model actor.

One step and where it happens in verl's ``fit`` (not copied; these are its per-phase methods):

    generate (small model, G per prompt), reward        verl
    _compute_old_log_prob: small ls, then large ll      + the large group's forward on the same ids
    compute_advantage (module-level, in fit)            verl calls the registered `codistill`
                                                        estimator: the outcome part A_R * m
    _update_actor:                                      + the KD part beta*K*m (both log-probs),
        small update (verl's loss on A_s)                 the large IS weights w and advantage A_l,
        large update (codistill_teacher loss; w, A_l)     then both updates
    _save_checkpoint                                    + global_step_N/large_actor before the tracker
    update_weights (small actor -> rollout)             verl

The small side keeps verl's batch fields; the large side has its own (``large_old_log_probs``,
``large_advantages``, ``large_is_weights``, ``large_response_mask``) which only the large worker's
loss maps onto verl's names. Config building and every start-up check: ``configuration.py``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from functools import partial
from typing import Any

import numpy as np
import ray
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from verl import DataProto
from verl.single_controller.ray import RayClassWithInitArgs
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.utils import Role
from verl.utils import tensordict_utils as tu
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path
from verl.utils.profiler import marked_timer
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

from recipe.codistill_grpo.configuration import skip_small_zero_grad, val_teacher
from recipe.codistill_grpo.run_folder import STEP_ROW_FILE, hold_trainer_lock
from recipe.codistill_grpo.workers import SKIP_FIELD, CoDistillActorWorker
from verl_ext.codistill.config import CoDistillConfig
from verl_ext.codistill.zero_grad import zero_gradient_rows

LARGE_CKPT_DIR = "large_actor"
LARGE_META_FILE = "codistill_large_meta.json"
SMALL_ONLY_FIELDS = (
    "old_log_probs",
    "advantages",
    "returns",
    "rollout_is_weights",
    "ref_log_prob",
    "rollout_log_probs",
)
LARGE_FIELDS = ("large_old_log_probs", "large_advantages", "large_is_weights", "large_response_mask")


class CoDistillRunError(RuntimeError):
    """A run that must stop, said in one line (the entry point prints it without a traceback)."""


class CoDistillRunComplete(CoDistillRunError):
    """The run's checkpoint is already its last step: nothing to train (the entry point exits 0)."""


def model_signature(path: str) -> dict[str, Any]:
    """What identifies a model for the resume check: its architecture and sizes from ``config.json``."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    return {k: getattr(cfg, k, None) for k in keys}


def large_actor_loss(config, model_output, data, dp_group=None):
    """verl's ``ppo_loss`` on the large model's own fields (runs inside the large worker).

    ``large_old_log_probs -> old_log_probs``, ``large_advantages -> advantages``,
    ``large_response_mask -> response_mask``, ``large_is_weights -> rollout_is_weights`` on a
    shallow copy of the micro-batch; ``config.policy_loss.loss_mode`` is ``codistill_teacher``.
    """
    from verl.workers.utils.losses import ppo_loss

    data = data.copy()
    data["old_log_probs"] = data["large_old_log_probs"]
    data["advantages"] = data["large_advantages"]
    data["response_mask"] = data["large_response_mask"]
    data["rollout_is_weights"] = data["large_is_weights"]
    return ppo_loss(config, model_output, data, dp_group)


def _log_probs(worker_group, batch: DataProto, ref: bool = False) -> torch.Tensor:
    """Log-probs (B, T) of ``batch``'s responses from an actor (or frozen ``ref``) worker group, no entropy."""
    batch_td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(batch_td, calculate_entropy=False, compute_loss=False)
    output = worker_group.compute_ref_log_prob(batch_td) if ref else worker_group.compute_log_prob(batch_td)
    return no_padding_2_padding(tu.get(output, "log_probs"), batch_td).float()


def frozen_optimizer_state(worker: Any) -> str:
    """``"none"``/``"present"``: the optimizer of a frozen large worker's ``ref`` engine; otherwise
    which attribute verl's worker no longer has (runs inside the worker)."""
    obj, path = worker, "worker"
    for name in ("ref", "engine"):
        if not hasattr(obj, name) or getattr(obj, name) is None:
            return f"{path} has no attribute {name!r}"
        obj, path = getattr(obj, name), f"{path}.{name}"
    if not hasattr(obj, "optimizer"):
        return f"{path} has no attribute 'optimizer'"
    return "none" if obj.optimizer is None else "present"


def _count_nonfinite(values: torch.Tensor, mask: torch.Tensor) -> int:
    return int((~torch.isfinite(values) & mask.bool()).sum())


class CoDistillTrainer(RayPPOTrainer):
    """verl's v0 trainer plus the large model's worker group; ``fit`` is verl's."""

    def __init__(self, *args, large_config: DictConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cd = CoDistillConfig.from_dict(self.config.algorithm.codistill)
        self.large_config = large_config
        self.large_wg = None
        # grpo_small with run.val_teacher: the large model is loaded frozen for the held-out KL only
        self._val_teacher = val_teacher(self.config, self.cd)
        self._large_role = "actor" if self.cd.large.enable and self.cd.large.train else "ref"
        self._timing: dict[str, float] = {}
        self._metrics: dict[str, float] = {}
        # the generating model's verl metrics (actor/*) go under its own prefix, like the large model's
        self._actor_prefix = f"{self.config.exp.generator}/"
        # sequences with an identically zero loss term skip the forward/backward (workers.py)
        self._skip_large = self.cd.large.enable and self.cd.large.train and self.cd.large.skip_zero_grad
        self._skip_small = skip_small_zero_grad(self.cd, self.config.actor_rollout_ref.actor)

    # ------------------------------------------------------------------ workers
    def init_workers(self):
        run_dir = OmegaConf.select(self.config, "run.dir")
        if run_dir:
            # held while this process lives: a new launcher into the folder waits for it (run_folder.open_run)
            self._trainer_lock = hold_trainer_lock(run_dir)
        super().init_workers()
        if self.cd.large.enable or self._val_teacher:
            self._init_large_workers()

    def _init_large_workers(self):
        from verl.utils.config import omega_conf_to_dataclass

        if self.cd.large.enable and self.cd.large.placement == "separate":
            role_for_pool = Role.Actor
        else:
            role_for_pool = (
                Role.ActorRolloutRef if Role.ActorRolloutRef in self.role_worker_mapping else Role.ActorRollout
            )
        pool = self.resource_pool_manager.get_resource_pool(role_for_pool)
        print(
            f"codistill: large model worker group (role {self._large_role}) on resource pool "
            f"'{self.resource_pool_manager.mapping[role_for_pool]}' ({self.cd.large.placement})"
        )
        cls = RayClassWithInitArgs(
            cls=ray.remote(CoDistillActorWorker), config=self.large_config, role=self._large_role
        )
        self.large_wg = self.ray_worker_group_cls(
            resource_pool=pool, ray_cls_with_init=cls, name_prefix="codistill_large", device_name=self.device_name
        )
        self.large_wg.init_model()
        if self._large_role == "actor":
            # init_model installed verl's default loss; replace it with the large model's field mapping
            self.large_wg.set_loss_fn(
                partial(large_actor_loss, config=omega_conf_to_dataclass(self.large_config.actor))
            )
        else:
            self._check_no_large_optimizer()

    def _check_no_large_optimizer(self) -> None:
        """Frozen teacher: verl's ``ref`` role builds a forward-only engine; verify no optimizer exists.

        Reads ``worker.ref.engine.optimizer`` on every rank; if verl no longer has one of these
        attributes the check cannot be made and the run stops (it never passes by default).
        """
        states = ray.get([w.__ray_call__.remote(frozen_optimizer_state) for w in self.large_wg.workers])
        unknown = [state for state in states if state not in ("none", "present")]
        if unknown:
            raise CoDistillRunError(
                f"cannot verify that the frozen large model has no optimizer: {unknown[0]} "
                "(verl's worker layout changed; the check reads worker.ref.engine.optimizer)"
            )
        if "present" in states:
            raise CoDistillRunError("the frozen large model (large.train=false) has an optimizer; expected none")
        print(f"codistill: frozen large model loaded forward-only on {len(states)} rank(s), optimizer state: none")

    # ------------------------------------------------------------------ log-probs
    def _compute_old_log_prob(self, batch: DataProto):
        self._timing, self._metrics = {}, {}
        old_log_prob, mfu = super()._compute_old_log_prob(batch)
        mask = batch.batch["response_mask"]
        checks = [("small", old_log_prob.batch["old_log_probs"])]
        if self.cd.large.enable:
            with marked_timer("large_log_prob", self._timing):
                large_lp = self._compute_large_log_prob(batch)
            old_log_prob.batch["large_old_log_probs"] = large_lp
            checks.append(("large", large_lp))
        for who, values in checks:
            bad = _count_nonfinite(values, mask)
            if bad:
                raise CoDistillRunError(
                    f"step {self.global_steps}: {bad} non-finite log-probs from the {who} model (of {int(mask.sum())} "
                    "response tokens); stopped before any update, nothing after the last checkpoint was written"
                )
        if "rollout_log_probs" in batch.batch.keys():
            from verl_ext.codistill.metrics import rollout_mismatch_metrics

            self._metrics.update(
                rollout_mismatch_metrics(batch.batch["rollout_log_probs"], old_log_prob.batch["old_log_probs"], mask)
            )
        return old_log_prob, mfu

    def _compute_large_log_prob(self, batch: DataProto) -> torch.Tensor:
        """``ll[i, t] = log pi_l_old(y_i,t | x, y_i,<t)`` on the small model's token ids, (B*G, T)."""
        return _log_probs(self.large_wg, batch, ref=self._large_role == "ref")

    # ------------------------------------------------------------------ validation
    def _validate(self, merged: bool = False):
        """verl's validation, plus ``val/kd_kl`` where the small model generates and the large one is loaded.

        ``val/kd_kl = sum_{i,t} (ls - ll) m / sum_{i,t} m`` on the validation responses of the small
        model (the generator's own samples, verl's ``val_kwargs``), log-probs at the rollout
        temperature: the per-token reverse KL estimate of the small model to the large one on fixed
        held-out prompts, the distillation curve without the step-to-step noise of
        ``small/kd_reward_mean``. One more forward of each model over the validation responses.
        """
        if self.large_wg is None or self.config.exp.generator != "small" or merged:
            return super()._validate(merged)
        manager = self.async_rollout_manager
        generate, outputs = manager.generate_sequences, []

        def capture(batch):
            out = generate(batch)
            outputs.append(out)
            return out

        manager.generate_sequences = capture  # an instance attribute over the method, removed below
        try:
            metrics = super()._validate(merged)
        finally:
            del manager.generate_sequences
        if outputs:
            metrics["val/kd_kl"] = self._held_out_kd_kl(DataProto.concat(outputs))
        return metrics

    def _held_out_kd_kl(self, responses: DataProto) -> float:
        from verl.protocol import pad_dataproto_to_divisor
        from verl.trainer.ppo.ray_trainer import compute_response_mask

        keys = ("prompts", "responses", "input_ids", "attention_mask", "position_ids")
        batch = DataProto.from_dict(tensors={k: responses.batch[k] for k in keys})
        batch.meta_info["temperature"] = self.config.actor_rollout_ref.rollout.temperature
        # each worker group splits the batch over its ranks, then into log-prob micro-batches
        small_lp = self.config.actor_rollout_ref.rollout
        large_lp = self.large_config.rollout if self._large_role == "actor" else self.large_config.ref
        divisor = math.lcm(*(
            wg.world_size
            * (1 if cfg.get("log_prob_use_dynamic_bsz") else int(cfg.log_prob_micro_batch_size_per_gpu or 1))
            for wg, cfg in ((self.actor_rollout_wg, small_lp), (self.large_wg, large_lp))
        ))  # fmt: skip
        batch, pad = pad_dataproto_to_divisor(batch, divisor)
        batch.batch["response_mask"] = compute_response_mask(batch)
        mask = batch.batch["response_mask"][: len(batch) - pad].float()
        ls = _log_probs(self.actor_rollout_wg, batch)[: len(batch) - pad]
        ll = self._compute_large_log_prob(batch)[: len(batch) - pad]
        return float(((ls - ll) * mask).sum() / mask.sum().clamp(min=1.0))

    # ------------------------------------------------------------------ advantages + updates
    def _codistill_advantages(self, batch: DataProto) -> dict[str, float]:
        """Adds the KD part to verl's outcome advantage; the large model's weights and advantage, in place.

        ``advantages``/``returns`` (B*G, T) become ``A_s = A_R * m + beta * K * m``; with a trained
        large model ``large_is_weights``, ``large_advantages`` and ``large_response_mask`` (B*G, T) are added.
        """
        from verl_ext.codistill.advantage import add_kd_advantage
        from verl_ext.codistill.config import kd_coef_at
        from verl_ext.codistill.importance import compute_large_advantage, compute_large_is_weights

        cd = self.cd
        norm = bool(self.config.algorithm.get("norm_adv_by_std_in_grpo", True))
        mask = batch.batch["response_mask"]
        index = batch.non_tensor_batch["uid"]
        ls = batch.batch["old_log_probs"]
        ll = batch.batch["large_old_log_probs"]
        beta = kd_coef_at(self.global_steps - 1, cd.kd)

        adv, metrics = add_kd_advantage(
            batch.batch["advantages"], mask, index, ls, ll,
            kd_coef=beta, kd_credit=cd.kd.credit, kd_clamp=cd.kd.clamp,
        )  # fmt: skip
        batch.batch["advantages"] = adv
        batch.batch["returns"] = adv
        metrics["small/kd_coef"] = float(beta)

        # the sampler: the small actor's recomputed log-probs, or the rollout engine's own
        sampler = batch.batch["rollout_log_probs"] if cd.is_.behavior == "rollout" else ls
        # IS weights are computed for the frozen teacher too, for their diagnostics (ESS, gap)
        weights, is_metrics = compute_large_is_weights(
            small_log_probs=sampler, large_log_probs=ll, response_mask=mask, level=cd.is_.level,
            mode=cd.is_.mode, threshold=cd.is_.threshold, self_normalize=cd.is_.self_normalize,
        )  # fmt: skip
        metrics.update(is_metrics)
        if cd.large.train:
            large_adv, _ = compute_large_advantage(
                token_level_rewards=batch.batch["token_level_rewards"], response_mask=mask, index=index,
                small_log_probs=sampler, large_log_probs=ll, estimator=cd.large.advantage,
                norm_adv_by_std_in_grpo=norm,
            )  # fmt: skip
            batch.batch["large_is_weights"] = weights
            batch.batch["large_advantages"] = large_adv
            # the mask of this pass (after verl's rollout rejection, which rewrites response_mask), not the
            # log-prob pass's: the large loss averages over exactly the tokens A_l and w were computed on
            batch.batch["large_response_mask"] = mask.clone()
        return metrics

    def _reward_metrics(self, batch: DataProto) -> dict[str, float]:
        """``<generator>/acc``: the mean of the reward's ``acc`` output, else the share of scores >= 1."""
        acc = batch.non_tensor_batch.get("acc")
        if acc is not None:
            value = float(np.mean(np.asarray(acc, dtype=np.float64)))
        else:
            value = float((batch.batch["token_level_scores"].sum(-1) >= 1.0).float().mean())
        return {f"{self._actor_prefix}acc": value}

    def _update_actor(self, batch: DataProto) -> DataProto:
        metrics: dict[str, Any] = {**self._metrics, **self._reward_metrics(batch)}
        if self.cd.large.enable:
            with marked_timer("kd_advantage", self._timing):
                metrics.update(self._codistill_advantages(batch))

        # the small actor gets every field but the large model's
        small_view = DataProto(
            batch=batch.batch.exclude(*LARGE_FIELDS), non_tensor_batch=batch.non_tensor_batch, meta_info=batch.meta_info
        )
        if self._skip_small:
            skip = zero_gradient_rows(batch.batch["advantages"], batch.batch["response_mask"])
            small_view.batch[SKIP_FIELD] = skip
            metrics[f"{self._actor_prefix}skipped_frac"] = float(skip.float().mean())
        with marked_timer("small_update", self._timing):
            actor_output = super()._update_actor(small_view)
        if self.cd.large.enable and self.cd.large.train:
            with marked_timer("large_update", self._timing):
                metrics.update(self._update_large_actor(batch))

        step_metrics = {
            (self._actor_prefix + k[len("actor/") :] if k.startswith("actor/") else k): v
            for k, v in actor_output.meta_info["metrics"].items()
        }
        step_metrics.update(metrics)
        step_metrics.update({f"timing_s/{k}": v for k, v in self._timing.items()})
        actor_output.meta_info["metrics"] = step_metrics
        self._checkpoint_row = (batch, step_metrics)
        return actor_output

    def _step_row_at_checkpoint(self) -> dict | None:
        """The step's metrics row as known when its checkpoint is written (verl logs the full row later,
        at the end of the step): the update's metrics and verl's data metrics of the step's batch."""
        from verl.trainer.ppo.metric_utils import compute_data_metrics
        from verl.utils.metric import reduce_metrics

        if getattr(self, "_checkpoint_row", None) is None:
            return None
        batch, step_metrics = self._checkpoint_row
        data = reduce_metrics(dict(step_metrics))
        data.update(compute_data_metrics(batch=batch, use_critic=self.use_critic))
        data = {k: float(v) for k, v in data.items() if isinstance(v, (int, float, np.floating, np.integer))}
        return {"step": self.global_steps, "data": data, "at_checkpoint": True}

    def _update_large_actor(self, batch: DataProto) -> dict[str, float]:
        """One PPO update of the large model on the small model's samples (its own fields only)."""
        tensors = {k: batch.batch[k] for k in batch.batch.keys() if k not in SMALL_ONLY_FIELDS}
        skipped = {}
        if self._skip_large:
            skip = zero_gradient_rows(
                tensors["large_advantages"], tensors["large_response_mask"], tensors["large_is_weights"]
            )
            tensors[SKIP_FIELD] = skip
            skipped["large/skipped_frac"] = float(skip.float().mean())
        view = DataProto.from_dict(tensors=tensors, meta_info=dict(batch.meta_info))
        view.meta_info["temperature"] = self.config.actor_rollout_ref.rollout.temperature
        batch_td = left_right_2_no_padding(view.to_tensordict())
        actor_cfg = self.large_config.actor
        mini = int(actor_cfg.ppo_mini_batch_size) * int(self.config.actor_rollout_ref.rollout.n)
        tu.assign_non_tensor(
            batch_td,
            calculate_entropy=bool(actor_cfg.calculate_entropy or actor_cfg.entropy_coeff != 0.0),
            distillation_use_topk=False,
            distillation_only=False,
            global_batch_size=mini,
            mini_batch_size=mini,
            epochs=int(actor_cfg.ppo_epochs),
            seed=int(actor_cfg.data_loader_seed),
            dataloader_kwargs={"shuffle": bool(actor_cfg.shuffle)},
            compute_loss=True,
        )
        out = tu.get(self.large_wg.update_actor(batch_td), "metrics")
        renamed = {}
        for key, value in out.items():
            name = "perf/mfu/large_actor" if key == "mfu" else "large/" + key.removeprefix("actor/")
            renamed[name] = float(np.mean(value)) if isinstance(value, (list, tuple)) else value
        return {**renamed, **skipped}

    # ------------------------------------------------------------------ checkpoints
    def _large_trainable(self) -> bool:
        return bool(self.cd.large.enable and self.cd.large.train)

    def _save_checkpoint(self):
        """Both actors' step-N checkpoints and the step's metrics row, then verl's tracker file, then
        (only then) old steps go.

        verl's checkpoint managers delete the previous checkpoints while saving the new one, before
        the tracker names it: a crash in between would leave nothing to resume. Here the workers
        keep everything and ``trainer.max_actor_ckpt_to_keep`` is applied after the tracker is written.
        verl logs a step's metrics at the end of the step, after its checkpoint: the row as known
        here goes into ``global_step_N/metrics_row.json``, from which the launcher restores a row
        that a stop in between never logged (``run_folder.open_run``). A failed write stops the run
        with one line; its traceback goes to ``<run.dir>/train.log``.
        """
        trainer = self.config.trainer
        keep = 1 if trainer.get("remove_previous_ckpt_in_save", False) else trainer.get("max_actor_ckpt_to_keep", None)
        folder = os.path.join(trainer.default_local_dir, f"global_step_{self.global_steps}")
        try:
            if self._large_trainable():
                large_path = os.path.join(folder, LARGE_CKPT_DIR)
                self.large_wg.save_checkpoint(large_path, None, self.global_steps, max_ckpt_to_keep=None)
                os.makedirs(large_path, exist_ok=True)
                meta = {
                    "model_path": str(self.large_config.model.path),
                    "signature": model_signature(str(self.large_config.model.path)),
                    "global_step": self.global_steps,
                }
                with open(os.path.join(large_path, LARGE_META_FILE), "w") as f:
                    json.dump(meta, f, indent=1)
            row = self._step_row_at_checkpoint()
            if row is not None:
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, STEP_ROW_FILE), "w") as f:
                    json.dump(row, f)
            with open_dict(trainer):
                trainer.max_actor_ckpt_to_keep, trainer.remove_previous_ckpt_in_save = None, False
                try:
                    super()._save_checkpoint()
                finally:
                    trainer.max_actor_ckpt_to_keep, trainer.remove_previous_ckpt_in_save = keep, False
        except Exception as e:
            if isinstance(e, OSError) or "No space left on device" in str(e) or "Errno 28" in str(e):
                reason = (
                    "disk full"
                    if "No space left" in str(e) or getattr(e, "errno", None) == 28
                    else str(e).splitlines()[0]
                )
                log = self._log_traceback()
                raise CoDistillRunError(
                    f"step {self.global_steps}: the checkpoint could not be written to {folder}: {reason}"
                    + (f" (traceback in {log})" if log else "")
                ) from e
            raise
        if keep:
            self._remove_old_checkpoints(int(keep))

    def _log_traceback(self) -> str | None:
        """Append the exception being handled, with its traceback, to ``<run.dir>/train.log``; its path,
        or None if it could not be written (a full disk may refuse it too)."""
        import traceback

        run_dir = OmegaConf.select(self.config, "run.dir") or os.path.dirname(
            os.path.abspath(str(self.config.trainer.default_local_dir))
        )
        path = os.path.join(str(run_dir), "train.log")
        try:
            with open(path, "a") as f:
                f.write(f"codistill: step {self.global_steps}: checkpoint write failed:\n{traceback.format_exc()}")
        except OSError:
            return None
        return path

    def _remove_old_checkpoints(self, keep: int) -> None:
        """Delete ``global_step_*`` folders beyond the newest ``keep`` (asked for by max_actor_ckpt_to_keep)."""
        root = self.config.trainer.default_local_dir
        steps = sorted(
            int(name.removeprefix("global_step_"))
            for name in os.listdir(root)
            if name.startswith("global_step_") and name.removeprefix("global_step_").isdigit()
        )
        for step in steps[:-keep]:
            shutil.rmtree(os.path.join(root, f"global_step_{step}"), ignore_errors=True)

    def _resume_folder(self) -> str | None:
        """The ``global_step_N`` folder verl's ``_load_checkpoint`` will resume from (None: from scratch)."""
        trainer = self.config.trainer
        if trainer.resume_mode == "disable":
            return None
        if trainer.resume_mode == "resume_path":
            folder = str(trainer.resume_from_path)
        else:
            folder = find_latest_ckpt_path(os.path.abspath(trainer.default_local_dir))
            if folder is None:
                return None
        return os.path.abspath(folder)

    def check_large_checkpoint(self, folder: str) -> str:
        """The large checkpoint of ``folder``; raises ``CoDistillRunError`` (one line) if missing or another model's."""
        large_path = os.path.join(folder, LARGE_CKPT_DIR)
        meta_path = os.path.join(large_path, LARGE_META_FILE)
        if not os.path.isfile(meta_path):
            raise CoDistillRunError(
                f"resume: no large-model checkpoint at {large_path} (this run trains the large model; "
                "start over with --fresh / run.fresh=true, or point trainer.resume_from_path elsewhere)"
            )
        with open(meta_path) as f:
            meta = json.load(f)
        want = model_signature(str(self.large_config.model.path))
        if meta.get("signature") != want:
            raise CoDistillRunError(
                f"resume: the large checkpoint at {large_path} belongs to model {meta.get('model_path')!r} "
                f"{meta.get('signature')}, not large_actor.model.path={str(self.large_config.model.path)!r} {want}"
            )
        return large_path

    def _load_checkpoint(self):
        large_path = None
        if self._large_trainable():
            folder = self._resume_folder()
            if folder is not None:
                large_path = self.check_large_checkpoint(folder)
        result = super()._load_checkpoint()
        total = getattr(self, "total_training_steps", None)
        if total is not None and self.global_steps >= total:
            # verl's fit would train step N+1 (and save it) past the run's total
            raise CoDistillRunComplete(
                f"the run is complete: its checkpoint is step {self.global_steps} of {total}; nothing to do "
                "(raise trainer.total_training_steps to train on, or start over with --fresh)"
            )
        if large_path is not None:
            self.large_wg.load_checkpoint(
                large_path, del_local_after_load=self.config.trainer.del_local_ckpt_after_load
            )
        return result
