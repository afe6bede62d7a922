#!/usr/bin/env python
"""Turn a model-pair YAML + an experiment YAML into the recipe's hydra overrides, and plan a run.

Used by ``scripts/run_qwen_math.sh`` and ``scripts/reproduce_paper.sh``; also importable
(``tests/test_configs.py`` resolves every pair x experiment in one process).

Composition order (a later source replaces an earlier one key by key):

    1. pair ``overrides:``      nested hydra keys shared by every run of the pair
    2. pair ``data:``           -> data.train_files / data.val_files
    3. pair ``models.<generator>`` -> actor_rollout_ref.*   (the model that generates and trains)
    4. pair ``models.<teacher>``   -> large_actor.*         (only when the experiment has a teacher)
    5. experiment ``overrides:``  (algorithm.codistill.* and friends)
    6. run keys: trainer.nnodes / n_gpus_per_node / experiment_name / default_local_dir / logger
    7. the user's overrides (everything after ``--`` on the run script's command line)

A model block has the shape of the recipe's ``large_actor`` block (``model``, ``actor``,
``log_prob_micro_batch_size_per_gpu``) plus ``path`` and ``rollout`` (used only when the model
generates), so one block serves both roles:

    role      path                          model.* / actor.*                log_prob_micro_batch_size_per_gpu
    actor     actor_rollout_ref.model.path  actor_rollout_ref.model/actor.*  actor_rollout_ref.rollout.log_prob_...
    teacher   large_actor.model.path        large_actor.model/actor.*        large_actor.log_prob_...

Placeholders in string values: ``{data_dir}`` ($CODISTILL_DATA_DIR, default <repo>/data),
``{output_dir}`` ($CODISTILL_OUTPUT_DIR, default <repo>/outputs), ``{repo}``, ``{pair}``, ``{exp}``.

Every error a user can hit is a :class:`PlanError` with a one-line message; the CLI prints it as
``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
RECIPE_CONFIG_DIR = REPO / "recipe" / "codistill_grpo" / "config"
RECIPE_CONFIG_NAME = "codistill"
ENTRY_MODULE = "recipe.codistill_grpo.main_codistill"
KINDS = {"pair": "model_pairs", "exp": "experiments", "cluster": "cluster"}
MODEL_BLOCK_KEYS = ("path", "model", "actor", "log_prob_micro_batch_size_per_gpu", "rollout")
EXP_KEYS = ("description", "generator", "teacher", "overrides")
PAIR_KEYS = ("description", "template", "build", "data", "models", "overrides")
# keys of the resolved config shown by --dry-run
SUMMARY_KEYS = (
    "actor_rollout_ref.model.path",
    "large_actor.model.path",
    "large_actor.placement",
    "algorithm.adv_estimator",
    "algorithm.norm_adv_by_std_in_grpo",
    "data.train_files",
    "data.val_files",
    "data.train_batch_size",
    "data.max_prompt_length",
    "data.max_response_length",
    "actor_rollout_ref.rollout.name",
    "actor_rollout_ref.rollout.n",
    "actor_rollout_ref.rollout.tensor_model_parallel_size",
    "actor_rollout_ref.rollout.gpu_memory_utilization",
    "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
    "actor_rollout_ref.actor.optim.lr",
    "actor_rollout_ref.actor.fsdp_config.param_offload",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload",
    "actor_rollout_ref.actor.use_kl_loss",
    "large_actor.actor.optim.lr",
    "large_actor.actor.ppo_micro_batch_size_per_gpu",
    "large_actor.log_prob_micro_batch_size_per_gpu",
    "large_actor.actor.fsdp_config.param_offload",
    "large_actor.actor.fsdp_config.optimizer_offload",
    "trainer.nnodes",
    "trainer.n_gpus_per_node",
    "trainer.total_training_steps",
    "trainer.save_freq",
    "trainer.test_freq",
    "trainer.default_local_dir",
    "trainer.logger",
)


class PlanError(ValueError):
    """A user-facing configuration error; the message is one line."""


# ----------------------------------------------------------------------------- YAML files


def available(kind: str) -> list[str]:
    """Names (file stems) of the YAMLs under configs/<model_pairs|experiments|cluster>."""
    return sorted(p.stem for p in (CONFIGS / KINDS[kind]).glob("*.yaml"))


def load(kind: str, name: str) -> dict:
    """Load configs/<kind>/<name>.yaml; unknown names list the available ones."""
    label = {"pair": "model pair", "exp": "experiment", "cluster": "cluster config"}[kind]
    path = CONFIGS / KINDS[kind] / f"{name}.yaml"
    where = f"configs/{KINDS[kind]}/{name}.yaml"
    if not path.is_file():
        raise PlanError(f"unknown {label} '{name}'; available: {', '.join(available(kind))}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise PlanError(f"{where}: top level must be a mapping")
    allowed = {"pair": PAIR_KEYS, "exp": EXP_KEYS}.get(kind)
    if allowed is not None:
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise PlanError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(allowed)})")
    return data


# ----------------------------------------------------------------------------- hydra overrides


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted.key: leaf}; lists and scalars are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


_BARE = re.compile(r"^[A-Za-z_/~][A-Za-z0-9_./:~+-]*$")
_RESERVED = {"true", "false", "null", "none", "nan", "inf"}


def format_value(value: Any) -> str:
    """A Python value as a hydra override value (strings quoted only where the grammar needs it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _BARE.match(text) and text.lower() not in _RESERVED:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_override(text: str) -> tuple[str, str, str | None]:
    """'+a.b=1' -> ('+', 'a.b', '1'); '~a.b' -> ('~', 'a.b', None)."""
    match = re.match(r"^(\+\+|\+|~)?([A-Za-z0-9_.@/\[\]-]+)(?:=(.*))?$", text, re.S)
    if not match or (match.group(3) is None and match.group(1) != "~"):
        raise PlanError(f"bad hydra override '{text}' (expected key=value, +key=value or ~key)")
    return match.group(1) or "", match.group(2), match.group(3)


def unquote(text: str | None) -> Any:
    """The value a simple hydra override string stands for (for the checks only)."""
    if text is None:
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# ----------------------------------------------------------------------------- the plan


@dataclass
class Settings:
    pair: str = "qwen2.5-math-1.5b_7b"
    exp: str = "codistill"
    nodes: int = 1
    gpus_per_node: int = 8
    cluster: str = "default"
    user_overrides: list[str] = field(default_factory=list)
    output_dir: str = ""
    data_dir: str = ""

    def __post_init__(self) -> None:
        self.output_dir = os.path.abspath(self.output_dir or os.environ.get("CODISTILL_OUTPUT_DIR") or REPO / "outputs")
        self.data_dir = os.path.abspath(self.data_dir or os.environ.get("CODISTILL_DATA_DIR") or REPO / "data")
        if self.nodes < 1:
            raise PlanError(f"--nodes must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 1:
            raise PlanError(f"--gpus-per-node must be >= 1, got {self.gpus_per_node}")


@dataclass
class Plan:
    settings: Settings
    pair_cfg: dict
    exp_cfg: dict
    values: dict[str, Any]  # dotted key -> python value (user overrides parsed back)
    overrides: list[str]  # hydra override strings, one per key, in composition order
    run_dir: str
    checkpoint_dir: str
    metrics_file: str
    data_files: list[str]
    prepare_cmd: str
    models: dict[str, str]  # role ('generator', 'teacher') -> path

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    @property
    def placement(self) -> str:
        return str(self.get("large_actor.placement", "colocate"))

    @property
    def has_teacher(self) -> bool:
        return "teacher" in self.models

    def gpu_demand(self) -> tuple[int, int, str]:
        """(nodes, gpus, description) the run needs: the trainer pool plus a separate large pool."""
        nnodes, gpn = int(self.get("trainer.nnodes")), int(self.get("trainer.n_gpus_per_node"))
        nodes, gpus, desc = nnodes, nnodes * gpn, f"trainer pool {nnodes} x {gpn}"
        if self.has_teacher and self.placement == "separate":
            lnodes = int(self.get("large_actor.nnodes", 1))
            lgpn = int(self.get("large_actor.n_gpus_per_node", gpn))
            nodes, gpus = nodes + lnodes, gpus + lnodes * lgpn
            desc += f" + separate large_actor pool {lnodes} x {lgpn}"
        return nodes, gpus, desc

    def final_checkpoint(self) -> str | None:
        """global_step_<total_training_steps> under the checkpoint dir (None if steps unset)."""
        steps = self.get("trainer.total_training_steps")
        if steps in (None, "null"):
            return None
        return os.path.join(self.checkpoint_dir, f"global_step_{int(steps)}")


def _substitute(value: Any, ctx: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, repl in ctx.items():
            value = value.replace("{" + key + "}", repl)
        return value
    if isinstance(value, list):
        return [_substitute(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, ctx) for k, v in value.items()}
    return value


def _model_values(block: dict, role: str, where: str) -> dict[str, Any]:
    unknown = sorted(set(block) - set(MODEL_BLOCK_KEYS))
    if unknown:
        raise PlanError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(MODEL_BLOCK_KEYS)})")
    if not block.get("path"):
        raise PlanError(f"{where}.path is missing")
    base = "actor_rollout_ref" if role == "generator" else "large_actor"
    out: dict[str, Any] = {f"{base}.model.path": block["path"]}
    for sub in ("model", "actor"):
        out.update(flatten(block.get(sub) or {}, f"{base}.{sub}"))
    if "log_prob_micro_batch_size_per_gpu" in block:
        key = "actor_rollout_ref.rollout" if role == "generator" else "large_actor"
        out[f"{key}.log_prob_micro_batch_size_per_gpu"] = block["log_prob_micro_batch_size_per_gpu"]
    if role == "generator":
        out.update(flatten(block.get("rollout") or {}, "actor_rollout_ref.rollout"))
    return out


def compose_plan(settings: Settings) -> Plan:
    """Compose the overrides of one run; raises PlanError with one line for any bad input."""
    pair = load("pair", settings.pair)
    exp = load("exp", settings.exp)
    ctx = {
        "data_dir": settings.data_dir,
        "output_dir": settings.output_dir,
        "repo": str(REPO),
        "pair": settings.pair,
        "exp": settings.exp,
    }
    pair = _substitute(pair, ctx)
    exp = _substitute(exp, ctx)
    where_pair = f"configs/model_pairs/{settings.pair}.yaml"
    where_exp = f"configs/experiments/{settings.exp}.yaml"

    values: dict[str, Any] = {}
    values.update(flatten(pair.get("overrides") or {}))

    data = pair.get("data") or {}
    if not data.get("train") or not data.get("val"):
        raise PlanError(f"{where_pair}: data.train and data.val are required")
    train = [data["train"]] if isinstance(data["train"], str) else list(data["train"])
    val = [data["val"]] if isinstance(data["val"], str) else list(data["val"])
    values["data.train_files"] = train
    values["data.val_files"] = val

    models = pair.get("models") or {}
    roles: dict[str, str] = {}
    for role, default in (("generator", "small"), ("teacher", "large")):
        which = exp.get(role, default)
        if which in (None, "none"):
            if role == "generator":
                raise PlanError(f"{where_exp}: generator must be one of {sorted(models)}")
            continue
        if which not in models:
            raise PlanError(f"{where_exp}: {role} '{which}' is not a model of {where_pair} ({', '.join(sorted(models))})")
        values.update(_model_values(models[which], role, f"{where_pair}: models.{which}"))
        roles[role] = which

    values.update(flatten(exp.get("overrides") or {}))

    run_dir = os.path.join(settings.output_dir, settings.pair, settings.exp)
    values["trainer.nnodes"] = settings.nodes
    values["trainer.n_gpus_per_node"] = settings.gpus_per_node
    values["trainer.project_name"] = "codistill"
    values["trainer.experiment_name"] = f"{settings.pair}__{settings.exp}"
    values["trainer.default_local_dir"] = os.path.join(run_dir, "checkpoints")

    prefixes: dict[str, str] = {}
    raw_user: dict[str, str | None] = {}
    for text in settings.user_overrides:
        prefix, key, raw = parse_override(text)
        values.pop(key, None)
        prefixes[key], raw_user[key] = prefix, raw
        values[key] = unquote(raw)

    overrides = []
    for key, value in values.items():
        if key in raw_user:
            prefix, raw = prefixes[key], raw_user[key]
            overrides.append(f"{prefix}{key}" if raw is None else f"{prefix}{key}={raw}")
        else:
            overrides.append(f"{key}={format_value(value)}")

    model_paths = {role: str(values[("actor_rollout_ref" if role == "generator" else "large_actor") + ".model.path"])
                   for role in roles}
    return Plan(
        settings=settings,
        pair_cfg=pair,
        exp_cfg=exp,
        values=values,
        overrides=overrides,
        run_dir=run_dir,
        checkpoint_dir=str(values["trainer.default_local_dir"]),
        metrics_file=os.path.join(run_dir, "metrics.jsonl"),
        data_files=[*_as_list(values.get("data.train_files")), *_as_list(values.get("data.val_files"))],
        prepare_cmd=str(data.get("prepare", "python scripts/prepare_data.py")),
        models=model_paths,
    )


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


# ----------------------------------------------------------------------------- checks


def hf_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model(path: str, role: str) -> str:
    """Where ``path`` will load from ('local dir', 'HF cache', 'hub'); PlanError if nowhere."""
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, "config.json")):
            raise PlanError(f"{role} model directory {local} has no config.json")
        return "local dir"
    hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path)
    if not hub_id or path.startswith((".", "/")):
        raise PlanError(f"{role} model path {path} does not exist")
    cache = hf_cache_dir()
    repo_dir = os.path.join(cache, "models--" + path.replace("/", "--"))
    if glob.glob(os.path.join(repo_dir, "snapshots", "*", "config.json")):
        return "HF cache"
    hint = f"download it where the hub is reachable (hf download {path}) or set the pair's path to a local dir"
    if _offline():
        raise PlanError(f"{role} model {path} is not a local dir and not in the HF cache ({cache}) and HF_HUB_OFFLINE=1: {hint}")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    token = os.environ.get("HF_TOKEN") or _stored_token()
    request = urllib.request.Request(f"{endpoint}/api/models/{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            info = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise PlanError(f"{role} model {path}: the hub answered {e.code} (private or gated: accept its license and set HF_TOKEN)") from None
        raise PlanError(f"{role} model {path}: the hub ({endpoint}) answered {e.code}; check the name") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise PlanError(f"{role} model {path} is not a local dir and not in the HF cache ({cache}) and the hub ({endpoint}) is unreachable ({reason}): {hint}") from None
    if info.get("gated") and not token:
        raise PlanError(f"{role} model {path} is gated on the hub: accept its license on the model page and set HF_TOKEN (or `hf auth login`)")
    return "hub (downloaded at start-up)"


def _stored_token() -> str | None:
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def check_plan(plan: Plan, available_gpus: int | None = None, available_nodes: int | None = None,
               collect: bool = False) -> list[str]:
    """Check models, data and GPUs. Returns info lines; raises PlanError on the first problem,
    or (``collect=True``, for --dry-run) reports every problem as a 'warning:' line instead."""
    info: list[str] = []

    def problem(e: PlanError) -> None:
        if not collect:
            raise e
        info.append(f"warning: {e}")

    tiny = plan.pair_cfg.get("build") == "tiny"
    for role, path in plan.models.items():
        if tiny and not os.path.isdir(path):
            info.append(f"{role} model {path}: built on the fly (tiny pair)")
            continue
        try:
            info.append(f"{role} model {path}: {check_model(path, role)}")
        except PlanError as e:
            problem(e)
    missing = [f for f in plan.data_files if not os.path.exists(f) and not tiny]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        problem(PlanError(f"data file {missing[0]}{more} is missing: make it with `{plan.prepare_cmd}`"))
    if available_gpus is not None:
        nodes, gpus, desc = plan.gpu_demand()
        have = f"{available_gpus} GPUs" + (f" on {available_nodes} node(s)" if available_nodes else "")
        if gpus > available_gpus or (available_nodes is not None and nodes > available_nodes):
            problem(PlanError(f"requested {gpus} GPUs on {nodes} node(s) ({desc}) but only {have} are allocated"))
    return info


def build_tiny(plan: Plan) -> None:
    """Build the tiny pair + data where a ``build: tiny`` pair expects them (idempotent)."""
    from recipe.codistill_grpo.cpu.tiny_pair import build_tiny_data, build_tiny_pair

    small = plan.pair_cfg["models"]["small"]["path"]
    if not os.path.isfile(os.path.join(small, "config.json")):
        build_tiny_pair(os.path.dirname(small))
    if not all(os.path.exists(f) for f in plan.data_files):
        build_tiny_data(os.path.dirname(plan.data_files[0]))


# ----------------------------------------------------------------------------- resolution


def resolve(overrides: list[str]):
    """Compose the recipe's hydra config with ``overrides`` exactly as its entry point would, resolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if not (RECIPE_CONFIG_DIR / f"{RECIPE_CONFIG_NAME}.yaml").is_file():
        raise PlanError(f"recipe config {RECIPE_CONFIG_DIR / RECIPE_CONFIG_NAME}.yaml not found (is the recipe installed?)")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(RECIPE_CONFIG_DIR), version_base=None):
            cfg = compose(config_name=RECIPE_CONFIG_NAME, overrides=list(overrides))
    except Exception as e:  # hydra's own message names the bad override
        raise PlanError(f"hydra could not compose the config: {' '.join(str(e).split())}") from None
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:
        raise PlanError(f"config does not resolve: {' '.join(str(e).split())}") from None
    try:
        from verl_ext.codistill.config import CoDistillConfig
    except ImportError:
        CoDistillConfig = None
    if CoDistillConfig is not None:
        CoDistillConfig.from_dict(cfg.algorithm.codistill)
    return cfg


def select(cfg, key: str) -> Any:
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, key, default="<absent>", throw_on_missing=False)
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node)
    return node


# ----------------------------------------------------------------------------- sbatch


def cluster_settings(name: str, partition=None, account=None, time=None) -> dict:
    """configs/cluster/<name>.yaml with flag > CODISTILL_* > SLURM_* / SBATCH_* env precedence."""
    cfg = load("cluster", name)
    env = os.environ
    cfg["partition"] = partition or env.get("CODISTILL_PARTITION") or env.get("SLURM_PARTITION") or env.get("SBATCH_PARTITION") or cfg.get("partition")
    cfg["account"] = account or env.get("CODISTILL_ACCOUNT") or env.get("SLURM_ACCOUNT") or env.get("SBATCH_ACCOUNT") or cfg.get("account")
    cfg["time"] = time or env.get("CODISTILL_TIME") or env.get("SBATCH_TIMELIMIT") or cfg.get("time")
    return cfg


def render_job(cluster: dict, name: str, nodes: int, gpus_per_node: int, log_dir: str, body: list[str]) -> str:
    """An sbatch script: the #SBATCH resource lines, the cluster's setup lines, then ``body``."""
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --cpus-per-task={cluster.get('cpus_per_task', 32)}",
        f"#SBATCH --mem={cluster.get('mem', '0')}",
        f"#SBATCH --time={cluster['time']}",
        f"#SBATCH --output={log_dir}/%x-%j.out",
    ]
    if cluster.get("partition"):
        lines.append(f"#SBATCH --partition={cluster['partition']}")
    if cluster.get("account"):
        lines.append(f"#SBATCH --account={cluster['account']}")
    lines += [f"#SBATCH {extra}" for extra in cluster.get("sbatch_extra") or []]
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(REPO))}", *[str(x) for x in cluster.get("setup") or []]]
    return "\n".join(lines + body) + "\n"


