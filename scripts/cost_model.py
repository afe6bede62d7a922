#!/usr/bin/env python
"""Step-cost model: GPU-seconds per training step by phase and model, and a run's GPU-hours.

    python scripts/cost_model.py --pair qwen2.5-math-1.5b_7b --exp codistill
    python scripts/cost_model.py --pair qwen2.5-math-1.5b_7b --exp codistill --metrics outputs/.../metrics.jsonl
    python scripts/cost_model.py --pair qwen2.5-math-1.5b_7b --exp grpo_large --resp-len 1200 -- trainer.total_training_steps=500
    python scripts/cost_model.py --phases my_gpu.jsonl --configs resolved.yaml --pair P --exp E

Inputs: per-phase GPU throughput (``--phases``, JSONL written by ``scripts/bench_gpu_phases.py``;
default: the H200 figures shipped in ``scripts/cost_data/``) and the run's settings, taken from the
project's resolved hydra config (``recipe.codistill_grpo.configuration.compose_config(pair, exp,
overrides)``, imported only by the CLI) or from ``--configs FILE`` (YAML/JSON: one resolved config,
or a mapping experiment name -> resolved config), which needs no config module.

The model, for one step of P prompts x n samples = R responses of (prompt + response) tokens T:

- generate (the generating model only): (R / decode_batch) x resp_len x decode_step_s, where
  decode_step_s = decode_linear (min of eager and CUDA-graphed) + decode_attn (all layers) at the
  measured batch nearest ``--decode-batch`` (default 256) and the measured context nearest
  prompt + response tokens;
- log-prob (old log-probs, no grad): R x T / logprob_fwd tokens/s, once for every loaded model
  (the generator; and the large model when it is loaded as the second model);
- train: R x T / train_fwd_bwd tokens/s (the ``_ckpt`` phase when gradient checkpointing is on) for
  every model that trains. The second (large) model's train is scaled by (1 - zero_adv_frac) when
  ``algorithm.codistill.large.skip_zero_grad`` is on; the generator's train the same way only in
  GRPO baselines (``kd.coef == 0``, where a zero outcome advantage means a zero gradient) with the
  skip on.
- log-prob and train use the measured seq nearest prompt + response tokens, preferring the
  configured micro-batch size.

Run metrics (``--metrics``: verl's file-logger JSONL, one ``{"step": N, "data": {...}}`` a line):
mean over the logged steps of ``response_length/mean`` (response tokens), ``prompt_length/mean``
(prompt tokens) and the first zero-advantage key present of ``large/skipped_frac``,
``small/skipped_frac``, ``actor/skipped_frac``, ``large/zero_adv_frac`` (fraction of samples
skipped for a zero advantage). Explicit
``--resp-len``, ``--prompt-len``, ``--zero-adv-frac`` win over the log.

Not modelled: FSDP communication, the optimizer step, vLLM's scheduler and sampling, weight sync,
reward scoring, offload, checkpoints and validation; GPU-hours assume perfect data-parallel scaling.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COST_DATA = REPO / "scripts" / "cost_data"
DEFAULT_PHASES = (COST_DATA / "h200_phase_cost.jsonl", COST_DATA / "h200_phase_cost_tail.jsonl")

DEFAULT_DECODE_BATCH = 256
DEFAULT_PROMPT_LEN = 200.0  # tokens; the worked example's figure, used when no run log is given
DEFAULT_RESP_LEN = 800.0
RESP_LEN_KEY = "response_length/mean"
PROMPT_LEN_KEY = "prompt_length/mean"
# first present wins: the large model's skip (CoDistill), the actor's skip (GRPO baselines)
ZERO_ADV_KEYS = ("large/skipped_frac", "small/skipped_frac", "actor/skipped_frac", "large/zero_adv_frac")
LOGPROB_PHASE = "logprob_fwd"
TRAIN_PHASES = {True: ("train_fwd_bwd_ckpt", "train_fwd_bwd"), False: ("train_fwd_bwd", "train_fwd_bwd_ckpt")}
PHASE_ORDER = ("generate", "log_prob", "train")
ROLE_ORDER = ("small", "large")
BASELINE_EXP = "grpo_large"


def model_key(path_or_id: str) -> str:
    """The model name used in phase files: 'Qwen/Qwen2.5-Math-1.5B' -> 'qwen2.5-math-1.5b',
    'meta-llama/Llama-3.2-1B-Instruct' -> 'llama-3.2-1b' (a local folder: its last component)."""
    name = str(path_or_id).rstrip("/").split("/")[-1].lower()
    return name[: -len("-instruct")] if name.endswith("-instruct") else name


# ---------------------------------------------------------------------------------------------
# phase table


@dataclass(frozen=True)
class Phases:
    rows: tuple[dict, ...]  # measurements (objects with a "phase")
    headers: tuple[dict, ...]  # everything else (GPU, torch, matmul TFLOP/s, params, done)
    sources: tuple[str, ...]

    @property
    def gpu(self) -> str:
        gpus = sorted({str(h["gpu"]) for h in self.headers if "gpu" in h})
        return ", ".join(gpus) or "unknown device"

    @property
    def shrunken(self) -> bool:
        return any(h.get("shrunken") for h in self.headers)

    def models(self) -> list[str]:
        return sorted({r["model"] for r in self.rows if "model" in r})


def load_phases(paths: str | Path | Iterable[str | Path]) -> Phases:
    """Read one or more phase JSONL files (bench_gpu_phases.py's format) into one table."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows, headers, sources = [], [], []
    for path in paths:
        path = Path(path)
        sources.append(str(path))
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None
            (rows if "phase" in obj else headers).append(obj)
    return Phases(tuple(rows), tuple(headers), tuple(sources))


def _nearest(values: Iterable[float], target: float) -> float:
    """The value nearest ``target`` on a log scale (ties: the larger, i.e. the costlier)."""
    return min(values, key=lambda v: (abs(math.log(v / target)), -v))


def _rows(phases: Phases, model: str, phase: str) -> list[dict]:
    return [
        r
        for r in phases.rows
        if r.get("model") == model and r.get("phase") == phase and not r.get("skipped") and not r.get("error")
    ]  # bench_gpu_phases.py's skipped / OOM rows


def _missing(phases: Phases, model: str, what: str) -> ValueError:
    return ValueError(
        f"no '{what}' figures for model '{model}' in {', '.join(phases.sources)} "
        f"(models there: {', '.join(phases.models()) or 'none'})"
    )


def throughput(
    phases: Phases, model: str, phase_names: Sequence[str], seq: float, micro_batch: int | None = None
) -> tuple[float, dict]:
    """Tokens/s of the first of ``phase_names`` measured for ``model``, at the measured seq nearest
    ``seq``, preferring rows with ``micro_batch``. Returns (tok_per_s, row)."""
    for name in phase_names:
        rows = _rows(phases, model, name)
        if rows:
            break
    else:
        raise _missing(phases, model, " or ".join(phase_names))
    same_micro = [r for r in rows if micro_batch is not None and r.get("micro_batch") == micro_batch]
    rows = same_micro or rows
    best = _nearest({r["seq"] for r in rows}, seq)
    row = [r for r in rows if r["seq"] == best][-1]
    tps = row.get("tok_per_s") or row["micro_batch"] * row["seq"] / row["s"]
    return float(tps), row


def decode_linear_s(row: dict) -> float:
    """A decode step's linear part: the faster of eager and CUDA-graphed (what vLLM would pick)."""
    values = [row[k] for k in ("s_eager", "s_graph", "s") if row.get(k) is not None]
    return float(min(values))


def decode_attn_s(row: dict) -> float:
    return float(row["s_all_layers"] if row.get("s_all_layers") is not None else row["s"])


def decode_step(phases: Phases, model: str, batch: float, ctx: float) -> dict:
    """One decode step of ``model``: linear part + attention, at the measured batch nearest
    ``batch`` (having both parts) and the measured ctx nearest ``ctx`` for that batch."""
    lin, attn = _rows(phases, model, "decode_linear"), _rows(phases, model, "decode_attn")
    if not lin:
        raise _missing(phases, model, "decode_linear")
    if not attn:
        raise _missing(phases, model, "decode_attn")
    batches = {r["batch"] for r in lin} & {r["batch"] for r in attn}
    if not batches:
        raise ValueError(f"decode_linear and decode_attn of '{model}' share no batch size")
    b = _nearest(batches, batch)
    attn_b = [r for r in attn if r["batch"] == b]
    c = _nearest({r["ctx"] for r in attn_b}, ctx)
    lin_s = decode_linear_s([r for r in lin if r["batch"] == b][-1])
    attn_s = decode_attn_s([r for r in attn_b if r["ctx"] == c][-1])
    return {"batch": b, "ctx": c, "linear_s": lin_s, "attn_s": attn_s, "s": lin_s + attn_s}


# ---------------------------------------------------------------------------------------------
# run settings


@dataclass(frozen=True)
class ModelSettings:
    path: str
    key: str  # name in the phase table
    grad_ckpt: bool = True
    train_micro: int | None = None
    logprob_micro: int | None = None


@dataclass(frozen=True)
class Settings:
    pair: str
    exp: str
    generator: str  # "small" or "large": generates and is the trained actor
    small: ModelSettings
    large: ModelSettings
    large_enabled: bool  # the large model loaded as the second model (forward: old log-probs)
    large_train: bool  # ... and trained
    kd_coef: float
    skip_zero_grad: bool
    prompts: int
    n: int
    steps: int
    nnodes: int
    gpus_per_node: int
    max_prompt_length: int | None = None
    max_response_length: int | None = None
    prompt_len: float = DEFAULT_PROMPT_LEN
    resp_len: float = DEFAULT_RESP_LEN
    zero_adv_frac: float = 0.0
    decode_batch: int = DEFAULT_DECODE_BATCH
    len_source: str = "default (no run log given)"
    zero_adv_source: str = "default (no run log given)"

    @property
    def responses(self) -> int:
        return self.prompts * self.n

    @property
    def seq(self) -> float:
        return self.prompt_len + self.resp_len

    @property
    def tokens(self) -> float:
        return self.responses * self.seq

    @property
    def gpus(self) -> int:
        return self.nnodes * self.gpus_per_node

    def model(self, role: str) -> ModelSettings:
        return self.small if role == "small" else self.large


_REQUIRED = object()


def _get(cfg: Any, dotted: str, default: Any = _REQUIRED) -> Any:
    """``cfg['a']['b']...`` for nested dicts or an omegaconf DictConfig."""
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except Exception:  # KeyError, omegaconf's ConfigKeyError/MissingMandatoryValue, TypeError
            if default is _REQUIRED:
                raise KeyError(f"the config has no '{dotted}'") from None
            return default
    if node is None and default is not _REQUIRED:
        return default
    return node


def _model_settings(cfg: Any, role: str) -> ModelSettings:
    path = str(_get(cfg, f"pair.{role}.model.path"))
    micro = _get(cfg, f"pair.{role}.actor.ppo_micro_batch_size_per_gpu", None)
    lp_micro = _get(cfg, f"pair.{role}.log_prob_micro_batch_size_per_gpu", None)
    return ModelSettings(
        path=path,
        key=model_key(path),
        grad_ckpt=bool(_get(cfg, f"pair.{role}.model.enable_gradient_checkpointing", True)),
        train_micro=None if micro is None else int(micro),
        logprob_micro=None if lp_micro is None else int(lp_micro),
    )


def settings_from_config(cfg: Any) -> Settings:
    """Run settings from the project's resolved config (a DictConfig or nested dicts), with the
    worked example's lengths (200 prompt + 800 response tokens, capped at the maximum lengths)
    and no zero-advantage skip; replace those with ``apply_run_figures``."""
    generator = str(_get(cfg, "exp.generator"))
    if generator not in ("small", "large"):
        raise ValueError(f"exp.generator must be 'small' or 'large', not {generator!r}")
    large_enabled = bool(_get(cfg, "algorithm.codistill.large.enable", False))
    if generator == "large" and large_enabled:
        raise ValueError(
            "exp.generator=large with algorithm.codistill.large.enable=true: "
            "the large model cannot be both the actor and the second model"
        )
    max_p = _get(cfg, "data.max_prompt_length", None)
    max_r = _get(cfg, "data.max_response_length", None)
    prompt_len, resp_len = min(DEFAULT_PROMPT_LEN, max_p or math.inf), min(DEFAULT_RESP_LEN, max_r or math.inf)
    len_source = "default (no run log given)"
    if (prompt_len, resp_len) != (DEFAULT_PROMPT_LEN, DEFAULT_RESP_LEN):
        len_source = (
            f"default {DEFAULT_PROMPT_LEN:g} + {DEFAULT_RESP_LEN:g} capped at data.max_prompt_length / "
            f"max_response_length (no run log given)"
        )
    return Settings(
        pair=str(_get(cfg, "pair.name")),
        exp=str(_get(cfg, "exp.name")),
        generator=generator,
        small=_model_settings(cfg, "small"),
        large=_model_settings(cfg, "large"),
        large_enabled=large_enabled,
        large_train=large_enabled and bool(_get(cfg, "algorithm.codistill.large.train", False)),
        kd_coef=float(_get(cfg, "algorithm.codistill.kd.coef", 0.0)),
        skip_zero_grad=bool(_get(cfg, "algorithm.codistill.large.skip_zero_grad", False)),
        prompts=int(_get(cfg, "data.train_batch_size")),
        n=int(_get(cfg, "actor_rollout_ref.rollout.n")),
        steps=int(_get(cfg, "trainer.total_training_steps")),
        nnodes=int(_get(cfg, "trainer.nnodes")),
        gpus_per_node=int(_get(cfg, "trainer.n_gpus_per_node")),
        max_prompt_length=None if max_p is None else int(max_p),
        max_response_length=None if max_r is None else int(max_r),
        prompt_len=float(prompt_len),
        resp_len=float(resp_len),
        len_source=len_source,
    )


@dataclass(frozen=True)
class RunMetrics:
    path: str
    steps: int  # step lines read
    resp_len: float | None
    prompt_len: float | None
    zero_adv_frac: float | None
    zero_adv_key: str | None


def read_run_metrics(path: str | Path) -> RunMetrics:
    """Means over steps of a finished run's verl file-logger JSONL (see the module docstring)."""
    path = Path(path)
    series: dict[str, list[float]] = {}
    steps = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from None
        data = obj.get("data", {}) if isinstance(obj, dict) else {}
        for key in (RESP_LEN_KEY, PROMPT_LEN_KEY, *ZERO_ADV_KEYS):
            value = data.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, []).append(float(value))
                steps.add(obj.get("step"))

    def mean(key):
        return sum(series[key]) / len(series[key]) if series.get(key) else None

    zkey = next((k for k in ZERO_ADV_KEYS if series.get(k)), None)
    return RunMetrics(
        str(path), len(steps), mean(RESP_LEN_KEY), mean(PROMPT_LEN_KEY), mean(zkey) if zkey else None, zkey
    )


