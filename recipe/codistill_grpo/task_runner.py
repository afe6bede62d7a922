"""verl's v0 task runner, building the recipe's trainer (verl's builds ``RayPPOTrainer`` by name).

Imported by the entry point only after ``run.env`` is in the environment: importing verl's
trainer modules fixes the process's verl platform.
"""

from __future__ import annotations

import ray
from hydra.utils import get_class
from omegaconf import OmegaConf
from verl.trainer.main_ppo_v0 import BaseTaskRunner
from verl.trainer.ppo.utils import Role, create_rl_dataset, create_rl_sampler, need_critic, need_reference_policy
from verl.utils.config import omega_conf_to_dataclass, validate_config
from verl.utils.dataset.rl_dataset import collate_fn
from verl.workers.config import HFModelConfig

from recipe.codistill_grpo.configuration import build_large_worker_config, val_teacher
from verl_ext.codistill.config import CoDistillConfig


class CoDistillTaskRunnerImpl(BaseTaskRunner):
    """Builds ``run.trainer_class`` (default ``CoDistillTrainer``) with the large worker group's config."""

    def add_actor_rollout_worker(self, config):
        """verl's actor/rollout worker with the zero-gradient skip (``workers.CoDistillActorWorker``)."""
        from recipe.codistill_grpo.workers import CoDistillActorWorker

        _, group_cls = super().add_actor_rollout_worker(config)
        for role in list(self.role_worker_mapping):
            if role in (Role.ActorRollout, Role.ActorRolloutRef):
                self.role_worker_mapping[role] = ray.remote(CoDistillActorWorker)
        return CoDistillActorWorker, group_cls

    def init_resource_pool_mgr(self, config, codistill: CoDistillConfig = None):
        if codistill is not None and codistill.large.enable and codistill.large.placement == "separate":
            self.mapping[Role.Actor] = "large_pool"
            manager = super().init_resource_pool_mgr(config)
            manager.resource_pool_spec["large_pool"] = [codistill.large.n_gpus_per_node] * codistill.large.nnodes
            return manager
        return super().init_resource_pool_mgr(config)

    def run(self, config):
        codistill = CoDistillConfig.from_dict(config.algorithm.codistill)
        # built from the unresolved tree: verl's derived keys take the large model's own values
        # the large model: trained or frozen (codistill, ablations), or frozen for the held-out KL only
        large_config = (
            build_large_worker_config(config, frozen=not (codistill.large.enable and codistill.large.train))
            if codistill.large.enable or val_teacher(config, codistill)
            else None
        )
        OmegaConf.resolve(config)
        _, ray_worker_group_cls = self.add_actor_rollout_worker(config)
        self.add_critic_worker(config)
        self.add_reward_model_resource_pool(config)
        self.add_teacher_model_resource_pool(config)
        validate_config(
            config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
        )

        model_config: HFModelConfig = omega_conf_to_dataclass(config.actor_rollout_ref.model)
        tokenizer, processor = model_config.tokenizer, model_config.processor
        data = config.data
        train_dataset = create_rl_dataset(
            data.train_files, data, tokenizer, processor, is_train=True, max_samples=data.get("train_max_samples", -1)
        )
        val_dataset = create_rl_dataset(
            data.val_files, data, tokenizer, processor, is_train=False, max_samples=data.get("val_max_samples", -1)
        )
        trainer = get_class(config.run.trainer_class)(
            config=config,
            tokenizer=tokenizer,
            processor=processor,
            role_worker_mapping=self.role_worker_mapping,
            resource_pool_manager=self.init_resource_pool_mgr(config, codistill),
            ray_worker_group_cls=ray_worker_group_cls,
            train_dataset=train_dataset,
            val_dataset=val_dataset,
            collate_fn=collate_fn,
            train_sampler=create_rl_sampler(data, train_dataset),
            large_config=large_config,
        )
        trainer.init_workers()
        trainer.fit()


CoDistillTaskRunner = ray.remote(num_cpus=1)(CoDistillTaskRunnerImpl)