def render_sbatch(plan: Plan, cluster: dict, script_args: list[str], log_dir: str) -> str:
    """The sbatch script of one run: resources, then the run script again inside the allocation."""
    s = plan.settings
    nodes, _, _ = plan.gpu_demand()
    body = [
        "# written by scripts/run_qwen_math.sh; inside the allocation it runs the same script again,",
        "# which brings up Ray across the nodes, runs the recipe and tears Ray down.",
        f"export CODISTILL_OUTPUT_DIR={shlex.quote(s.output_dir)}",
        f"export CODISTILL_DATA_DIR={shlex.quote(s.data_dir)}",
        f"export CODISTILL_CLUSTER={shlex.quote(s.cluster)}",
        "exec bash scripts/run_qwen_math.sh " + " ".join(shlex.quote(a) for a in script_args),
    ]
    name = f"{cluster.get('job_name_prefix', 'codistill')}-{s.pair}-{s.exp}"
    return render_job(cluster, name, nodes, s.gpus_per_node, log_dir, body)


def cmd_sbatch_command(args) -> None:
    """A one-node sbatch script running ``args.overrides`` (a command line) with the cluster's resources."""
    cluster = cluster_settings(args.cluster, args.partition, args.account, args.time)
    out_dir = os.path.abspath(os.environ.get("CODISTILL_OUTPUT_DIR") or REPO / "outputs")
    body = [
        f"export CODISTILL_OUTPUT_DIR={shlex.quote(out_dir)}",
        f"export CODISTILL_DATA_DIR={shlex.quote(os.path.abspath(os.environ.get('CODISTILL_DATA_DIR') or REPO / 'data'))}",
        "exec " + " ".join(shlex.quote(a) for a in args.overrides),
    ]
    name = f"{cluster.get('job_name_prefix', 'codistill')}-{args.job_name}"
    text = render_job(cluster, name, 1, args.gpus_per_node, os.path.join(out_dir, "slurm"), body)
    if args.write:
        os.makedirs(os.path.dirname(os.path.abspath(args.write)), exist_ok=True)
        os.makedirs(os.path.join(out_dir, "slurm"), exist_ok=True)
        Path(args.write).write_text(text)
    print(text, end="")


