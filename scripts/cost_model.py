#!/usr/bin/env python
"""Step-cost model: GPU-seconds per training step by phase and model, and a run's GPU-hours.

    python scripts/cost_model.py --pair qwen2.5-math-1.5b_7b --exp codistill [--metrics <run>/metrics.jsonl]
    python scripts/cost_model.py --pair P --exp grpo_large --resp-len 1200 -- trainer.total_training_steps=500
    python scripts/cost_model.py --phases my_gpu.jsonl --configs resolved.yaml --pair P --exp E

Details (formats, equations, options): docs/benchmarks.md, section scripts/cost_model.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_phases import model_key  # noqa: E402,F401  (stdlib at import: the names phase files use)

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
ROLE_ORDER = ("small", "large")
BASELINE_EXP = "grpo_large"
NO_LOG = "default (no run log given)"
CAPPED = f"default {DEFAULT_PROMPT_LEN:g} + {DEFAULT_RESP_LEN:g} capped at data.max_prompt_length / max_response_length"
CAPPED += " (no run log given)"


def read_jsonl(path: str | Path) -> pd.DataFrame:
    """One JSON object a line (blank lines allowed) -> a DataFrame, one row a line; ValueError names a bad line."""
    try:
        return pd.read_json(path, lines=True, precise_float=True, dtype=False)
    except ValueError as e:
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            try:
                json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None
        raise


# ---------------------------------------------------------------------------------------------
# phase table


@dataclass(frozen=True)
class Phases:
    rows: pd.DataFrame  # measurements (lines with a "phase"), minus skipped / OOM rows
    headers: pd.DataFrame  # everything else (GPU, torch, matmul TFLOP/s, params, done)
    sources: tuple[str, ...]

    @property
    def gpu(self) -> str:
        return ", ".join(sorted(self.headers.get("gpu", pd.Series()).dropna().astype(str).unique())) or "unknown device"

    @property
    def shrunken(self) -> bool:
        return bool(self.headers.get("shrunken", pd.Series(dtype=object)).fillna(False).astype(bool).any())

    def models(self) -> list[str]:
        return sorted(self.rows["model"].dropna().unique())


def load_phases(paths: str | Path | Iterable[str | Path]) -> Phases:
    """Read one or more phase JSONL files (bench_gpu_phases.py's format) into one table (file order kept)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    df = pd.concat([read_jsonl(p) for p in paths], ignore_index=True)
    df = df.reindex(columns=df.columns.union(["phase", "model", "skipped", "error"], sort=False))
    measured = df["phase"].notna()
    rows = df[measured & df["skipped"].isna() & df["error"].isna()]  # bench_gpu_phases.py's skipped / OOM rows
    return Phases(rows, df[~measured], tuple(map(str, paths)))


def _select(phases: Phases, model: str, phase: str) -> pd.DataFrame:
    return phases.rows[(phases.rows["model"] == model) & (phases.rows["phase"] == phase)]


def _nearest(rows: pd.DataFrame, col: str, target: float) -> pd.DataFrame:
    """The rows whose ``col`` is nearest ``target`` on a log scale (ties: the larger, i.e. the costlier)."""
    values = pd.Series(rows[col].unique())
    order = pd.DataFrame({"d": np.abs(np.log(values / target)), "v": -values}).sort_values(["d", "v"])
    return rows[rows[col] == values[order.index[0]]]


def _missing(phases: Phases, model: str, what: str) -> ValueError:
    return ValueError(
        f"no '{what}' figures for model '{model}' in {', '.join(phases.sources)} "
        f"(models there: {', '.join(phases.models()) or 'none'})"
    )


def throughput(
    phases: Phases, model: str, phase_names: Sequence[str], seq: float, micro_batch: int | None = None
) -> tuple[float, pd.Series]:
    """Tokens/s of the first of ``phase_names`` measured for ``model``, at the measured seq nearest
    ``seq``, preferring rows with ``micro_batch`` (the last such row in file order).

    Returns (tok_per_s, row): tok_per_s = the row's ``tok_per_s``, else micro_batch x seq / s."""
    rows = next((r for r in (_select(phases, model, n) for n in phase_names) if len(r)), None)
    if rows is None:
        raise _missing(phases, model, " or ".join(phase_names))
    same_micro = rows[rows["micro_batch"] == micro_batch] if micro_batch is not None else rows.iloc[:0]
    row = _nearest(same_micro if len(same_micro) else rows, "seq", seq).iloc[-1]
    tps = row.get("tok_per_s")
    return float(tps if pd.notna(tps) and tps else row["micro_batch"] * row["seq"] / row["s"]), row


def decode_step(phases: Phases, model: str, batch: float, ctx: float) -> dict:
    """One decode step of ``model``: s = linear + attention, at the measured batch nearest ``batch`` (having
    both parts) and the measured ctx nearest ``ctx`` at that batch. linear = min(s_eager, s_graph, s) (the
    faster of eager and CUDA-graphed, what vLLM would pick); attention = s_all_layers (else s)."""
    lin, attn = _select(phases, model, "decode_linear"), _select(phases, model, "decode_attn")
    for rows, name in ((lin, "decode_linear"), (attn, "decode_attn")):
        if rows.empty:
            raise _missing(phases, model, name)
    shared = lin[lin["batch"].isin(attn["batch"])]
    if shared.empty:
        raise ValueError(f"decode_linear and decode_attn of '{model}' share no batch size")
    b = _nearest(shared, "batch", batch)["batch"].iloc[0]
    a = _nearest(attn[attn["batch"] == b], "ctx", ctx).iloc[-1]
    lin_s = float(lin[lin["batch"] == b].iloc[-1].reindex(["s_eager", "s_graph", "s"]).min())
    attn_s = float(a["s_all_layers"] if pd.notna(a.get("s_all_layers")) else a["s"])
    return {"batch": b, "ctx": a["ctx"], "linear_s": lin_s, "attn_s": attn_s, "s": lin_s + attn_s}


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
    prompt_len: float = DEFAULT_PROMPT_LEN
    resp_len: float = DEFAULT_RESP_LEN
    zero_adv_frac: float = 0.0
    decode_batch: int = DEFAULT_DECODE_BATCH
    len_source: str = NO_LOG
    zero_adv_source: str = NO_LOG

    responses = property(lambda self: self.prompts * self.n)
    seq = property(lambda self: self.prompt_len + self.resp_len)
    tokens = property(lambda self: self.responses * self.seq)
    gpus = property(lambda self: self.nnodes * self.gpus_per_node)

    def model(self, role: str) -> ModelSettings:
        return self.small if role == "small" else self.large


_REQUIRED = object()


def _get(cfg: DictConfig, key: str, default: Any = _REQUIRED) -> Any:
    """``OmegaConf.select(cfg, key)``; a missing or null key gives ``default``, or KeyError when none is given."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None and default is _REQUIRED:
        raise KeyError(f"the config has no '{key}'")
    return default if value is None else value


def _model_settings(cfg: DictConfig, role: str) -> ModelSettings:
    path = str(_get(cfg, f"pair.{role}.model.path"))
    ckpt = _get(cfg, f"pair.{role}.model.enable_gradient_checkpointing", True)
    micro = [_get(cfg, f"pair.{role}.{k}_micro_batch_size_per_gpu", None) for k in ("actor.ppo", "log_prob")]
    return ModelSettings(path, model_key(path), bool(ckpt), *(None if m is None else int(m) for m in micro))


def settings_from_config(cfg: Any) -> Settings:
    """Run settings from the project's resolved config (a DictConfig or nested dicts), with the
    worked example's lengths (200 prompt + 800 response tokens, capped at the maximum lengths)
    and no zero-advantage skip; replace those with ``apply_run_figures``."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    generator = str(_get(cfg, "exp.generator"))
    if generator not in ("small", "large"):
        raise ValueError(f"exp.generator must be 'small' or 'large', not {generator!r}")
    large_enabled = bool(_get(cfg, "algorithm.codistill.large.enable", False))
    if generator == "large" and large_enabled:
        raise ValueError(
            "exp.generator=large with algorithm.codistill.large.enable=true: "
            "the large model cannot be both the actor and the second model"
        )
    prompt_len = min(DEFAULT_PROMPT_LEN, _get(cfg, "data.max_prompt_length", math.inf))
    resp_len = min(DEFAULT_RESP_LEN, _get(cfg, "data.max_response_length", math.inf))
    capped = (prompt_len, resp_len) != (DEFAULT_PROMPT_LEN, DEFAULT_RESP_LEN)
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
        prompt_len=float(prompt_len),
        resp_len=float(resp_len),
        len_source=CAPPED if capped else NO_LOG,
    )


