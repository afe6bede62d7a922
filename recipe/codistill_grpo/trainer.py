"""CoDistill-GRPO trainer: verl's v0 ``RayPPOTrainer`` with a second, trainable large-model actor.

One step (ALGORITHM.md), and where it happens in verl's ``fit`` (which is not copied):

    gen (small rollout, G per prompt)                    verl
    reward                                               verl
    _compute_old_log_prob: small ls, then large ll       override: + large group forward on the same ids
    compute_advantage (module-level call in fit)         verl, plain ``grpo`` (config adv_estimator=grpo)
    _update_actor:                                       override:
        A_s  = codistill estimator(ls, ll, rewards)      overwrites ``advantages`` for the small actor
        w, A_l = large IS weights / advantage            ``large_is_weights``, ``large_advantages``
        small update (verl's actor loss on A_s)
        large update (``codistill_teacher`` loss, w, A_l; large worker group)
    _save_checkpoint: large_actor/ saved before verl writes its tracker file
    update_weights: small actor -> rollout               verl

Batch fields: the small side keeps verl's names; the large side is ``large_old_log_probs``,
``large_advantages``, ``large_is_weights``, ``large_response_mask``. The large weights never go
into ``rollout_is_weights`` of the shared batch: the large worker's loss maps its own fields onto
the names verl's ``ppo_loss`` reads, inside the large worker only.

Modes (``algorithm.codistill``): ``large.enable=false`` is plain GRPO (no large model is loaded and
the advantages are verl's own); ``large.train=false`` loads the large model as a forward-only
worker (verl's ``ref`` role: no optimizer state); ``kd.coef=0``, ``is.mode=none`` and
``task_reward=false`` are handled by the algorithm core.
"""

from __future__ import annotations

import json
import os
import time
from copy import deepcopy
from functools import partial
from typing import Any, Optional

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
from verl.utils.py_functional import rename_dict
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

LARGE_CKPT_DIR = "large_actor"
LARGE_META_FILE = "codistill_large_meta.json"
# keys of the large_actor block that describe placement, not the worker config
PLACEMENT_KEYS = ("placement", "nnodes", "n_gpus_per_node")
SMALL_ONLY_FIELDS = ("old_log_probs", "advantages", "returns", "rollout_is_weights", "ref_log_prob", "rollout_log_probs")
LARGE_FIELDS = ("large_old_log_probs", "large_advantages", "large_is_weights", "large_response_mask")


# ----------------------------------------------------------------------------------------------
# config helpers (pure: no Ray, no models)
# ----------------------------------------------------------------------------------------------


def codistill_settings(config: DictConfig):
    """``algorithm.codistill`` validated by the algorithm core (``CoDistillConfig``)."""
    from verl_ext.codistill.config import CoDistillConfig

    return CoDistillConfig.from_dict(OmegaConf.select(config, "algorithm.codistill"))


def build_large_worker_config(config: DictConfig, frozen: bool) -> DictConfig:
    """The large worker group's config: ``actor_rollout_ref`` deep-copied, ``large_actor`` merged over it.

    ``large_actor.log_prob_micro_batch_size_per_gpu`` goes to ``rollout.`` (where verl's actor
    worker reads it) and, for the frozen teacher (verl's ``ref`` role), to ``ref.``. The large
    model trains with the ``codistill_teacher`` policy loss and without a KL-to-reference loss.
    """
    base = deepcopy(config.actor_rollout_ref)
    large = OmegaConf.to_container(config.large_actor, resolve=True)
    for key in PLACEMENT_KEYS:
        large.pop(key, None)
    log_prob_mb = large.pop("log_prob_micro_batch_size_per_gpu", None)
    OmegaConf.set_struct(base, False)
    merged = OmegaConf.merge(base, large)
    with open_dict(merged):
        if log_prob_mb is not None:
            merged.rollout.log_prob_micro_batch_size_per_gpu = log_prob_mb
            merged.ref.log_prob_micro_batch_size_per_gpu = log_prob_mb
        merged.actor.use_kl_loss = False
        merged.actor.policy_loss.loss_mode = "codistill_teacher"
        if frozen:
            fsdp = large.get("actor", {}).get("fsdp_config", {})
            if "param_offload" in fsdp:
                merged.ref.fsdp_config.param_offload = fsdp["param_offload"]
            merged.ref.strategy = merged.actor.strategy
    return merged