# ----------------------------------------------------------------------------- CLI


def _settings(args) -> Settings:
    return Settings(pair=args.pair, exp=args.exp, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                    cluster=args.cluster, user_overrides=list(args.overrides))


def _script_args(args) -> list[str]:
    out = ["--pair", args.pair, "--exp", args.exp, "--nodes", str(args.nodes), "--gpus-per-node", str(args.gpus_per_node)]
    return out + (["--", *args.overrides] if args.overrides else [])


def cmd_smoke_args(args) -> None:
    """Arguments of ``python -m recipe.codistill_grpo.cpu.smoke`` for the experiment, one per line.

    The smoke module owns the tiny pair (``--out``/tiny/{small,large}) and the CPU preset; the
    experiment adds its overlay, ``--baseline`` when it has no teacher, and the large tiny model
    as the generator for GRPO-large. The user's overrides come last.
    """
    exp = load("exp", args.exp)
    out = os.path.abspath(args.out)
    lines = ["--out", out, "--steps", str(args.steps), "--save-freq", str(args.steps)]
    if exp.get("teacher", "large") in (None, "none"):
        lines.append("--baseline")
    lines.append("--")
    lines += [f"{k}={format_value(v)}" for k, v in flatten(exp.get("overrides") or {}).items()]
    if exp.get("generator", "small") == "large":
        lines.append(f"actor_rollout_ref.model.path={format_value(os.path.join(out, 'tiny', 'large'))}")
    lines += list(args.overrides)
    print("\n".join(lines))