@dataclass(frozen=True)
class RunMetrics:
    path: str
    steps: int  # steps with at least one of the keys read
    resp_len: float | None
    prompt_len: float | None
    zero_adv_frac: float | None
    zero_adv_key: str | None


def read_run_metrics(path: str | Path) -> RunMetrics:
    """Means over a finished run's verl file-logger JSONL lines of ``RESP_LEN_KEY`` and ``PROMPT_LEN_KEY`` (finite
    numbers only) and the zero-advantage fraction from the first of ``ZERO_ADV_KEYS`` present."""
    df = read_jsonl(path)
    data = pd.DataFrame([d if isinstance(d, dict) else {} for d in df.get("data", [])], index=df.index)
    keys = [k for k in (RESP_LEN_KEY, PROMPT_LEN_KEY, *ZERO_ADV_KEYS) if k in data]
    values = data[keys].apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    means = values.mean()
    zkey = next((k for k in ZERO_ADV_KEYS if k in means and pd.notna(means[k])), None)
    mean = lambda k: float(means[k]) if k in means and pd.notna(means[k]) else None  # noqa: E731
    steps = df.loc[values.notna().any(axis=1), "step"].nunique() if keys else 0
    return RunMetrics(str(path), int(steps), mean(RESP_LEN_KEY), mean(PROMPT_LEN_KEY), mean(zkey), zkey)


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
    m = metrics or RunMetrics("", 0, None, None, None, None)
    where = f"{m.steps} steps in {m.path}"
    candidates = [  # (field, value, source), later ones win
        ("resp_len", m.resp_len, f"response {RESP_LEN_KEY} mean of {where}"),
        ("prompt_len", m.prompt_len, f"prompt {PROMPT_LEN_KEY} from the same log"),
        ("resp_len", resp_len, "response --resp-len"),
        ("prompt_len", prompt_len, "prompt --prompt-len"),
    ]
    changes: dict[str, Any] = {k: float(v) for k, v, _ in candidates if v is not None}
    len_src = [src for _, v, src in candidates if v is not None]
    if len_src:
        len_src += [] if "prompt_len" in changes else [f"prompt default {DEFAULT_PROMPT_LEN:g}"]
        len_src += [] if "resp_len" in changes else [f"response default {DEFAULT_RESP_LEN:g}"]
        changes["len_source"] = "; ".join(len_src)
    if zero_adv_frac is not None:
        changes["zero_adv_frac"], changes["zero_adv_source"] = float(zero_adv_frac), "--zero-adv-frac"
    elif m.zero_adv_frac is not None:
        changes["zero_adv_frac"], changes["zero_adv_source"] = m.zero_adv_frac, f"{m.zero_adv_key} mean in {m.path}"
    elif metrics is not None:
        changes["zero_adv_source"] = f"0: none of {', '.join(ZERO_ADV_KEYS)} in {m.path}"
    changes.update({k: int(v) for k, v in (("decode_batch", decode_batch), ("steps", steps)) if v is not None})
    out = replace(s, **changes)
    if not 0.0 <= out.zero_adv_frac <= 1.0:
        raise ValueError(f"zero-advantage fraction must be in [0, 1], got {out.zero_adv_frac}")
    if out.resp_len <= 0 or out.prompt_len < 0 or out.decode_batch <= 0:
        raise ValueError("lengths and decode batch must be positive")
    return out