def apply_run_figures(
    s: Settings,
    *,
    metrics: RunMetrics | None = None,
    resp_len: float | None = None,
    prompt_len: float | None = None,
    zero_adv_frac: float | None = None,
    decode_batch: int | None = None,
    steps: int | None = None,
) -> Settings:
    """Lengths and zero-advantage fraction from a run log and/or explicit values (explicit wins)."""
    changes: dict[str, Any] = {}
    len_src = []
    if metrics is not None and metrics.resp_len is not None:
        changes["resp_len"] = metrics.resp_len
        len_src.append(f"response {RESP_LEN_KEY} mean of {metrics.steps} steps in {metrics.path}")
    if metrics is not None and metrics.prompt_len is not None:
        changes["prompt_len"] = metrics.prompt_len
        len_src.append(f"prompt {PROMPT_LEN_KEY} from the same log")
    if resp_len is not None:
        changes["resp_len"] = float(resp_len)
        len_src.append("response --resp-len")
    if prompt_len is not None:
        changes["prompt_len"] = float(prompt_len)
        len_src.append("prompt --prompt-len")
    if len_src:
        if "prompt_len" not in changes:
            len_src.append(f"prompt default {DEFAULT_PROMPT_LEN:g}")
        if "resp_len" not in changes:
            len_src.append(f"response default {DEFAULT_RESP_LEN:g}")
        changes["len_source"] = "; ".join(len_src)
    if zero_adv_frac is not None:
        changes["zero_adv_frac"], changes["zero_adv_source"] = float(zero_adv_frac), "--zero-adv-frac"
    elif metrics is not None:
        if metrics.zero_adv_frac is not None:
            changes["zero_adv_frac"] = metrics.zero_adv_frac
            changes["zero_adv_source"] = f"{metrics.zero_adv_key} mean in {metrics.path}"
        else:
            changes["zero_adv_source"] = f"0: none of {', '.join(ZERO_ADV_KEYS)} in {metrics.path}"
    if decode_batch is not None:
        changes["decode_batch"] = int(decode_batch)
    if steps is not None:
        changes["steps"] = int(steps)
    out = replace(s, **changes)
    if not 0.0 <= out.zero_adv_frac <= 1.0:
        raise ValueError(f"zero-advantage fraction must be in [0, 1], got {out.zero_adv_frac}")
    if out.resp_len <= 0 or out.prompt_len < 0 or out.decode_batch <= 0:
        raise ValueError("lengths and decode batch must be positive")
    return out


