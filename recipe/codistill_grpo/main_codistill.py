"""Hydra entry point of the CoDistill-GRPO recipe (the recipe's counterpart of verl's ``main_ppo``).

    python -m recipe.codistill_grpo.main_codistill pair=qwen2.5-math-1.5b_7b exp=codistill \\
        [platform=cpu] [key=value ...]

Before Ray starts: the groups must be plain names, the config passes every check
(``configuration.check_config``), the models, tokenizers and data files are checked
(``preflight``); any failure is one line ``codistill: <message>`` and exit status 1.
``run.dry_run=true`` prints the launch plan and starts nothing; the resolved config goes to the file
``$CODISTILL_DRY_RUN_CONFIG`` (default: a new ``codistill-dry-run-<pair>-<exp>-*.yaml`` in the temp
folder), whose name it prints.

Then the run folder (``run.dir``) is locked, resumed or started (``run.fresh`` moves an old run
aside), the resolved config is written there, and verl's ``run_ppo`` runs the recipe's task runner.
The console shows one line per step; every metric goes to ``<run.dir>/metrics.jsonl``.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from recipe.codistill_grpo import configuration, preflight
from recipe.codistill_grpo.run_folder import RunComplete, RunFolderError, open_run


def say(message: str) -> None:
    print(f"codistill: {message}", flush=True)


def _step_printer(config: DictConfig):
    keys = list(config.run.console_metrics)
    total = config.trainer.total_training_steps or "?"
    start = time.monotonic()

    def on_row(row: dict) -> None:
        data = row.get("data", {})
        shown = "  ".join(f"{k}={data[k]:.4g}" for k in keys if isinstance(data.get(k), (int, float)))
        print(
            f"codistill: step {row.get('step')}/{total}  {shown}  ({time.monotonic() - start:.0f}s elapsed)", flush=True
        )

    return on_row


def _needed_models(plan: configuration.RunPlan) -> tuple[str, ...]:
    return tuple(dict.fromkeys([plan.config.exp.generator, *(["large"] if plan.large is not None else [])]))


class _Tee:
    """A text stream that also appends to the run's ``train.log`` (the console output, every attempt)."""

    def __init__(self, stream, log):
        self._stream, self._log = stream, log

    def write(self, text):
        self._log.write(text)
        return self._stream.write(text)

    def flush(self):
        self._log.flush()
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextmanager
def _teed(path: str):
    with open(path, "a") as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def _check(config: DictConfig) -> tuple[configuration.RunPlan, dict[str, str], list[str]]:
    """Everything before the run folder is touched; raises ``SystemExit`` with one line."""
    choices = HydraConfig.get().runtime.choices
    try:
        for group in configuration.GROUPS:
            configuration.check_choice(group, choices.get(group))
        for group in ("pair", "exp"):
            if config[group].name != choices[group]:
                raise configuration.ConfigError(
                    f"configs/{group}/{choices[group]}.yaml sets {group}.name={config[group].name!r}; "
                    "it must be its file name"
                )
        env = {k: str(v) for k, v in (OmegaConf.to_container(config.run.env, resolve=True) or {}).items()}
        os.environ.update(env)
        warnings.filterwarnings("ignore", category=UserWarning, module="verl.workers.engine")
        from recipe.codistill_grpo import plugin  # registration (and the CPU shim) in this process

        plugin.load_platform_shim()
        plan = configuration.check_config(config)
        configuration.check_allocation(plan, os.environ)
        dry_run = bool(plan.config.run.dry_run)
        lines = []
        if not dry_run and plan.config.run.get("cpu_pair"):
            from recipe.codistill_grpo.cpu.stand_in import ensure_stand_in

            try:
                lines.append(ensure_stand_in(plan.config.run.cpu_pair, _needed_models(plan)))
            except OSError as e:
                reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
                where = e.filename or plan.config.run.cpu_pair.dir
                raise configuration.ConfigError(
                    f"cannot build the CPU stand-in pair in {plan.config.run.cpu_pair.dir} ({where}: {reason}); "
                    "set CODISTILL_OUTPUT_DIR to a writable folder"
                ) from None
        large_path = str(plan.large.model.path) if plan.large is not None else None
        more, plan.data_report = preflight.check_files(plan.config, large_path, strict=not dry_run)
        lines += more
    except (configuration.ConfigError, preflight.PreflightError) as e:
        raise SystemExit(f"codistill: {e}") from None
    return plan, env, lines


def _write_dry_run_config(config: DictConfig) -> tuple[str, int]:
    """Save a dry run's resolved config to ``$CODISTILL_DRY_RUN_CONFIG`` or, unset, a new file in the
    temp folder (never the run folder: a dry run leaves the outputs alone); returns the path and its lines."""
    path = os.environ.get("CODISTILL_DRY_RUN_CONFIG")
    if not path:
        pair, exp = config.pair.name, config.exp.name
        fd, path = tempfile.mkstemp(prefix=f"codistill-dry-run-{pair}-{exp}-", suffix=".yaml")
        os.close(fd)
    text = OmegaConf.to_yaml(config)
    try:
        Path(path).write_text(text)
    except OSError as e:
        raise SystemExit(f"codistill: cannot write the dry run's config to {path} ({e.strerror or e})") from None
    return path, len(text.splitlines())