def grpo_large_settings(s: Settings, zero_adv_frac: float | None = None) -> Settings:
    """The grpo_large baseline for the same pair, batch, lengths and steps: the large model
    generates and trains alone with kd.coef 0 (zero-adv fraction: the experiment's unless given)."""
    zero_adv_frac = s.zero_adv_frac if zero_adv_frac is None else float(zero_adv_frac)
    return replace(s, exp=BASELINE_EXP, generator="large", large_enabled=False, large_train=False, kd_coef=0.0,
                   zero_adv_frac=zero_adv_frac)  # fmt: skip


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
    second_large = role == "large" and s.generator == "small" and s.large_train
    grpo_actor = role == s.generator and s.kd_coef == 0
    return 1.0 - s.zero_adv_frac if s.skip_zero_grad and (second_large or grpo_actor) else 1.0


def roles(s: Settings) -> dict[str, list[str]]:
    """Which pair models run each phase."""
    second = s.generator == "small"
    loaded = [s.generator] + (["large"] if second and s.large_enabled else [])
    return {
        "generate": [s.generator],
        "log_prob": loaded,
        "train": [s.generator] + (["large"] if second and s.large_train else []),
    }


def step_cost_detail(phases: Phases, s: Settings) -> list[Line]:
    """Per (phase, model) GPU-seconds of one step, with the figures used (R = responses, T = prompt +
    response tokens, B = decode batch):

        generate = R / B x resp_len x decode_step_s;  log_prob = R x T / logprob tok/s;
        train = R x T / train tok/s x (1 - zero_adv_frac where skipped)
    """
    who, lines = roles(s), []
    for role in (r for r in ROLE_ORDER if r in who["generate"]):
        m, d = s.model(role), decode_step(phases, s.model(role).key, s.decode_batch, s.seq)
        batches = s.responses / s.decode_batch
        how = (
            f"{s.responses}/{s.decode_batch} = {batches:g} batches x {s.resp_len:g} steps x {d['s'] * 1e3:.2f} ms "
            f"(decode B={d['batch']:g}, ctx {d['ctx']:g}: {d['linear_s'] * 1e3:.2f} + {d['attn_s'] * 1e3:.2f} ms)"
        )
        lines.append(Line("generate", role, m.key, batches * s.resp_len * d["s"], how))
    for phase in ("log_prob", "train"):
        for role in (r for r in ROLE_ORDER if r in who[phase]):
            m = s.model(role)
            names, micro = (
                ((LOGPROB_PHASE,), m.logprob_micro)
                if phase == "log_prob"
                else (TRAIN_PHASES[m.grad_ckpt], m.train_micro)
            )
            tps, row = throughput(phases, m.key, names, s.seq, micro)
            scale = _train_scale(s, role) if phase == "train" else 1.0
            how = (
                f"{s.tokens:,.0f} tok / {tps:,.0f} tok/s ({row['phase']}, micro {int(row['micro_batch'])}, "
                f"seq {int(row['seq'])})" + (f" x (1 - {s.zero_adv_frac:.3g}) zero-adv skip" if scale != 1.0 else "")
            )
            lines.append(Line(phase, role, m.key, s.tokens / tps * scale, how))
    return lines