def grpo_large_settings(s: Settings, zero_adv_frac: float | None = None) -> Settings:
    """The grpo_large baseline for the same pair, batch, lengths and steps: the large model
    generates and trains alone with kd.coef 0 (zero-adv fraction: the experiment's unless given)."""
    return replace(
        s,
        exp=BASELINE_EXP,
        generator="large",
        large_enabled=False,
        large_train=False,
        kd_coef=0.0,
        zero_adv_frac=s.zero_adv_frac if zero_adv_frac is None else float(zero_adv_frac),
    )


# ---------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class Line:
    phase: str  # generate | log_prob | train
    role: str  # small | large
    model: str
    seconds: float
    how: str  # the arithmetic, for the report


def _train_scale(s: Settings, role: str) -> float:
    """1 - zero_adv_frac where zero-advantage samples are skipped in training, else 1."""
    if not s.skip_zero_grad:
        return 1.0
    second_large = role == "large" and s.generator == "small" and s.large_train
    grpo_actor = role == s.generator and s.kd_coef == 0
    return 1.0 - s.zero_adv_frac if (second_large or grpo_actor) else 1.0


def roles(s: Settings) -> dict[str, list[str]]:
    """Which pair models run each phase."""
    loaded = [s.generator] + (["large"] if s.generator == "small" and s.large_enabled else [])
    trains = [s.generator] + (["large"] if s.generator == "small" and s.large_train else [])
    return {"generate": [s.generator], "log_prob": loaded, "train": trains}


