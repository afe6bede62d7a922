"""Compose, check and describe a run of the recipe: no Ray, no model loaded.

The recipe's config is hydra's: ``recipe/codistill_grpo/config/codistill.yaml`` extends verl's
``ppo_trainer`` and picks a ``pair``, an ``exp`` and a ``platform`` from the repository's
``configs/`` folder. This module registers what that config needs (the ``algorithm.codistill``
node built from the schema's defaults, two resolvers), composes it for scripts and tests
(``compose_config``), builds the large worker group's config from the unresolved tree
(``build_large_worker_config``), and runs every start-up check that needs no file or model
(``check_config``), each failure a ``ConfigError`` with one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from verl_ext.codistill.config import CoDistillConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO / "configs"
RECIPE_CONFIG_DIR = Path(__file__).with_name("config")
RECIPE_CONFIG_NAME = "codistill"
GROUPS = ("pair", "exp", "platform")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# exactness of the zero-gradient skip: loss aggregations whose value does not depend on which
# sequences share a micro-batch (seq-mean-token-sum-norm divides by the micro-batch's padded width)
SKIP_EXACT_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean")


class ConfigError(ValueError):
    """A configuration a run cannot start with; the message is one line naming the key."""


def _loggers():
    """``trainer.logger`` default: the run's metrics.jsonl, plus wandb if WANDB_API_KEY is set, else tensorboard."""
    return OmegaConf.create(["file", "wandb" if os.environ.get("WANDB_API_KEY") else "tensorboard"])


def register() -> None:
    """What the recipe's YAML refers to: the schema node and the resolvers (idempotent)."""
    OmegaConf.register_new_resolver("codistill_configs_dir", lambda: str(CONFIGS_DIR), replace=True)
    OmegaConf.register_new_resolver("codistill_loggers", _loggers, replace=True)
    ConfigStore.instance().store(name="codistill_schema", node=CoDistillConfig().to_dict())


register()


# ----------------------------------------------------------------------------------------------
# groups and composition
# ----------------------------------------------------------------------------------------------


def available(group: str) -> list[str]:
    """The options of a config group: the YAML names under ``configs/<group>/``."""
    return sorted(p.stem for p in (CONFIGS_DIR / group).glob("*.yaml"))


def check_choice(group: str, name: str) -> None:
    """A group option must be a plain name of a file in ``configs/<group>/`` (no paths)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name not in available(group):
        raise ConfigError(f"unknown {group} {name!r}; available: {', '.join(available(group))}")


def compose_config(
    pair: str | None = None,
    exp: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    platform: str | None = None,
) -> DictConfig:
    """The recipe's config exactly as ``python -m recipe.codistill_grpo.main_codistill`` composes it.

    Interpolations are kept (read values through it, or ``OmegaConf.resolve`` a copy); hydra's
    own errors (a bad override) become one-line ``ConfigError``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    chosen = []
    for group, name in zip(GROUPS, (pair, exp, platform)):
        if name is not None:
            check_choice(group, name)
            chosen.append(f"{group}={name}")
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(RECIPE_CONFIG_DIR), version_base=None):
            return compose(config_name=RECIPE_CONFIG_NAME, overrides=[*chosen, *overrides])
    except Exception as e:  # hydra's message names the bad override
        raise ConfigError(f"hydra could not compose the config: {' '.join(str(e).split())}") from None


def resolved(config: DictConfig) -> DictConfig:
    """A resolved deep copy; an interpolation that does not resolve is a one-line ``ConfigError``."""
    out = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    try:
        OmegaConf.resolve(out)
    except Exception as e:
        raise ConfigError(f"config does not resolve: {' '.join(str(e).split())}") from None
    return out


# ----------------------------------------------------------------------------------------------
# the large worker group's config
# ----------------------------------------------------------------------------------------------