def cmd_overrides(args) -> None:
    print("\n".join(compose_plan(_settings(args)).overrides))


def cmd_check(args) -> None:
    plan = compose_plan(_settings(args))
    if plan.pair_cfg.get("build") == "tiny":
        build_tiny(plan)
    for line in check_plan(plan, args.available_gpus, args.available_nodes):
        print(f"[codistill] {line}")


def cmd_info(args) -> None:
    """Shell-readable facts about the run (KEY=VALUE lines)."""
    plan = compose_plan(_settings(args))
    cluster = load("cluster", args.cluster)
    nodes, gpus, _ = plan.gpu_demand()
    facts = {
        "RUN_DIR": plan.run_dir,
        "CHECKPOINT_DIR": plan.checkpoint_dir,
        "FINAL_CHECKPOINT": plan.final_checkpoint() or "",
        "TOTAL_STEPS": plan.get("trainer.total_training_steps") or "",
        "METRICS_FILE": plan.metrics_file,
        "NODES": nodes,
        "GPUS": gpus,
        "GENERATOR_MODEL": plan.models.get("generator", ""),
        "TEACHER_MODEL": plan.models.get("teacher", ""),
        "TEMPLATE": plan.pair_cfg.get("template", ""),
        "DATA_DIR": plan.settings.data_dir,
        "PREPARE_CMD": plan.prepare_cmd,
        "VAL_FILES": " ".join(_as_list(plan.get("data.val_files"))),
        "SMALL_MODEL": plan.pair_cfg["models"]["small"]["path"],
        "LARGE_MODEL": plan.pair_cfg["models"]["large"]["path"],
        "DATA_FILES": " ".join(plan.data_files),
        "RAY_PORT": cluster.get("ray_port", 6379),
        "RAY_JOIN_TIMEOUT_S": cluster.get("ray_join_timeout_s", 600),
        "SRUN_EXTRA": " ".join(str(x) for x in cluster.get("srun_extra") or []),
        "MAX_RESPONSE_LENGTH": plan.get("data.max_response_length", ""),
    }
    for k, v in facts.items():
        print(f"{k}\t{v}" if args.tsv else f"{k}={shlex.quote(str(v))}")