def _summary(plan: configuration.RunPlan, first: int, last: int, rows: list[dict]) -> None:
    folder = plan.config.run.dir
    say(
        f"done: steps {max(first, 0) + 1}..{last} of {plan.config.trainer.total_training_steps} in {folder} "
        f"(host {socket.gethostname()})"
    )
    if rows:
        data = rows[-1].get("data", {})
        shown = ", ".join(
            f"{k}={data[k]:.4g}" for k in plan.config.run.console_metrics if isinstance(data.get(k), (int, float))
        )
        say(f"step {rows[-1].get('step')}: {shown}")
    say(f"metrics (one JSON line per step): {folder}/metrics.jsonl")
    ckpt = Path(folder) / "checkpoints" / f"global_step_{last}"
    if ckpt.is_dir():
        say(f"checkpoint: {ckpt} (contains: {' '.join(sorted(p.name for p in ckpt.iterdir()))})")


def run(config: DictConfig) -> None:
    plan, env, lines = _check(config)
    if plan.config.run.dry_run:
        path, n = _write_dry_run_config(plan.config)
        say(f"resolved config ({n} lines): {path}")
        say("dry run (nothing started); the launch plan:")
        for line in configuration.launch_plan(plan) + lines:
            print(f"  {line}")
        return

    folder = plan.config.run.dir
    subs = []
    if plan.config.run.get("cpu_pair"):
        # what configs/platform/cpu.yaml changes in this pair x experiment (the user's overrides aside)
        pair, exp = plan.config.pair.name, plan.config.exp.name
        subs = configuration.substitutions(
            configuration.resolved(configuration.compose_config(pair, exp, platform="cpu")),
            configuration.resolved(configuration.compose_config(pair, exp, platform="gpu")),
        )
    try:
        notes: list[str] = []
        total = plan.config.trainer.total_training_steps
        with open_run(
            folder, bool(plan.config.run.fresh), say=notes.append, on_row=_step_printer(plan.config), total_steps=total
        ) as metrics:
            with _teed(os.path.join(folder, "train.log")):
                for line in notes + lines:
                    say(line)
                if subs:
                    Path(folder, "cpu_substitutions.txt").write_text("\n".join(subs) + "\n")
                    say(
                        f"CPU substitutions (configs/platform/cpu.yaml): {len(subs)} keys differ from platform=gpu, "
                        f"listed in {folder}/cpu_substitutions.txt"
                    )
                with open_dict(config):
                    if plan.data_report is not None and plan.data_report.drops:
                        preflight.write_filtered(plan.data_report, Path(folder) / "data", config)
                    config.ray_kwargs.ray_init.runtime_env.env_vars = env
                OmegaConf.save(configuration.resolved(config), os.path.join(folder, "config.yaml"))
                say("\n  ".join(["launch plan:"] + configuration.launch_plan(plan)))
                first = metrics.last_step
                try:
                    complete = _run_ppo(config)
                finally:
                    metrics.stop()  # the last steps' lines go to train.log too
                if complete is not None:
                    say(complete)
                    return
                _summary(plan, first, metrics.last_step, metrics.rows_since(first))
    except RunComplete as e:
        for line in notes:
            say(line)
        say(str(e))  # exit status 0: nothing was changed
    except RunFolderError as e:
        raise SystemExit(f"codistill: {e}") from None


def _run_ppo(config: DictConfig) -> str | None:
    """verl's ``run_ppo`` with the recipe's task runner; the trainer's "run is complete" line, or None."""
    import ray
    from verl.trainer.main_ppo import run_ppo

    from recipe.codistill_grpo.task_runner import CoDistillTaskRunner
    from recipe.codistill_grpo.trainer import CoDistillRunComplete, CoDistillRunError

    try:
        run_ppo(config, task_runner_class=CoDistillTaskRunner)
    except ray.exceptions.RayTaskError as e:
        cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
        inner = getattr(e, "cause", None)
        if isinstance(cause, CoDistillRunComplete) or isinstance(inner, CoDistillRunComplete):
            return str(inner or cause)
        if isinstance(cause, CoDistillRunError) or isinstance(inner, CoDistillRunError):
            raise SystemExit(f"codistill: {inner or cause}") from None
        raise
    return None


def check_group_arguments(argv: list[str]) -> None:
    """``pair=``, ``exp=``, ``platform=`` on the command line must be names of configs/<group>/ files.

    Checked before hydra composes (hydra would load ``exp=../pair/x`` from outside the folder, and
    report an unknown option with a traceback hint); parsed with hydra's own override parser.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:
        return  # not an override hydra accepts: hydra reports it
    try:
        for override in overrides:
            if override.get_key_element() in configuration.GROUPS:
                configuration.check_choice(override.get_key_element(), override.value())
    except configuration.ConfigError as e:
        raise SystemExit(f"codistill: {e}") from None


@hydra.main(config_path="config", config_name="codistill", version_base=None)
def main(config: DictConfig) -> None:
    run(config)


if __name__ == "__main__":
    for var, default in (("CODISTILL_OUTPUT_DIR", "outputs"), ("CODISTILL_DATA_DIR", "data")):
        os.environ[var] = os.path.abspath(os.environ.get(var, default))
    check_group_arguments(sys.argv[1:])
    main()