def build_large_worker_config(config: DictConfig, frozen: bool = False) -> DictConfig:
    """The large worker group's config: ``actor_rollout_ref`` with ``large_actor`` merged over it.

    Built from the UNRESOLVED tree: the merged block takes ``actor_rollout_ref``'s place in a copy
    of the whole config before it is resolved, so the keys verl derives from others (for example
    ``rollout.log_prob_use_dynamic_bsz`` from ``actor.use_dynamic_bsz``, or the log-prob token
    budget from ``actor.ppo_max_token_len_per_gpu``) take the large model's own values. The large
    model trains with the ``codistill_teacher`` policy loss; ``frozen`` (verl's ``ref`` role) uses
    its forward-only engine with the large model's strategy.
    """
    root = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    OmegaConf.set_struct(root, False)
    root.actor_rollout_ref = OmegaConf.merge(root.actor_rollout_ref, root.large_actor)
    with open_dict(root):
        root.actor_rollout_ref.actor.policy_loss.loss_mode = "codistill_teacher"
        if frozen:
            root.actor_rollout_ref.ref.strategy = root.actor_rollout_ref.actor.strategy
    try:
        OmegaConf.resolve(root)
    except Exception as e:
        raise ConfigError(f"large_actor does not resolve: {' '.join(str(e).split())}") from None
    return root.actor_rollout_ref


# ----------------------------------------------------------------------------------------------
# checks (no files, no models)
# ----------------------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """A checked config: what a run of it starts."""

    config: DictConfig  # resolved
    codistill: CoDistillConfig
    large: DictConfig | None  # the large worker group's resolved config (None: no large model)
    data_report: Any = None  # preflight.DataReport, once the data files are checked

    @property
    def large_trains(self) -> bool:
        return self.codistill.large.enable and self.codistill.large.train


def _dp(gpus: int, sp: int, who: str, key: str) -> int:
    if sp < 1 or gpus % sp:
        raise ConfigError(f"{key}={sp}: the {who}'s {gpus} GPU(s) are not divisible by its sequence-parallel size")
    return gpus // sp