def step_cost(phases: Phases, s: Settings) -> dict[tuple[str, str], float]:
    """{(phase, role): GPU-seconds of one step}; phase in generate | log_prob | train, role small | large."""
    return step_cost_from(step_cost_detail(phases, s))


def total(cost: Mapping[tuple[str, str], float]) -> float:
    """GPU-seconds of the whole step: the sum over (phase, role)."""
    return sum(cost.values())


def large_share(cost: Mapping[tuple[str, str], float]) -> float:
    """The large model's own log-prob + train GPU-seconds."""
    return cost.get(("log_prob", "large"), 0.0) + cost.get(("train", "large"), 0.0)


def gpu_hours(s: Settings, per_step_s: float) -> float:
    """steps x GPU-seconds per step / 3600."""
    return s.steps * per_step_s / 3600.0


# ---------------------------------------------------------------------------------------------
# report


def _assumptions(phases: Phases, s: Settings, lines: list[Line], baseline: Settings | None) -> list[str]:
    gen = next(ln for ln in lines if ln.phase == "generate")
    d = decode_step(phases, gen.model, s.decode_batch, s.seq)
    seqs = sorted(phases.rows.loc[phases.rows["model"] == gen.model, "seq"].dropna().astype(int).unique())
    applied = [f"{ln.phase} {ln.role}" for ln in lines if ln.phase == "train" and _train_scale(s, ln.role) != 1.0]
    out = [
        f"decode batch: {s.decode_batch} sequences per GPU for the whole response "
        f"(measured batch used: {d['batch']:g}); no tail of part-empty batches",
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
    phases: Phases, s: Settings, lines: list[Line], baseline: Settings | None = None,
    baseline_lines: list[Line] | None = None,
) -> str:  # fmt: skip
    """The full report: the per-(phase, model) table with the figures used, shares, baseline ratio,
    GPU-hours and the assumptions."""
    df = pd.DataFrame([asdict(ln) for ln in lines])
    tot, by_role = df["seconds"].sum(), df.groupby("role", sort=False)["seconds"].sum()
    table = pd.concat([df, pd.DataFrame([{"phase": "total", "role": "", "model": "", "seconds": tot, "how": ""}])])
    table.columns = ["phase", "model", "", "GPU-s", "figure used"]
    left = {c: f"{{:<{table[c].str.len().max()}}}".format for c in ("phase", "model", "", "figure used")}
    out = [
        f"Step cost: pair {s.pair}, experiment {s.exp} (GPU-seconds per training step)",
        f"phases: {', '.join(phases.sources)} ({phases.gpu})",
        f"step: {s.prompts} prompts x {s.n} samples = {s.responses} responses x ({s.prompt_len:g} prompt + "
        f"{s.resp_len:g} response) tokens = {s.tokens:,.0f} tokens",
        "",
        *(
            ln.rstrip()
            for ln in table.to_string(
                index=False, justify="left", formatters=left, float_format="{:.1f}".format
            ).splitlines()
        ),
        "",
        "per model: "
        + ", ".join(f"{r} {v:.1f} GPU-s ({v / tot:.1%})" for r, v in by_role.reindex(ROLE_ORDER).dropna().items() if v),
    ]
    share = large_share(step_cost_from(lines))  # the large model's log-prob + train
    if "large" in by_role:
        note = "; it also generates here" if s.generator == "large" else ""
        out.append(
            f"large model's own share (its log-prob + train{note}): {share:.1f} GPU-s/step = "
            f"{share / tot:.1%} of the step"
        )
    else:
        out.append("large model: not loaded in this experiment")
    if baseline_lines is not None:
        btot = sum(ln.seconds for ln in baseline_lines)
        parts = " + ".join(f"{ln.phase} {ln.seconds:.1f}" for ln in baseline_lines)
        out.append(
            f"vs {BASELINE_EXP} baseline ({btot:.1f} GPU-s/step: {parts}): {s.exp}/{BASELINE_EXP} = {tot / btot:.3f}"
        )
    gh = gpu_hours(s, tot)
    out += [
        f"run: {s.steps} steps x {tot:.1f} GPU-s = {gh:.2f} GPU-hours; on {s.nnodes} node(s) x "
        f"{s.gpus_per_node} GPUs = {gh / s.gpus:.2f} wall-hours (assumes perfect scaling)",
        "",
        "assumptions:",
        *(f"- {a}" for a in _assumptions(phases, s, lines, baseline)),
    ]
    return "\n".join(out)