def launch_plan(config: DictConfig) -> list[str]:
    """Human-readable lines: what a run of this config starts (models, pools, batch split). No side effects."""
    cd = codistill_settings(config)
    n = int(config.actor_rollout_ref.rollout.n)
    trainer = config.trainer
    lines = [
        f"small model      {config.actor_rollout_ref.model.path} (actor + {config.actor_rollout_ref.rollout.name} rollout), "
        f"pool global_pool: {trainer.nnodes} node(s) x {trainer.n_gpus_per_node} GPU(s)",
    ]
    if cd.large.enable:
        placement = config.large_actor.get("placement", "colocate")
        pool = (
            f"pool large_pool: {config.large_actor.nnodes} node(s) x {config.large_actor.n_gpus_per_node} GPU(s)"
            if placement == "separate"
            else "colocated on global_pool"
        )
        mode = "trained (codistill_teacher loss)" if cd.large.train else "frozen (forward only, no optimizer)"
        lines.append(f"large model      {OmegaConf.select(config, 'large_actor.model.path')} {mode}, {pool}")
    else:
        lines.append("large model      off (plain GRPO baseline)")
    lines += [
        f"batch            {config.data.train_batch_size} prompts x {n} samples = {int(config.data.train_batch_size) * n} rows/step, "
        f"mini-batch {int(config.actor_rollout_ref.actor.ppo_mini_batch_size) * n} rows",
        f"steps            {trainer.total_training_steps or 'epochs: ' + str(trainer.total_epochs)}, "
        f"save every {trainer.save_freq}, validate every {trainer.test_freq}",
        f"algorithm        kd={dict(OmegaConf.to_container(config.algorithm.codistill.kd))} "
        f"is={dict(OmegaConf.to_container(config.algorithm.codistill['is']))} task_reward={cd.task_reward}",
        f"reward           {config.reward.custom_reward_function.path}:{config.reward.custom_reward_function.name}",
        f"checkpoints      {trainer.default_local_dir}",
    ]
    return lines