def _check_batches(config: DictConfig, model_cfg: DictConfig, gpus: int, who: str, prefix: str) -> None:
    """Batch, mini-batch, micro-batch and parallel sizes of one model (an ``actor_rollout_ref``-shaped
    block), the keys and values named."""
    actor_cfg = model_cfg.actor
    n = int(config.actor_rollout_ref.rollout.n)
    prompts = int(config.data.train_batch_size)
    mini = int(actor_cfg.ppo_mini_batch_size)
    sp = int(actor_cfg.get("ulysses_sequence_parallel_size", 1) or 1)
    dp = _dp(gpus, sp, who, f"{prefix}.actor.ulysses_sequence_parallel_size")
    if mini < 1 or prompts < mini or prompts % mini:
        raise ConfigError(
            f"data.train_batch_size={prompts} is not a multiple of {prefix}.actor.ppo_mini_batch_size={mini} "
            f"(both count prompts; each prompt has actor_rollout_ref.rollout.n={n} responses)"
        )
    if (prompts * n) % dp:
        raise ConfigError(
            f"data.train_batch_size * rollout.n = {prompts} * {n} = {prompts * n} responses is not divisible by "
            f"the {who}'s data-parallel size {dp} ({gpus} GPU(s) / sequence-parallel {sp})"
        )
    if (mini * n) % dp:
        raise ConfigError(
            f"{prefix}.actor.ppo_mini_batch_size * rollout.n = {mini} * {n} = {mini * n} responses is not divisible "
            f"by the {who}'s data-parallel size {dp} ({gpus} GPU(s) / sequence-parallel {sp})"
        )
    if actor_cfg.get("use_dynamic_bsz", False):
        return
    # without dynamic batch sizes verl cuts each rank's share into micro-batches of exactly these sizes
    micro = int(actor_cfg.ppo_micro_batch_size_per_gpu)
    if (mini * n // dp) % micro:
        raise ConfigError(
            f"{prefix}.actor.ppo_micro_batch_size_per_gpu={micro} does not divide the {who}'s mini-batch per GPU "
            f"{mini * n // dp} (ppo_mini_batch_size {mini} * rollout.n {n} / data-parallel {dp})"
        )
    log_prob_micro = model_cfg.rollout.get("log_prob_micro_batch_size_per_gpu")
    if log_prob_micro and (prompts * n // dp) % int(log_prob_micro):
        raise ConfigError(
            f"{prefix}.rollout.log_prob_micro_batch_size_per_gpu={log_prob_micro} does not divide the {who}'s share "
            f"of the batch per GPU {prompts * n // dp} "
            f"(train_batch_size {prompts} * rollout.n {n} / data-parallel {dp})"
        )


def _check_skip_exact(actor_cfg: DictConfig, prefix: str) -> str | None:
    """Why dropping zero-gradient sequences would change this actor's update (None: exact)."""
    if float(actor_cfg.get("entropy_coeff", 0) or 0) != 0.0:
        return f"{prefix}.entropy_coeff={actor_cfg.entropy_coeff} (an entropy bonus has a gradient on every token)"
    if actor_cfg.get("use_kl_loss", False):
        return f"{prefix}.use_kl_loss=true (a KL loss has a gradient on every token)"
    agg = actor_cfg.get("loss_agg_mode", "token-mean")
    if agg not in SKIP_EXACT_AGG_MODES and actor_cfg.get("loss_scale_factor") is None:
        return (
            f"{prefix}.loss_agg_mode={agg!r} without loss_scale_factor (normalises by the micro-batch's padded width)"
        )
    return None


def check_config(config: DictConfig) -> RunPlan:
    """Every start-up check that needs neither files nor models. Raises ``ConfigError`` (one line).

    - ``algorithm.codistill`` against its schema; the recipe's own rules (estimator, trainer,
      group size, rollout-correction bypass, logger);
    - the large model: path set, no KL-to-reference loss (not supported), its own batch,
      mini-batch, micro-batch and sequence-parallel values against its own data-parallel size;
    - the zero-gradient skip only where it is exact;
    - ``is.behavior=rollout`` needs the rollout's log-probs;
    - no async checkpoint saves (verl writes no tracker for them: nothing would be resumable).
    """
    cfg = resolved(config)
    try:
        cd = CoDistillConfig.from_dict(cfg.algorithm.codistill)
    except ValueError as e:
        raise ConfigError(str(e)) from None

    if cfg.algorithm.adv_estimator != "codistill":
        raise ConfigError(
            f"algorithm.adv_estimator={cfg.algorithm.adv_estimator!r} must be 'codistill' (the recipe's estimator; "
            "with algorithm.codistill.kd.coef=0 and large.enable=false it is plain GRPO, e.g. exp=grpo_small)"
        )
    if cfg.trainer.get("use_v1", False):
        raise ConfigError("trainer.use_v1=true is not supported: the recipe subclasses verl's v0 RayPPOTrainer")
    n = int(cfg.actor_rollout_ref.rollout.n)
    if n < 2:
        raise ConfigError(f"actor_rollout_ref.rollout.n={n} must be >= 2: GRPO needs a group of responses per prompt")
    logger = cfg.trainer.logger
    loggers = [logger] if isinstance(logger, str) else list(logger or [])
    if "file" not in loggers:
        raise ConfigError(f"trainer.logger={loggers} must include 'file' (it writes the run's metrics.jsonl)")

    for key in ("actor_rollout_ref.actor.checkpoint.async_save", "large_actor.actor.checkpoint.async_save"):
        if OmegaConf.select(cfg, key):
            raise ConfigError(
                f"{key}=true is not supported: verl writes no tracker file for an async save, so the run could not "
                "resume and the recipe could not tell when older checkpoints may go; set it to false"
            )
    gpus = int(cfg.trainer.nnodes) * int(cfg.trainer.n_gpus_per_node)
    _check_batches(cfg, cfg.actor_rollout_ref, gpus, "small actor", "actor_rollout_ref")

    large = None
    if cd.large.enable:
        if OmegaConf.select(cfg, "algorithm.rollout_correction.bypass_mode"):
            raise ConfigError(
                "algorithm.rollout_correction.bypass_mode=true skips the old-log-prob pass that computes the "
                "large model's log-probs; set it to false"
            )
        path = OmegaConf.select(cfg, "large_actor.model.path")
        if path in (None, "", "???"):
            raise ConfigError(
                "large_actor.model.path is missing: set it, or turn the large model off with "
                "algorithm.codistill.large.enable=false"
            )
        if OmegaConf.select(cfg, "large_actor.actor.use_kl_loss"):
            raise ConfigError(
                "large_actor.actor.use_kl_loss=true is not supported: the large model trains without a "
                "KL-to-reference loss (no reference copy of it is loaded); set it to false"
            )
        if cd.is_.behavior == "rollout" and not cfg.actor_rollout_ref.rollout.get("calculate_log_probs", False):
            raise ConfigError(
                "algorithm.codistill.is.behavior='rollout' needs the rollout's log-probs: set "
                "actor_rollout_ref.rollout.calculate_log_probs=true"
            )
        large = build_large_worker_config(config, frozen=not cd.large.train)
        large_gpus = gpus if cd.large.placement == "colocate" else cd.large.nnodes * cd.large.n_gpus_per_node
        if cd.large.train:
            _check_batches(cfg, large, large_gpus, "large actor", "large_actor")
            if cd.large.skip_zero_grad:
                why = _check_skip_exact(large.actor, "large_actor.actor")
                if why:
                    raise ConfigError(
                        f"algorithm.codistill.large.skip_zero_grad=true cannot be exact with {why}; "
                        "set algorithm.codistill.large.skip_zero_grad=false"
                    )
        else:
            share, rem = divmod(int(cfg.data.train_batch_size) * n, large_gpus)
            micro = large.ref.get("log_prob_micro_batch_size_per_gpu")
            if rem or (micro and not large.ref.get("log_prob_use_dynamic_bsz", False) and share % int(micro)):
                raise ConfigError(
                    f"data.train_batch_size * rollout.n = {int(cfg.data.train_batch_size) * n} responses do not split "
                    f"into the frozen large model's {large_gpus} rank(s) and its log-prob micro-batches "
                    f"(large_actor.ref.log_prob_micro_batch_size_per_gpu={micro})"
                )
    if val_teacher(cfg, cd):
        large = build_large_worker_config(config, frozen=True)
    return RunPlan(config=cfg, codistill=cd, large=large)


def val_teacher(cfg: DictConfig, codistill: CoDistillConfig) -> bool:
    """grpo_small with ``run.val_teacher``: the large model is loaded frozen, colocated, for the
    held-out ``val/kd_kl`` only (runs with the large model on log it anyway)."""
    return (
        not codistill.large.enable
        and bool(OmegaConf.select(cfg, "run.val_teacher", default=False))
        and cfg.exp.generator == "small"
    )


def skip_small_zero_grad(codistill: CoDistillConfig, actor_cfg: DictConfig) -> bool:
    """The small actor drops zero-gradient sequences where that is exact: the GRPO baselines (no KD
    term: kd.coef = 0 at every step), no entropy bonus, no KL loss, a skip-safe loss aggregation."""
    kd = codistill.kd
    no_kd = kd.coef == 0.0 and (kd.coef_schedule == "constant" or kd.coef_final == 0.0)
    return bool(
        codistill.large.skip_zero_grad and no_kd and _check_skip_exact(actor_cfg, "actor_rollout_ref.actor") is None
    )


# ----------------------------------------------------------------------------------------------
# what a run starts
# ----------------------------------------------------------------------------------------------


def launch_plan(plan: RunPlan) -> list[str]:
    """Human-readable lines: models, pools, batch split, algorithm, where things go. No side effects."""
    cfg, cd = plan.config, plan.codistill
    n = int(cfg.actor_rollout_ref.rollout.n)
    t = cfg.trainer
    lines = [
        f"pair {cfg.pair.name}, experiment {cfg.exp.name}: {cfg.exp.description}",
        f"small model      {cfg.actor_rollout_ref.model.path} (actor + {cfg.actor_rollout_ref.rollout.name} rollout), "
        f"pool global_pool: {t.nnodes} node(s) x {t.n_gpus_per_node} GPU(s)",
    ]
    if plan.large is not None:
        pool = (
            f"pool large_pool: {cd.large.nnodes} node(s) x {cd.large.n_gpus_per_node} GPU(s)"
            if cd.large.enable and cd.large.placement == "separate"
            else "colocated on global_pool"
        )
        mode = "trained (codistill_teacher loss)" if cd.large.train else "frozen (forward only, no optimizer)"
        if not cd.large.enable:
            mode = "frozen, for the held-out val/kd_kl only (run.val_teacher)"
        lines.append(f"large model      {plan.large.model.path} {mode}, {pool}")
    else:
        lines.append("large model      off (plain GRPO on the generating model)")
    lines += [
        f"batch            {cfg.data.train_batch_size} prompts x {n} samples = {int(cfg.data.train_batch_size) * n} "
        f"responses/step, mini-batch {int(cfg.actor_rollout_ref.actor.ppo_mini_batch_size) * n}; lengths "
        f"{cfg.data.max_prompt_length} + {cfg.data.max_response_length} tokens",
        f"steps            {t.total_training_steps or 'epochs: ' + str(t.total_epochs)}, save every {t.save_freq}, "
        f"validate every {t.test_freq}",
        f"algorithm        {cd.to_dict()}",
        f"reward           {cfg.reward.custom_reward_function.path}:{cfg.reward.custom_reward_function.name}",
        f"run folder       {cfg.run.dir} (checkpoints/, metrics.jsonl, train.log, config.yaml)",
    ]
    return lines


def substitutions(config: DictConfig, against: DictConfig) -> list[str]:
    """``key: value_in_against -> value_in_config`` for every leaf that differs (both resolved)."""
    mine, theirs = _leaves(OmegaConf.to_container(config)), _leaves(OmegaConf.to_container(against))
    skip = ("run.", "hydra.")
    return [
        f"{k}: {theirs.get(k, '<absent>')!r} -> {mine.get(k, '<absent>')!r}"
        for k in sorted(set(mine) | set(theirs))
        if not k.startswith(skip) and mine.get(k, "<absent>") != theirs.get(k, "<absent>")
    ]


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def check_allocation(plan: RunPlan, environ: Mapping[str, str]) -> None:
    """Inside a SLURM allocation: the run must fit the nodes and GPUs SLURM gave it."""
    nodes = environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES")
    gpn = (environ.get("SLURM_GPUS_ON_NODE") or environ.get("SLURM_GPUS_PER_NODE") or "").rsplit(":", 1)[-1]
    if not nodes:
        return
    t, large = plan.config.trainer, plan.codistill.large
    need_nodes = int(t.nnodes) + (large.nnodes if plan.large is not None and large.placement == "separate" else 0)
    what = f"trainer.nnodes={t.nnodes}" + (
        f" + algorithm.codistill.large.nnodes={large.nnodes} (separate pool)" if need_nodes != int(t.nnodes) else ""
    )
    if need_nodes > int(nodes):
        raise ConfigError(f"the run needs {need_nodes} node(s) ({what}) but the allocation has {nodes}")
    if gpn.isdigit() and int(t.n_gpus_per_node) > int(gpn):
        raise ConfigError(f"trainer.n_gpus_per_node={t.n_gpus_per_node} but the allocation has {gpn} GPU(s) per node")