def step_cost_from(lines: list[Line]) -> dict[tuple[str, str], float]:
    """{(phase, role): GPU-seconds} of ``step_cost_detail``'s lines."""
    return {(ln.phase, ln.role): ln.seconds for ln in lines}


def format_line(s: Settings, lines: list[Line], baseline_lines: list[Line] | None = None) -> str:
    """The estimate in one line (what the launcher's dry run prints)."""
    by_phase = pd.DataFrame([asdict(ln) for ln in lines]).groupby("phase", sort=False)["seconds"].sum()
    tot, gh = by_phase.sum(), gpu_hours(s, by_phase.sum())
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
    try:
        from recipe.codistill_grpo.configuration import compose_config
    except ImportError as e:
        raise SystemExit(
            f"cost_model: cannot compose the config ({e}); "
            "pass --configs FILE (resolved config(s) as YAML/JSON) instead"
        ) from None
    return compose_config(pair, exp, list(overrides))


def load_configs_file(path: str | Path, exp: str) -> Any:
    """``--configs``: one resolved config, or a mapping experiment name -> resolved config (YAML or JSON)."""
    data = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(data, dict):
        raise SystemExit(f"cost_model: {path} holds no mapping")
    if "exp" in data and "pair" in data:
        return data
    if exp not in data:
        raise SystemExit(f"cost_model: {path} has no config for experiment '{exp}' (has: {', '.join(data)})")
    return data[exp]