def _dp_size(n_gpus_per_node: int, nnodes: int, sp: int) -> int:
    return max(1, (n_gpus_per_node * nnodes) // max(1, sp))


def validate_codistill_config(config: DictConfig, check_models: bool = True) -> None:
    """All start-up checks, before Ray or any model loads. Raises ``ValueError`` with one line.

    - ``algorithm.codistill`` (algorithm core's validation);
    - GRPO groups: ``actor_rollout_ref.rollout.n >= 2``; the small advantage pass must be verl's ``grpo``;
    - the large model: path present, tokenizer vocabulary identical to the small model's;
      modes that need it (``kd.coef > 0``, ``task_reward=false``) require ``large.enable=true``;
    - batch (``data.train_batch_size * n``) and mini-batch (``ppo_mini_batch_size * n``) divisible by
      each model's data-parallel size.

    ``check_models=False`` (dry run) skips the checks that read the model folders (paths, tokenizers).
    """
    cd = codistill_settings(config)
    n = int(config.actor_rollout_ref.rollout.n)
    if n < 2:
        raise ValueError(f"actor_rollout_ref.rollout.n={n} must be >= 2: GRPO needs a group of responses per prompt")
    if config.algorithm.adv_estimator != "grpo":
        raise ValueError(
            f"algorithm.adv_estimator={config.algorithm.adv_estimator!r} must be 'grpo': verl's own advantage pass "
            "runs plain GRPO and the recipe trainer computes the codistill advantage itself"
        )
    if config.trainer.get("use_v1", False):
        raise ValueError("trainer.use_v1=true is not supported by this recipe: it subclasses verl's v0 RayPPOTrainer")
    if cd.large.enable:
        rc = OmegaConf.select(config, "algorithm.rollout_correction.bypass_mode")
        if rc:
            raise ValueError(
                "algorithm.rollout_correction.bypass_mode=true skips the old-log-prob pass that computes the large "
                "model's log-probs; set it to false"
            )
        large_path = OmegaConf.select(config, "large_actor.model.path", throw_on_missing=False)
        if large_path in (None, "", "???") or OmegaConf.is_missing(config.large_actor.model, "path"):
            raise ValueError(
                "large_actor.model.path is missing: set it, or turn the large model off with "
                "algorithm.codistill.large.enable=false"
            )
        if check_models:
            _check_model_path("large_actor.model.path", str(large_path))
            small_path = str(config.actor_rollout_ref.model.path)
            _check_model_path("actor_rollout_ref.model.path", small_path)
            from verl_ext.codistill.tokenizer_check import assert_shared_tokenizer

            assert_shared_tokenizer(small_path, str(large_path))
    else:
        if cd.kd.coef != 0.0:
            raise ValueError(
                f"algorithm.codistill.kd.coef={cd.kd.coef} needs the large model's log-probs: set "
                "algorithm.codistill.large.enable=true or algorithm.codistill.kd.coef=0"
            )
        if not cd.task_reward:
            raise ValueError(
                "algorithm.codistill.task_reward=false (KD only) needs the large model: set "
                "algorithm.codistill.large.enable=true"
            )

    trainer = config.trainer
    sp = int(OmegaConf.select(config, "actor_rollout_ref.actor.ulysses_sequence_parallel_size", default=1) or 1)
    small_dp = _dp_size(int(trainer.n_gpus_per_node), int(trainer.nnodes), sp)
    batch = int(config.data.train_batch_size) * n
    mini = int(config.actor_rollout_ref.actor.ppo_mini_batch_size) * n
    checks = [("small actor", small_dp)]
    if cd.large.enable:
        placement = config.large_actor.get("placement", "colocate")
        if placement == "colocate":
            large_dp = small_dp
        elif placement == "separate":
            large_dp = _dp_size(int(config.large_actor.n_gpus_per_node), int(config.large_actor.nnodes), sp)
        else:
            raise ValueError(f"large_actor.placement={placement!r} not in ['colocate', 'separate']")
        checks.append(("large actor", large_dp))
    for who, dp in checks:
        if batch % dp:
            raise ValueError(
                f"data.train_batch_size * rollout.n = {batch} is not divisible by the {who}'s data-parallel size {dp}"
            )
        if mini % dp:
            raise ValueError(
                f"actor_rollout_ref.actor.ppo_mini_batch_size * rollout.n = {mini} is not divisible by the {who}'s "
                f"data-parallel size {dp}"
            )


def _check_model_path(key: str, path: str) -> None:
    """A local-looking path must exist; a hub name (``org/name``) is left to the tokenizer check."""
    expanded = os.path.expanduser(path)
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") != 1
    if looks_local and not os.path.isdir(expanded):
        raise ValueError(f"{key}={path!r} does not exist")


def model_signature(path: str) -> dict[str, Any]:
    """What identifies a model for the resume check: its architecture and sizes from ``config.json``."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    return {k: getattr(cfg, k, None) for k in keys}


# ----------------------------------------------------------------------------------------------
# the large model's loss (runs inside the large worker)
# ----------------------------------------------------------------------------------------------


def large_actor_loss(config, model_output, data, dp_group=None):
    """verl's ``ppo_loss`` on the large model's own fields.

    Maps ``large_old_log_probs -> old_log_probs``, ``large_advantages -> advantages``,
    ``large_response_mask -> response_mask`` and ``large_is_weights -> rollout_is_weights`` on a
    shallow copy of this worker's micro-batch; ``config.policy_loss.loss_mode`` is
    ``codistill_teacher`` (the reweighted PPO loss of ALGORITHM.md B).
    """
    from verl.workers.utils.losses import ppo_loss

    data = data.copy()
    data["old_log_probs"] = data["large_old_log_probs"]
    data["advantages"] = data["large_advantages"]
    data["response_mask"] = data["large_response_mask"]
    data["rollout_is_weights"] = data["large_is_weights"]
    return ppo_loss(config, model_output, data, dp_group)


# ----------------------------------------------------------------------------------------------
# timing of phases that verl's fit runs outside the overridden methods
# ----------------------------------------------------------------------------------------------


class _TimedMethod:
    """Wraps one object so that calls to ``method`` record their wall time with ``sink(seconds)``."""

    def __init__(self, inner, method: str, sink):
        self._inner = inner
        self._method = method
        self._sink = sink

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self._sink(time.perf_counter() - start)

        return timed


class CoDistillTrainer(RayPPOTrainer):
    """verl's v0 trainer plus the large model's worker group; ``fit`` is verl's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cd = codistill_settings(self.config)
        self.large_wg = None
        self._large_role = None
        self._timing: dict[str, float] = {}
        self._step_metrics: Optional[dict] = None
        self._dump_dir = OmegaConf.select(self.config, "codistill_debug.dump_dir", default=None)

    # ------------------------------------------------------------------ workers
    def init_workers(self):
        super().init_workers()
        if self.cd.large.enable:
            self._init_large_workers()
        self.async_rollout_manager = _TimedMethod(
            self.async_rollout_manager, "generate_sequences", partial(self._record, "timing/gen")
        )
        self.checkpoint_manager = _TimedMethod(self.checkpoint_manager, "update_weights", self._record_weight_sync)

    def _init_large_workers(self):
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.engine_workers import ActorRolloutRefWorker

        frozen = not self.cd.large.train
        self._large_role = "ref" if frozen else "actor"
        self.large_config = build_large_worker_config(self.config, frozen=frozen)
        placement = self.config.large_actor.get("placement", "colocate")
        if placement == "separate":
            role_for_pool = Role.Actor
        else:
            role_for_pool = Role.ActorRolloutRef if Role.ActorRolloutRef in self.role_worker_mapping else Role.ActorRollout
        pool = self.resource_pool_manager.get_resource_pool(role_for_pool)
        print(
            f"codistill: large model worker group (role {self._large_role}) on resource pool "
            f"'{self.resource_pool_manager.mapping[role_for_pool]}' ({placement})"
        )
        cls = RayClassWithInitArgs(
            cls=ray.remote(ActorRolloutRefWorker), config=self.large_config, role=self._large_role
        )
        self.large_wg = self.ray_worker_group_cls(
            resource_pool=pool, ray_cls_with_init=cls, name_prefix="codistill_large", device_name=self.device_name
        )
        self.large_wg.init_model()
        if frozen:
            self._check_no_large_optimizer()
        else:
            # init_model installed verl's default loss; replace it with the large model's field mapping
            large_actor_cfg = omega_conf_to_dataclass(self.large_config.actor)
            self.large_wg.set_loss_fn(partial(large_actor_loss, config=large_actor_cfg))

    def _check_no_large_optimizer(self) -> None:
        """Frozen teacher: verl's ``ref`` role builds a forward-only engine; verify no optimizer exists."""
        has_optimizer = ray.get(
            [
                w.__ray_call__.remote(lambda self: getattr(getattr(self.ref, "engine", None), "optimizer", None) is not None)
                for w in self.large_wg.workers
            ]
        )
        if any(has_optimizer):
            raise RuntimeError("codistill: the frozen large model (large.train=false) has an optimizer; expected none")
        print(f"codistill: frozen large model loaded forward-only on {len(has_optimizer)} rank(s), optimizer state: none")

    # ------------------------------------------------------------------ timing
    def _record(self, key: str, seconds: float) -> None:
        self._timing[key] = seconds

    def _record_weight_sync(self, seconds: float) -> None:
        # fit() calls update_weights after _update_actor and reduces the actor metrics after it,
        # so the sync time of this step is added to the metrics dict _update_actor returned.
        self._timing["timing/weight_sync"] = seconds
        if self._step_metrics is not None:
            self._step_metrics["timing/weight_sync"] = seconds
            self._step_metrics = None

    # ------------------------------------------------------------------ log-probs
    def _compute_old_log_prob(self, batch: DataProto):
        start = time.perf_counter()
        old_log_prob, mfu = super()._compute_old_log_prob(batch)
        self._timing["timing/small_log_prob"] = time.perf_counter() - start
        if self.cd.large.enable:
            start = time.perf_counter()
            large_lp = self._compute_large_log_prob(batch)
            self._timing["timing/large_log_prob"] = time.perf_counter() - start
            old_log_prob.batch["large_old_log_probs"] = large_lp
            old_log_prob.batch["large_response_mask"] = batch.batch["response_mask"].clone()
        return old_log_prob, mfu

    def _compute_large_log_prob(self, batch: DataProto) -> torch.Tensor:
        """``ll[i, t] = log pi_l_old(y_i,t | x, y_i,<t)`` on the small model's token ids, (B*G, T)."""
        batch_td = left_right_2_no_padding(batch.to_tensordict())
        tu.assign_non_tensor(batch_td, calculate_entropy=False, compute_loss=False)
        if self._large_role == "ref":
            output = self.large_wg.compute_ref_log_prob(batch_td)
        else:
            output = self.large_wg.compute_log_prob(batch_td)
        log_probs = no_padding_2_padding(tu.get(output, "log_probs"), batch_td)
        return log_probs.float()

    # ------------------------------------------------------------------ advantages + updates
    def _codistill_advantages(self, batch: DataProto) -> dict[str, float]:
        """Small advantage (codistill estimator) and the large model's weights and advantage, in place.

        ``advantages``/``returns`` (B*G, T) are overwritten with ``A_s = (A_R + beta*K) * m``;
        ``large_is_weights`` and ``large_advantages`` (B*G, T) are added when the large model trains.
        """
        from verl_ext.codistill.advantage import compute_codistill_advantage_and_metrics
        from verl_ext.codistill.config import kd_coef_at
        from verl_ext.codistill.importance import compute_large_advantage, compute_large_is_weights

        cd = self.cd
        norm = bool(self.config.algorithm.get("norm_adv_by_std_in_grpo", True))
        rewards = batch.batch["token_level_rewards"]
        mask = batch.batch["response_mask"]
        index = batch.non_tensor_batch["uid"]
        ls = batch.batch["old_log_probs"]
        ll = batch.batch["large_old_log_probs"]
        beta = kd_coef_at(self.global_steps - 1, cd.kd)

        adv, returns, metrics = compute_codistill_advantage_and_metrics(
            token_level_rewards=rewards,
            response_mask=mask,
            index=index,
            small_log_probs=ls,
            large_log_probs=ll,
            kd_coef=beta,
            kd_credit=cd.kd.credit,
            kd_clamp=cd.kd.clamp,
            norm_adv_by_std_in_grpo=norm,
            task_reward=cd.task_reward,
        )
        batch.batch["advantages"] = adv
        batch.batch["returns"] = returns
        metrics = dict(metrics)
        metrics["small/kd_coef"] = float(beta)

        # IS weights are computed in the frozen-teacher mode too, for their diagnostics (ESS, gap)
        weights, is_metrics = compute_large_is_weights(
            small_log_probs=ls,
            large_log_probs=ll,
            response_mask=mask,
            level=cd.is_.level,
            mode=cd.is_.mode,
            threshold=cd.is_.threshold,
            self_normalize=cd.is_.self_normalize,
        )
        metrics.update({k: float(v) for k, v in is_metrics.items()})
        if cd.large.train:
            large_adv, _ = compute_large_advantage(
                token_level_rewards=rewards,
                response_mask=mask,
                index=index,
                small_log_probs=ls,
                large_log_probs=ll,
                estimator=cd.large.advantage,
                norm_adv_by_std_in_grpo=norm,
            )
            batch.batch["large_is_weights"] = weights
            batch.batch["large_advantages"] = large_adv
        return metrics

    def _reward_metrics(self, batch: DataProto) -> dict[str, float]:
        """``small/reward_mean`` (mean sequence score) and ``small/acc``.

        ``small/acc`` is the mean of the reward function's ``acc`` output when it returns one, else
        the fraction of responses scoring >= 1 (a full-credit answer).
        """
        scores = batch.batch["token_level_scores"].sum(-1).float()
        acc = batch.non_tensor_batch.get("acc")
        if acc is not None:
            acc_value = float(np.mean(np.asarray(acc, dtype=np.float64)))
        else:
            acc_value = float((scores >= 1.0).float().mean())
        return {"small/reward_mean": float(scores.mean()), "small/acc": acc_value}

    def _update_actor(self, batch: DataProto) -> DataProto:
        metrics: dict[str, Any] = self._reward_metrics(batch)
        if self.cd.large.enable:
            start = time.perf_counter()
            metrics.update(self._codistill_advantages(batch))
            self._timing["timing/codistill_adv"] = time.perf_counter() - start
        self._maybe_dump(batch)

        # the small actor gets every field but the large model's
        small_view = DataProto(
            batch=batch.batch.exclude(*LARGE_FIELDS), non_tensor_batch=batch.non_tensor_batch, meta_info=batch.meta_info
        )
        start = time.perf_counter()
        actor_output = super()._update_actor(small_view)
        self._timing["timing/small_update"] = time.perf_counter() - start

        if self.cd.large.enable and self.cd.large.train:
            start = time.perf_counter()
            metrics.update(self._update_large_actor(batch))
            self._timing["timing/large_update"] = time.perf_counter() - start

        step_metrics = actor_output.meta_info["metrics"]
        step_metrics.update(metrics)
        step_metrics.update(self._timing)
        self._step_metrics = step_metrics
        return actor_output

    def _update_large_actor(self, batch: DataProto) -> dict[str, float]:
        """One PPO update of the large model on the small model's samples (its own fields only)."""
        # every tensor except the small actor's training fields: the large worker must not see them
        view = DataProto.from_dict(
            tensors={k: batch.batch[k] for k in batch.batch.keys() if k not in SMALL_ONLY_FIELDS},
            meta_info=dict(batch.meta_info),
        )
        view.meta_info["temperature"] = self.config.actor_rollout_ref.rollout.temperature
        batch_td = left_right_2_no_padding(view.to_tensordict())
        actor_cfg = self.large_config.actor
        n = self.config.actor_rollout_ref.rollout.n
        mini = int(actor_cfg.ppo_mini_batch_size) * n
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
        output = self.large_wg.update_actor(batch_td)
        out_metrics = tu.get(output, "metrics")
        out_metrics = rename_dict(out_metrics, "large/")
        renamed = {}
        for key, value in out_metrics.items():
            # verl names them actor/pg_loss etc.; keep one prefix: large/pg_loss
            renamed[key.replace("large/actor/", "large/")] = value
        if "large/mfu" in renamed:
            renamed["perf/mfu/large_actor"] = renamed.pop("large/mfu")
        return {k: float(np.mean(v)) if isinstance(v, (list, tuple)) else v for k, v in renamed.items()}

    def _maybe_dump(self, batch: DataProto) -> None:
        """Debug/test hook (``codistill_debug.dump_dir``): the step's tensors as ``batch_step_{N}.pt``."""
        if not self._dump_dir:
            return
        os.makedirs(self._dump_dir, exist_ok=True)
        keys = [
            "prompts", "responses", "input_ids", "attention_mask", "position_ids",
            "response_mask", "token_level_rewards", "token_level_scores",
            "old_log_probs", "advantages", *LARGE_FIELDS,
        ]
        record = {k: batch.batch[k].detach().cpu().clone() for k in keys if k in batch.batch.keys()}
        record["uid"] = list(batch.non_tensor_batch["uid"])
        record["global_steps"] = self.global_steps
        record["raw_prompt"] = [str(x) for x in batch.non_tensor_batch.get("raw_prompt", [])]
        torch.save(record, os.path.join(self._dump_dir, f"batch_step_{self.global_steps}.pt"))

    # ------------------------------------------------------------------ checkpoints
    def _large_trainable(self) -> bool:
        return bool(self.cd.large.enable and self.cd.large.train)

    def _save_checkpoint(self):
        if self._large_trainable():
            folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
            large_path = os.path.join(folder, LARGE_CKPT_DIR)
            self.large_wg.save_checkpoint(
                large_path, None, self.global_steps,
                max_ckpt_to_keep=self.config.trainer.get("max_actor_ckpt_to_keep", None),
            )
            os.makedirs(large_path, exist_ok=True)
            meta = {
                "model_path": str(self.config.large_actor.model.path),
                "signature": model_signature(str(self.large_config.model.path)),
                "global_step": self.global_steps,
            }
            with open(os.path.join(large_path, LARGE_META_FILE), "w") as f:
                json.dump(meta, f, indent=1)
        # verl saves the small actor and the dataloader, then writes the tracker file
        super()._save_checkpoint()

    def _resume_folder(self) -> Optional[str]:
        """The ``global_step_N`` folder verl's ``_load_checkpoint`` will resume from (None: from scratch)."""
        trainer = self.config.trainer
        if trainer.resume_mode == "disable":
            return None
        if trainer.resume_mode == "resume_path":
            folder = str(trainer.resume_from_path)
        else:
            root = trainer.default_local_dir
            if not os.path.isabs(root):
                root = os.path.join(os.getcwd(), root)
            folder = find_latest_ckpt_path(root)
            if folder is None:
                return None
        if not os.path.isabs(folder):
            folder = os.path.join(os.getcwd(), folder)
        return folder

    def check_large_checkpoint(self, folder: str) -> str:
        """The large checkpoint of ``folder``; raises ``RuntimeError`` (one line) if missing or another model's."""
        large_path = os.path.join(folder, LARGE_CKPT_DIR)
        meta_path = os.path.join(large_path, LARGE_META_FILE)
        if not os.path.isfile(meta_path):
            raise RuntimeError(
                f"resume: no large-model checkpoint at {large_path} (this run trains the large model; "
                "start from scratch with trainer.resume_mode=disable or point trainer.resume_from_path elsewhere)"
            )
        with open(meta_path) as f:
            meta = json.load(f)
        want = model_signature(str(self.large_config.model.path))
        if meta.get("signature") != want:
            raise RuntimeError(
                f"resume: the large checkpoint at {large_path} belongs to model {meta.get('model_path')!r} "
                f"{meta.get('signature')}, not large_actor.model.path={str(self.config.large_actor.model.path)!r} {want}"
            )
        return large_path

    def _load_checkpoint(self):
        large_path = None
        if self._large_trainable():
            folder = self._resume_folder()
            if folder is not None:
                large_path = self.check_large_checkpoint(folder)
        result = super()._load_checkpoint()
        if large_path is not None:
            self.large_wg.load_checkpoint(large_path, del_local_after_load=self.config.trainer.del_local_ckpt_after_load)
        return result