def step_cost_detail(phases: Phases, s: Settings) -> list[Line]:
    """Per (phase, model) GPU-seconds of one step, with the figures used."""
    lines = []
    who = roles(s)
    for role in ROLE_ORDER:
        if role not in who["generate"]:
            continue
        m = s.model(role)
        d = decode_step(phases, m.key, s.decode_batch, s.seq)
        batches = s.responses / s.decode_batch
        sec = batches * s.resp_len * d["s"]
        how = (
            f"{s.responses}/{s.decode_batch} = {batches:g} batches x {s.resp_len:g} steps x {d['s'] * 1e3:.2f} ms "
            f"(decode B={d['batch']:g}, ctx {d['ctx']:g}: {d['linear_s'] * 1e3:.2f} + {d['attn_s'] * 1e3:.2f} ms)"
        )
        lines.append(Line("generate", role, m.key, sec, how))
    for role in ROLE_ORDER:
        if role not in who["log_prob"]:
            continue
        m = s.model(role)
        tps, row = throughput(phases, m.key, (LOGPROB_PHASE,), s.seq, m.logprob_micro)
        how = f"{s.tokens:,.0f} tok / {tps:,.0f} tok/s ({row['phase']}, micro {row['micro_batch']}, seq {row['seq']})"
        lines.append(Line("log_prob", role, m.key, s.tokens / tps, how))
    for role in ROLE_ORDER:
        if role not in who["train"]:
            continue
        m = s.model(role)
        tps, row = throughput(phases, m.key, TRAIN_PHASES[m.grad_ckpt], s.seq, m.train_micro)
        scale = _train_scale(s, role)
        how = f"{s.tokens:,.0f} tok / {tps:,.0f} tok/s ({row['phase']}, micro {row['micro_batch']}, seq {row['seq']})"
        if scale != 1.0:
            how += f" x (1 - {s.zero_adv_frac:.3g}) zero-adv skip"
        lines.append(Line("train", role, m.key, s.tokens / tps * scale, how))
    return lines


