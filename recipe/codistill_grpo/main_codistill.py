"""Hydra entry point of the CoDistill-GRPO recipe (the recipe's counterpart of verl's ``main_ppo``).

    python -m recipe.codistill_grpo.main_codistill actor_rollout_ref.model.path=SMALL \\
        large_actor.model.path=LARGE data.train_files=TRAIN data.val_files=EVAL ...

Config: ``recipe/codistill_grpo/config/codistill.yaml`` (extends verl's ``ppo_trainer``).
Every start-up check (``trainer.validate_codistill_config``) runs here, in the driver, before Ray
starts or any model loads; a failure exits with one line ``codistill: <message>``.
``codistill_debug.dry_run=true`` resolves and checks the config (without reading the model folders),
prints it and the launch plan, and exits without starting anything (for GPU configs on any machine).

``VERL_USE_EXTERNAL_MODULES`` gets ``verl_ext.codistill`` appended before the first ``import verl``,
so the ``codistill`` advantage estimator and the ``codistill_teacher`` policy loss are registered
in every Ray worker too (verl imports those modules from its ``__init__``, and Ray workers inherit
the driver's environment). CPU runs add the CPU shim modules the same way (``cpu/overrides.py``).
"""

from __future__ import annotations

import os

EXTERNAL_MODULES = ("verl_ext.codistill",)


def _register_external_modules() -> None:
    mods = [m for m in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    for m in EXTERNAL_MODULES:
        if m not in mods:
            mods.append(m)
    os.environ["VERL_USE_EXTERNAL_MODULES"] = ",".join(mods)


_register_external_modules()

import socket  # noqa: E402
from pprint import pprint  # noqa: E402

import hydra  # noqa: E402
import ray  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402

from verl.trainer.main_ppo_v0 import BaseTaskRunner  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# worker-side switches that must reach every Ray worker, also on clusters started with `ray start`
# (whose workers do not inherit the driver's environment)
FORWARDED_ENV = ("VERL_USE_EXTERNAL_MODULES", "VERL_PLATFORM", "VERL_ENGINE_DEVICE", "CODISTILL_ROLLOUT_DUMP_DIR")


def forward_worker_env(config) -> None:
    """Copy ``FORWARDED_ENV`` from the driver into ``ray_kwargs.ray_init.runtime_env.env_vars``."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    with open_dict(config):
        if OmegaConf.select(config, "ray_kwargs.ray_init.runtime_env") is None:
            config.ray_kwargs.ray_init.runtime_env = {}
        runtime_env = config.ray_kwargs.ray_init.runtime_env
        if runtime_env.get("env_vars") is None:
            runtime_env.env_vars = {}
        for key, value in env.items():
            runtime_env.env_vars.setdefault(key, value)


def resolve_reward_path(config) -> None:
    """Make ``reward.custom_reward_function.path`` absolute (cwd first, then the repo root)."""
    path = OmegaConf.select(config, "reward.custom_reward_function.path")
    if not path or os.path.isabs(path):
        return
    for base in (os.getcwd(), REPO_ROOT):
        candidate = os.path.join(base, path)
        if os.path.isfile(candidate):
            with open_dict(config):
                config.reward.custom_reward_function.path = candidate
            return
    raise ValueError(f"reward.custom_reward_function.path={path!r} not found (looked in {os.getcwd()} and {REPO_ROOT})")


class CoDistillTaskRunnerImpl(BaseTaskRunner):
    """verl's v0 task runner, building ``CoDistillTrainer`` (verl's builds ``RayPPOTrainer`` by name)."""

    def init_resource_pool_mgr(self, config):
        from verl.trainer.ppo.utils import Role

        from recipe.codistill_grpo.trainer import codistill_settings

        cd = codistill_settings(config)
        if cd.large.enable and config.large_actor.get("placement", "colocate") == "separate":
            self.mapping[Role.Actor] = "large_pool"
            manager = super().init_resource_pool_mgr(config)
            manager.resource_pool_spec["large_pool"] = [int(config.large_actor.n_gpus_per_node)] * int(
                config.large_actor.nnodes
            )
            return manager
        return super().init_resource_pool_mgr(config)

    def run(self, config):
        from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler, need_critic, need_reference_policy
        from verl.utils.config import omega_conf_to_dataclass, validate_config
        from verl.utils.dataset.rl_dataset import collate_fn
        from verl.workers.config import HFModelConfig

        from recipe.codistill_grpo.trainer import CoDistillTrainer

        print(f"CoDistill TaskRunner hostname: {socket.gethostname()}, PID: {os.getpid()}")
        pprint(OmegaConf.to_container(config, resolve=True))
        OmegaConf.resolve(config)

        _, ray_worker_group_cls = self.add_actor_rollout_worker(config)
        self.add_critic_worker(config)
        self.add_reward_model_resource_pool(config)
        self.add_teacher_model_resource_pool(config)
        validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))

        model_config: HFModelConfig = omega_conf_to_dataclass(config.actor_rollout_ref.model)
        tokenizer, processor = model_config.tokenizer, model_config.processor
        resource_pool_manager = self.init_resource_pool_mgr(config)
        train_dataset = create_rl_dataset(
            config.data.train_files, config.data, tokenizer, processor, is_train=True,
            max_samples=config.data.get("train_max_samples", -1),
        )
        val_dataset = create_rl_dataset(
            config.data.val_files, config.data, tokenizer, processor, is_train=False,
            max_samples=config.data.get("val_max_samples", -1),
        )
        trainer = CoDistillTrainer(
            config=config,
            tokenizer=tokenizer,
            processor=processor,
            role_worker_mapping=self.role_worker_mapping,
            resource_pool_manager=resource_pool_manager,
            ray_worker_group_cls=ray_worker_group_cls,
            train_dataset=train_dataset,
            val_dataset=val_dataset,
            collate_fn=collate_fn,
            train_sampler=create_rl_sampler(config.data, train_dataset),
        )
        trainer.init_workers()
        trainer.fit()


CoDistillTaskRunner = ray.remote(num_cpus=1)(CoDistillTaskRunnerImpl)


@hydra.main(config_path="config", config_name="codistill", version_base=None)
def main(config):
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from recipe.codistill_grpo.trainer import launch_plan, validate_codistill_config

    auto_set_device(config)
    dry_run = bool(OmegaConf.select(config, "codistill_debug.dry_run", default=False))
    try:
        validate_codistill_config(config, check_models=not dry_run)
        if not dry_run:
            resolve_reward_path(config)
        validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    except (ValueError, AssertionError) as exc:
        raise SystemExit(f"codistill: {exc}") from None
    if dry_run:
        print(OmegaConf.to_yaml(config, resolve=True))
        print("codistill dry run (models not read, nothing started):")
        print("\n".join("  " + line for line in launch_plan(config)))
        return
    forward_worker_env(config)
    run_ppo(config, task_runner_class=CoDistillTaskRunner)


if __name__ == "__main__":
    main()
