"""The CPU preset: environment and hydra overrides that run the recipe on a host with no GPU.

One place for the tests, ``scripts/bench_step.py``, ``python -m recipe.codistill_grpo.cpu.smoke`` and
``scripts/run_qwen_math.sh`` (CPU branch). Never used on the GPU path.

    env = cpu_env()                  # VERL_PLATFORM=cpu, VERL_ENGINE_DEVICE=cuda, VERL_USE_EXTERNAL_MODULES=...
    args = cpu_overrides(small=..., large=..., train=..., val=..., out_dir=..., steps=3)
    subprocess.run([sys.executable, "-m", "recipe.codistill_grpo.main_codistill", *args], env={**os.environ, **env})

Why each override is there: /work/shared/CPU_NOTES.md (numbers in brackets below).
"""

from __future__ import annotations

import os
from pathlib import Path

CPU_EXTERNAL_MODULES = (
    "recipe.codistill_grpo.cpu.platform",
    "recipe.codistill_grpo.cpu.hf_rollout",
    "verl_ext.codistill",
)
TOY_REWARD_PATH = str(Path(__file__).with_name("toy_reward.py"))


def cpu_env(out_dir: str | None = None, base: dict | None = None) -> dict[str, str]:
    """Environment for a CPU run (set before the first ``import verl``; Ray workers inherit it).

    With ``out_dir``, verl's file logger writes the per-step metrics to ``out_dir/metrics.jsonl``.
    """
    base = dict(os.environ if base is None else base)
    mods = [m for m in base.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    for m in CPU_EXTERNAL_MODULES:
        if m not in mods:
            mods.append(m)
    env = {
        "VERL_PLATFORM": "cpu",  # [4] select the CPU platform registered by cpu/platform.py
        "VERL_ENGINE_DEVICE": "cuda",  # [6] reuse verl's FSDP engine (it runs on CPU tensors)
        "VERL_USE_EXTERNAL_MODULES": ",".join(mods),
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DEDUP_LOGS": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": base.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[3]), base.get("PYTHONPATH", "")) if p),
    }
    if out_dir is not None:
        env["VERL_FILE_LOGGER_PATH"] = str(Path(out_dir).resolve() / "metrics.jsonl")
    return env


def cpu_overrides(
    small: str,
    large: str | None,
    train: str,
    val: str,
    out_dir: str,
    steps: int = 2,
    *,
    batch_size: int = 4,
    n: int = 4,
    max_prompt_length: int = 128,
    max_response_length: int = 16,
    save_freq: int = -1,
    test_freq: int = -1,
    val_before_train: bool = False,
    toy_reward: bool = True,
    lr: float = 1e-3,
    large_lr: float = 1e-3,
) -> list[str]:
    """Hydra overrides for a CPU run of the recipe on the tiny pair (or any small HF pair).

    ``large=None`` turns the large model off (plain GRPO on the small model, ``kd.coef=0``).
    Metrics go to the console and, through verl's file logger, to ``$VERL_FILE_LOGGER_PATH``
    (``cpu_env(out_dir)`` sets it to ``out_dir/metrics.jsonl``); checkpoints to ``out_dir/checkpoints``.
    """
    out = Path(out_dir).resolve()
    args = [
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"data.train_batch_size={batch_size}",
        f"data.max_prompt_length={max_prompt_length}",
        f"data.max_response_length={max_response_length}",
        "data.dataloader_num_workers=0",  # [12]
        "data.filter_overlong_prompts=false",
        "+data.seed=1",
        f"actor_rollout_ref.model.path={small}",
        "actor_rollout_ref.model.use_remove_padding=false",  # [7]
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",  # [7]
        "actor_rollout_ref.model.enable_gradient_checkpointing=false",
        "actor_rollout_ref.actor.strategy=fsdp2",  # [8]
        f"actor_rollout_ref.actor.optim.lr={lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={batch_size * n}",
        "actor_rollout_ref.actor.use_kl_loss=false",
        "actor_rollout_ref.actor.entropy_coeff=0",
        "actor_rollout_ref.actor.use_torch_compile=false",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
        # fp32 compute (verl's FSDP default is bf16 mixed precision, slow and lossy on CPU)
        *(f"+actor_rollout_ref.{r}.fsdp_config.mixed_precision.{k}=fp32" for r in ("actor", "ref")
          for k in ("param_dtype", "reduce_dtype", "buffer_dtype")),
        "actor_rollout_ref.ref.use_torch_compile=false",
        "actor_rollout_ref.ref.fsdp_config.use_torch_compile=false",
        "actor_rollout_ref.rollout.name=hf",  # [9] cpu/hf_rollout.py
        "actor_rollout_ref.rollout.mode=async",
        f"actor_rollout_ref.rollout.n={n}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",  # [11]
        "actor_rollout_ref.rollout.agent.num_workers=1",  # [12]
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={batch_size * n}",
        f"actor_rollout_ref.rollout.prompt_length={max_prompt_length}",
        f"actor_rollout_ref.rollout.response_length={max_response_length}",
        "actor_rollout_ref.rollout.free_cache_engine=false",
        "actor_rollout_ref.rollout.enforce_eager=true",
        "reward.num_workers=1",  # [12]
        "trainer.use_v1=false",  # [1]
        "trainer.device=cpu",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=100",
        f"trainer.save_freq={save_freq}",
        f"trainer.test_freq={test_freq}",
        f"trainer.val_before_train={str(val_before_train).lower()}",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        "trainer.project_name=codistill_cpu",
        "trainer.experiment_name=smoke",
        "+ray_kwargs.ray_init.num_gpus=1",  # [3] one logical GPU
        "ray_kwargs.ray_init.num_cpus=16",  # [3]
    ]
    if toy_reward:
        args += [
            f"reward.custom_reward_function.path={TOY_REWARD_PATH}",
            "reward.custom_reward_function.name=compute_score",
        ]
    if large is None:
        args += ["algorithm.codistill.large.enable=false", "algorithm.codistill.kd.coef=0"]
    else:
        args += [
            f"large_actor.model.path={large}",
            "large_actor.model.enable_gradient_checkpointing=false",
            f"large_actor.actor.optim.lr={large_lr}",
            f"large_actor.actor.ppo_micro_batch_size_per_gpu={batch_size * n}",
            f"large_actor.log_prob_micro_batch_size_per_gpu={batch_size * n}",
        ]
    return args