def step_cost(phases: Phases, s: Settings) -> dict[tuple[str, str], float]:
    """{(phase, role): GPU-seconds of one step}; phase in generate | log_prob | train, role small | large."""
    return {(ln.phase, ln.role): ln.seconds for ln in step_cost_detail(phases, s)}


def total(cost: Mapping[tuple[str, str], float]) -> float:
    return sum(cost.values())


def large_share(cost: Mapping[tuple[str, str], float]) -> float:
    """The large model's own log-prob + train GPU-seconds."""
    return cost.get(("log_prob", "large"), 0.0) + cost.get(("train", "large"), 0.0)


def gpu_hours(s: Settings, per_step_s: float) -> float:
    return s.steps * per_step_s / 3600.0


# ---------------------------------------------------------------------------------------------
# report


def _assumptions(phases: Phases, s: Settings, lines: list[Line], baseline: Settings | None) -> list[str]:
    gen = next(ln for ln in lines if ln.phase == "generate")
    d = decode_step(phases, gen.model, s.decode_batch, s.seq)
    seqs = sorted({int(x) for x in (r.get("seq") for r in phases.rows if r.get("model") == gen.model) if x})
    applied = [f"{ln.phase} {ln.role}" for ln in lines if ln.phase == "train" and _train_scale(s, ln.role) != 1.0]
    out = [
        f"decode batch: {s.decode_batch} sequences per GPU for the whole response (measured batch used: {d['batch']:g}); "
        f"no tail of part-empty batches",
        f"decode ctx: {d['ctx']:g} tokens, the measured ctx nearest prompt + response = {s.seq:g} "
        f"(attention cost taken at that ctx for every step)",
        f"log-prob and train: measured seq nearest {s.seq:g} tokens (measured: {', '.join(map(str, seqs))}), "
        f"configured micro-batch where measured",
        f"lengths: prompt {s.prompt_len:g} + response {s.resp_len:g} tokens per sample: {s.len_source}",
        f"zero-advantage fraction {s.zero_adv_frac:.3g}: {s.zero_adv_source}; skip_zero_grad "
        f"{'on' if s.skip_zero_grad else 'off'}; scales: {', '.join(applied) if applied else 'nothing'}",
        "not modelled: FSDP communication, optimizer step, vLLM scheduler/sampling overhead, weight sync, "
        "reward scoring, offload, checkpoints, validation",
        "each phase at one GPU's measured throughput; GPU-seconds add up across GPUs (no TP for rollouts)",
    ]
    if baseline is not None:
        out.append(
            f"{BASELINE_EXP} baseline: same pair, batch, lengths and steps; the large model generates and "
            f"trains alone, kd.coef 0, zero-adv fraction {baseline.zero_adv_frac:.3g}"
        )
    if phases.shrunken:
        out.append("WARNING: the phase file comes from a shrunken CPU run: its figures mean nothing for sizing")
    return out