OPTIONS = [  # flag, type, help (float/int: a number; None: a flag)
    ("--pair", str, "model pair, e.g. qwen2.5-math-1.5b_7b (required)"),
    ("--exp", str, "experiment, e.g. codistill, grpo_large (required)"),
    ("--phases", str, "phase JSONL (repeatable); default: the H200 files in scripts/cost_data/"),
    ("--configs", str, "resolved config(s) as YAML/JSON instead of compose_config (one, or experiment -> config)"),
    ("--metrics", str, "a finished run's file-logger JSONL: mean lengths and zero-advantage fraction"),
    ("--resp-len", float, f"mean response tokens (default {DEFAULT_RESP_LEN:g})"),
    ("--prompt-len", float, f"mean prompt tokens (default {DEFAULT_PROMPT_LEN:g})"),
    ("--zero-adv-frac", float, "fraction of samples with zero advantage (default 0, or the log's)"),
    ("--baseline-zero-adv-frac", float, f"zero-advantage fraction of the {BASELINE_EXP} baseline (default: same)"),
    ("--decode-batch", int, f"sequences decoded at once per GPU (default {DEFAULT_DECODE_BATCH})"),
    ("--steps", int, "training steps (default trainer.total_training_steps)"),
    ("--line", None, "print the estimate in one line"),
]


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (see the module docstring); everything after ``--`` goes to compose_config as hydra overrides."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="After --: hydra overrides.")
    for flag, kind, help_ in OPTIONS:
        extra = {"action": "store_true"} if kind is None else {"type": kind, "required": flag in ("--pair", "--exp")}
        ap.add_argument(flag, help=help_, **extra, **({"action": "append"} if flag == "--phases" else {}))
    sys.path.insert(0, str(REPO))  # this checkout's recipe package, not another installed copy
    from recipe.codistill_grpo.cli import parse_with_overrides

    args, overrides = parse_with_overrides(ap, argv)
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
        figures = ("resp_len", "prompt_len", "zero_adv_frac", "decode_batch", "steps")
        s = apply_run_figures(s, metrics=metrics, **{k: getattr(args, k) for k in figures})
        lines = step_cost_detail(phases, s)
        baseline = grpo_large_settings(s, args.baseline_zero_adv_frac) if s.exp != BASELINE_EXP else None
        baseline_lines = step_cost_detail(phases, baseline) if baseline else None
    except (ValueError, KeyError, OSError) as e:
        raise SystemExit(f"cost_model: {e.args[0] if isinstance(e, KeyError) and e.args else e}") from None
    report = format_line(s, lines, baseline_lines) if args.line else None
    print(report or format_report(phases, s, lines, baseline, baseline_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