def cmd_sbatch(args) -> None:
    plan = compose_plan(_settings(args))
    cluster = cluster_settings(args.cluster, args.partition, args.account, args.time)
    log_dir = os.path.join(plan.settings.output_dir, "slurm")
    text = render_sbatch(plan, cluster, _script_args(args), log_dir)
    if args.write:
        os.makedirs(os.path.dirname(os.path.abspath(args.write)), exist_ok=True)
        os.makedirs(log_dir, exist_ok=True)
        Path(args.write).write_text(text)
    print(text, end="")


def cmd_dry_run(args) -> None:
    plan = compose_plan(_settings(args))
    s = plan.settings
    desc = " ".join(str(plan.exp_cfg.get("description", "")).split())
    nodes, gpus, pools = plan.gpu_demand()
    print(f"== plan: pair {s.pair}, experiment {s.exp}")
    print(f"experiment: {desc}")
    for role, path in plan.models.items():
        what = "generates rollouts, trains (actor_rollout_ref)" if role == "generator" else (
            "teacher, " + ("trains" if plan.get("algorithm.codistill.large.train", True) else "frozen") + " (large_actor)")
        print(f"{role}: {path}  [{what}]")
    if not plan.has_teacher:
        print("teacher: none (algorithm.codistill.large.enable=false: no large model is loaded)")
    print(f"resource pools: {pools}; large_actor.placement={plan.placement}; total {gpus} GPUs on {nodes} node(s)")
    print(f"checkpoints: {plan.checkpoint_dir} (final: {plan.final_checkpoint()})")
    print(f"metrics: {plan.metrics_file}")
    for line in check_plan(plan, None, collect=True):
        print(line if line.startswith("warning:") else f"check: {line}")
    print("== hydra overrides (passed to python -m " + ENTRY_MODULE + ")")
    for o in plan.overrides:
        print(f"  {o}")
    cfg = resolve(plan.overrides)
    print("== resolved config (recipe defaults + overrides; selected keys)")
    for key in SUMMARY_KEYS:
        print(f"  {key}: {json.dumps(select(cfg, key), default=str)}")
    from omegaconf import OmegaConf

    print("== resolved algorithm.codistill")
    print("  " + OmegaConf.to_yaml(cfg.algorithm.codistill).rstrip().replace("\n", "\n  "))
    if plan.has_teacher:
        print("== resolved large_actor")
        print("  " + OmegaConf.to_yaml(cfg.large_actor).rstrip().replace("\n", "\n  "))
    if os.environ.get("CODISTILL_DRYRUN_FULL") == "1":
        print("== full resolved config")
        print(OmegaConf.to_yaml(cfg))
    cluster = cluster_settings(args.cluster, args.partition, args.account, args.time)
    print("== sbatch script (submitted by sbatch outside an allocation)")
    print(render_sbatch(plan, cluster, _script_args(args), os.path.join(s.output_dir, "slurm")), end="")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    user: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, user = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["overrides", "check", "info", "sbatch", "sbatch-command", "dry-run", "list",
                                            "smoke-args"])
    parser.add_argument("kind", nargs="?", help="list: pair | exp")
    parser.add_argument("--pair", default="qwen2.5-math-1.5b_7b")
    parser.add_argument("--exp", default="codistill")
    parser.add_argument("--nodes", type=int, help="default: the cluster config's nodes")
    parser.add_argument("--gpus-per-node", type=int, help="default: the cluster config's gpus_per_node")
    parser.add_argument("--cluster", default="default")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--time")
    parser.add_argument("--available-gpus", type=int)
    parser.add_argument("--available-nodes", type=int)
    parser.add_argument("--write", help="sbatch: also write the script to this file")
    parser.add_argument("--out", help="smoke-args: the smoke run's output folder")
    parser.add_argument("--job-name", default="job", help="sbatch-command: job name suffix")
    parser.add_argument("--tsv", action="store_true", help="info: KEY<tab>VALUE lines instead of shell assignments")
    parser.add_argument("--steps", type=int, default=2, help="smoke-args: training steps")
    args = parser.parse_args(argv)
    args.overrides = user
    try:
        if args.command not in ("list", "smoke-args"):
            cluster = load("cluster", args.cluster)
            args.nodes = args.nodes if args.nodes is not None else int(cluster.get("nodes", 1))
            args.gpus_per_node = args.gpus_per_node if args.gpus_per_node is not None else int(cluster.get("gpus_per_node", 8))
        if args.command == "list":
            print(" ".join(available(args.kind or "pair")))
            return 0
        {"overrides": cmd_overrides, "check": cmd_check, "info": cmd_info, "sbatch": cmd_sbatch,
         "dry-run": cmd_dry_run, "smoke-args": cmd_smoke_args, "sbatch-command": cmd_sbatch_command}[args.command](args)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # CoDistillConfig.from_dict names the bad key itself
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