def format_report(
    phases: Phases,
    s: Settings,
    lines: list[Line],
    baseline: Settings | None = None,
    baseline_lines: list[Line] | None = None,
) -> str:
    cost = {(ln.phase, ln.role): ln.seconds for ln in lines}
    tot = total(cost)
    out = [
        f"Step cost: pair {s.pair}, experiment {s.exp} (GPU-seconds per training step)",
        f"phases: {', '.join(phases.sources)} ({phases.gpu})",
        f"step: {s.prompts} prompts x {s.n} samples = {s.responses} responses x ({s.prompt_len:g} prompt + "
        f"{s.resp_len:g} response) tokens = {s.tokens:,.0f} tokens",
        "",
    ]
    width = max(len(ln.model) for ln in lines)
    out.append(f"{'phase':<9} {'model':<{width + 6}} {'GPU-s':>8}  figure used")
    for ln in lines:
        out.append(f"{ln.phase:<9} {ln.role:<5} {ln.model:<{width}} {ln.seconds:8.1f}  {ln.how}")
    out.append(f"{'total':<9} {'':<{width + 6}} {tot:8.1f}")
    out.append("")
    per_model = {r: sum(v for (_, role), v in cost.items() if role == r) for r in ROLE_ORDER}
    out.append("per model: " + ", ".join(f"{r} {v:.1f} GPU-s ({v / tot:.1%})" for r, v in per_model.items() if v))
    share = large_share(cost)
    if any(role == "large" for _, role in cost):
        note = "; it also generates here" if s.generator == "large" else ""
        out.append(
            f"large model's own share (its log-prob + train{note}): {share:.1f} GPU-s/step = "
            f"{share / tot:.1%} of the step"
        )
    else:
        out.append("large model: not loaded in this experiment")
    if baseline_lines is not None:
        btot = sum(ln.seconds for ln in baseline_lines)
        out.append(
            f"vs {BASELINE_EXP} baseline ({btot:.1f} GPU-s/step: "
            + " + ".join(f"{ln.phase} {ln.seconds:.1f}" for ln in baseline_lines)
            + f"): {s.exp}/{BASELINE_EXP} = {tot / btot:.3f}"
        )
    gh = gpu_hours(s, tot)
    out.append(
        f"run: {s.steps} steps x {tot:.1f} GPU-s = {gh:.2f} GPU-hours; on {s.nnodes} node(s) x "
        f"{s.gpus_per_node} GPUs = {gh / s.gpus:.2f} wall-hours (assumes perfect scaling)"
    )
    out.append("")
    out.append("assumptions:")
    out.extend(f"- {a}" for a in _assumptions(phases, s, lines, baseline))
    return "\n".join(out)


def format_line(s: Settings, lines: list[Line], baseline_lines: list[Line] | None = None) -> str:
    """The estimate in one line (what the launcher's dry run prints)."""
    by_phase: dict[str, float] = {}
    for ln in lines:
        by_phase[ln.phase] = by_phase.get(ln.phase, 0.0) + ln.seconds
    tot = sum(by_phase.values())
    gh = gpu_hours(s, tot)
    parts = ", ".join(f"{phase.replace('_', '-')} {v:.1f}" for phase, v in by_phase.items())
    out = (
        f"estimated cost: {tot:.1f} GPU-s/step ({parts}); {s.steps} steps = {gh:.1f} GPU-hours, "
        f"{gh / s.gpus:.1f} h on {s.gpus} GPUs"
    )
    if baseline_lines is not None:
        out += f"; {s.exp}/{BASELINE_EXP} = {tot / sum(ln.seconds for ln in baseline_lines):.3f}"
    return out + " (scripts/cost_model.py, the shipped H200 figures; assumptions: run it without --line)"


# ---------------------------------------------------------------------------------------------
# CLI


def compose(pair: str, exp: str, overrides: Sequence[str] = ()) -> Any:
    """The project's resolved config (imported here only: the rest of this module needs no config module)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # this checkout's recipe package, not another installed copy
    try:
        from recipe.codistill_grpo.configuration import compose_config
    except ImportError as e:
        raise SystemExit(
            f"cost_model: cannot compose the config ({e}); pass --configs FILE "
            f"(resolved config(s) as YAML/JSON) instead"
        ) from None
    return compose_config(pair, exp, list(overrides))


def load_configs_file(path: str | Path, exp: str) -> Any:
    """``--configs``: one resolved config, or a mapping experiment name -> resolved config."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise SystemExit(f"cost_model: {path} holds no mapping")
    if "exp" in data and "pair" in data:
        return data
    if exp not in data:
        raise SystemExit(f"cost_model: {path} has no config for experiment '{exp}' (has: {', '.join(data)})")
    return data[exp]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Everything after -- goes to compose_config as hydra overrides."
    )
    ap.add_argument("--pair", required=True, help="model pair, e.g. qwen2.5-math-1.5b_7b")
    ap.add_argument("--exp", required=True, help="experiment, e.g. codistill, grpo_large")
    ap.add_argument(
        "--phases", action="append", help="phase JSONL (repeatable); default: the H200 files in scripts/cost_data/"
    )
    ap.add_argument(
        "--configs",
        help="resolved config(s) as YAML/JSON instead of compose_config "
        "(one config, or a mapping experiment -> config)",
    )
    ap.add_argument(
        "--metrics",
        help="a finished run's verl file-logger JSONL: mean response/prompt length and zero-advantage fraction",
    )
    ap.add_argument("--resp-len", type=float, help=f"mean response tokens (default {DEFAULT_RESP_LEN:g})")
    ap.add_argument("--prompt-len", type=float, help=f"mean prompt tokens (default {DEFAULT_PROMPT_LEN:g})")
    ap.add_argument("--zero-adv-frac", type=float, help="fraction of samples with zero advantage (default 0)")
    ap.add_argument(
        "--baseline-zero-adv-frac",
        type=float,
        help=f"zero-advantage fraction for the {BASELINE_EXP} baseline (default: the experiment's)",
    )
    ap.add_argument(
        "--decode-batch", type=int, help=f"sequences decoded at once per GPU (default {DEFAULT_DECODE_BATCH})"
    )
    ap.add_argument("--steps", type=int, help="training steps (default trainer.total_training_steps)")
    ap.add_argument("--line", action="store_true", help="print the estimate in one line")
    args = ap.parse_args(argv)

    if args.configs and overrides:
        ap.error("overrides after -- go to compose_config; with --configs, put them in the config file")
    try:
        phases = load_phases(args.phases or DEFAULT_PHASES)
        cfg = load_configs_file(args.configs, args.exp) if args.configs else compose(args.pair, args.exp, overrides)
        s = settings_from_config(cfg)
        if s.pair != args.pair or s.exp != args.exp:
            raise SystemExit(
                f"cost_model: the config is pair '{s.pair}', experiment '{s.exp}', not '{args.pair}', '{args.exp}'"
            )
        metrics = read_run_metrics(args.metrics) if args.metrics else None
        s = apply_run_figures(
            s,
            metrics=metrics,
            resp_len=args.resp_len,
            prompt_len=args.prompt_len,
            zero_adv_frac=args.zero_adv_frac,
            decode_batch=args.decode_batch,
            steps=args.steps,
        )
        lines = step_cost_detail(phases, s)
        baseline = baseline_lines = None
        if s.exp != BASELINE_EXP:
            baseline = grpo_large_settings(s, args.baseline_zero_adv_frac)
            baseline_lines = step_cost_detail(phases, baseline)
    except (ValueError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise SystemExit(f"cost_model: {msg}") from None
    print(
        format_line(s, lines, baseline_lines)
        if args.line
        else format_report(phases, s, lines, baseline, baseline_lines)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
