#!/usr/bin/env python
"""Step-cost model: GPU-seconds per training step by phase and model, and a run's GPU-hours.

    python scripts/cost_model.py --pair qwen2.5-math-1.5b_7b --exp codistill [--metrics <run>/metrics.jsonl]

Examples, formats, equations and options: docs/benchmarks.md, section scripts/cost_model.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
# stdlib at import: phase-file model names, a config's models, the config loaders (project imports lazy)
from bench_gpu_phases import ModelSpec, compose, load_configs_file, model_key, models_from_config  # noqa: E402,F401
from make_tables import read_log  # noqa: E402 - the one reader of verl's file-logger JSONL

REPO = Path(__file__).resolve().parents[1]
COST_DATA = REPO / "scripts" / "cost_data"
DEFAULT_PHASES = (COST_DATA / "h200_phase_cost.jsonl", COST_DATA / "h200_phase_cost_tail.jsonl")

DEFAULT_DECODE_BATCH = 256
DEFAULT_PROMPT_LEN, DEFAULT_RESP_LEN = 200.0, 800.0  # tokens: the worked example's, used when no run log is given
RESP_LEN_KEY, PROMPT_LEN_KEY = "response_length/mean", "prompt_length/mean"
# first present wins: the large model's skip (CoDistill), the actor's skip (GRPO baselines)
ZERO_ADV_KEYS = ("large/skipped_frac", "small/skipped_frac", "actor/skipped_frac", "large/zero_adv_frac")
TRAIN_PHASES = {True: ("train_fwd_bwd_ckpt", "train_fwd_bwd"), False: ("train_fwd_bwd", "train_fwd_bwd_ckpt")}
ROLE_ORDER = ("small", "large")
BASELINE_EXP = "grpo_large"
NO_LOG = "default (no run log given)"
CAPPED = f"default {DEFAULT_PROMPT_LEN:g} + {DEFAULT_RESP_LEN:g} capped at data.max_prompt_length / max_response_length"
CAPPED += " (no run log given)"


def read_jsonl(path: str | Path) -> pd.DataFrame:
    """One JSON object a line (blank lines allowed) -> a DataFrame, one row a line; ValueError names a bad line."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            rows += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from None
    return pd.DataFrame(rows)


# ---- phase table ----------------------------------------------------------------------------------


# rows: the measurements (lines with a "phase") minus skipped / OOM rows; gpu: the header lines' GPU names;
# shrunken: a header line says shrunken (bench_gpu_phases.py's CPU mode)
Phases = namedtuple("Phases", "rows sources gpu shrunken")


def load_phases(paths: str | Path | Iterable[str | Path]) -> Phases:
    """Read one or more phase JSONL files (bench_gpu_phases.py's format) into one table (file order kept)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    df = pd.concat([read_jsonl(p) for p in paths], ignore_index=True)
    df = df.reindex(columns=df.columns.union(["phase", "model", "skipped", "error", "gpu", "shrunken"], sort=False))
    measured, heads = df["phase"].notna(), df[df["phase"].isna()]
    rows = df[measured & df["skipped"].isna() & df["error"].isna()]  # bench_gpu_phases.py's skipped / OOM rows
    gpu = ", ".join(sorted(heads["gpu"].dropna().astype(str).unique())) or "unknown device"
    return Phases(rows, tuple(map(str, paths)), gpu, bool(heads["shrunken"].eq(True).any()))


def _select(phases: Phases, model: str, *names: str) -> pd.DataFrame:
    """The rows of the first of the phases ``names`` measured for ``model``; ValueError (the models there) if none."""
    for name in names:
        rows = phases.rows[(phases.rows["model"] == model) & (phases.rows["phase"] == name)]
        if len(rows):
            return rows
    models = ", ".join(sorted(phases.rows["model"].dropna().unique())) or "none"
    where = f"{', '.join(phases.sources)} (models there: {models})"
    raise ValueError(f"no '{' or '.join(names)}' figures for model '{model}' in {where}")


def _nearest(rows: pd.DataFrame, col: str, target: float) -> pd.DataFrame:
    """The rows whose ``col`` is nearest ``target`` on a log scale (ties: the larger, i.e. the costlier)."""
    values = pd.Series(rows[col].unique())
    order = pd.DataFrame({"d": np.abs(np.log(values / target)), "v": -values}).sort_values(["d", "v"])
    return rows[rows[col] == values[order.index[0]]]


def throughput(
    phases: Phases, model: str, phase_names: Sequence[str], seq: float, micro_batch: int | None = None
) -> tuple[float, pd.Series]:
    """Tokens/s of the first of ``phase_names`` measured for ``model``, at the measured seq nearest ``seq``,
    preferring rows with ``micro_batch`` (the last such row in file order).

    Returns (tok_per_s, row): tok_per_s = the row's ``tok_per_s``, else micro_batch x seq / s."""
    rows = _select(phases, model, *phase_names)
    same_micro = rows[rows["micro_batch"] == micro_batch] if micro_batch is not None else rows.iloc[:0]
    row = _nearest(same_micro if len(same_micro) else rows, "seq", seq).iloc[-1]
    tps = row.get("tok_per_s")
    return float(tps if pd.notna(tps) and tps else row["micro_batch"] * row["seq"] / row["s"]), row


def decode_step(phases: Phases, model: str, batch: float, ctx: float) -> dict:
    """One decode step of ``model``: s = linear + attention, at the measured batch nearest ``batch`` (having
    both parts) and the measured ctx nearest ``ctx`` at that batch. linear = min(s_eager, s_graph, s) (the
    faster of eager and CUDA-graphed, what vLLM would pick); attention = s_all_layers (else s)."""
    lin, attn = _select(phases, model, "decode_linear"), _select(phases, model, "decode_attn")
    shared = lin[lin["batch"].isin(attn["batch"])]
    if shared.empty:
        raise ValueError(f"decode_linear and decode_attn of '{model}' share no batch size")
    b = _nearest(shared, "batch", batch)["batch"].iloc[0]
    a = _nearest(attn[attn["batch"] == b], "ctx", ctx).iloc[-1]
    lin_s = float(lin[lin["batch"] == b].iloc[-1].reindex(["s_eager", "s_graph", "s"]).min())
    attn_s = float(a["s_all_layers"] if pd.notna(a.get("s_all_layers")) else a["s"])
    return {"batch": b, "ctx": a["ctx"], "linear_s": lin_s, "attn_s": attn_s, "s": lin_s + attn_s}


# ---- run settings ---------------------------------------------------------------------------------


def _key(key: str, kind: type, missing: Any = None, **kw: Any) -> Any:
    """A Settings field that ``settings_from_config`` reads from ``key`` (absent/null: ``missing``; None: required)."""
    return field(metadata={"key": key, "kind": kind, "missing": missing}, **kw)


@dataclass(frozen=True, kw_only=True)
class Settings:
    pair: str = _key("pair.name", str)
    exp: str = _key("exp.name", str)
    generator: str = _key("exp.generator", str)  # "small" or "large": generates and is the trained actor
    small: ModelSpec  # path, micro-batches, gradient checkpointing (bench_gpu_phases.models_from_config)
    large: ModelSpec
    large_enabled: bool = _key("algorithm.codistill.large.enable", bool, False)  # loaded as the second model
    large_train: bool = _key("algorithm.codistill.large.train", bool, False)  # ... and trained
    kd_coef: float = _key("algorithm.codistill.kd.coef", float, 0.0)
    skip_zero_grad: bool = _key("algorithm.codistill.large.skip_zero_grad", bool, False)
    prompts: int = _key("data.train_batch_size", int)
    n: int = _key("actor_rollout_ref.rollout.n", int)
    steps: int = _key("trainer.total_training_steps", int)
    nnodes: int = _key("trainer.nnodes", int)
    gpus_per_node: int = _key("trainer.n_gpus_per_node", int)
    prompt_len: float = _key("data.max_prompt_length", float, math.inf, default=DEFAULT_PROMPT_LEN)  # read: the cap
    resp_len: float = _key("data.max_response_length", float, math.inf, default=DEFAULT_RESP_LEN)
    zero_adv_frac: float = 0.0
    decode_batch: int = DEFAULT_DECODE_BATCH
    len_source: str = NO_LOG
    zero_adv_source: str = NO_LOG

    responses = property(lambda self: self.prompts * self.n)
    seq = property(lambda self: self.prompt_len + self.resp_len)
    tokens = property(lambda self: self.responses * self.seq)
    gpus = property(lambda self: self.nnodes * self.gpus_per_node)


def settings_from_config(cfg: Any) -> Settings:
    """Run settings from the project's resolved config (a DictConfig or nested dicts; the keys: ``Settings``' metadata),
    with the worked example's lengths (200 prompt + 800 response tokens, capped at the maximum lengths)
    and no zero-advantage skip; replace those with ``apply_run_figures``. A missing required key: KeyError."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    v = {}
    for f in (f for f in fields(Settings) if f.metadata):
        key, kind, default = f.metadata["key"], f.metadata["kind"], f.metadata["missing"]
        value = OmegaConf.select(cfg, key, default=None)
        if value is None and default is None:
            raise KeyError(f"the config has no '{key}'")
        v[f.name] = kind(default if value is None else value)
    if v["generator"] not in ("small", "large"):
        raise ValueError(f"exp.generator must be 'small' or 'large', not {v['generator']!r}")
    if v["generator"] == "large" and v["large_enabled"]:
        raise ValueError(
            "exp.generator=large with algorithm.codistill.large.enable=true: "
            "the large model cannot be both the actor and the second model"
        )
    v["large_train"] &= v["large_enabled"]
    v["prompt_len"], v["resp_len"] = min(DEFAULT_PROMPT_LEN, v["prompt_len"]), min(DEFAULT_RESP_LEN, v["resp_len"])
    v["len_source"] = NO_LOG if (v["prompt_len"], v["resp_len"]) == (DEFAULT_PROMPT_LEN, DEFAULT_RESP_LEN) else CAPPED
    small, large = models_from_config(cfg)
    return Settings(small=small, large=large, **v)


RunMetrics = namedtuple("RunMetrics", "path steps resp_len prompt_len zero_adv_frac zero_adv_key")  # steps: with a key


def read_run_metrics(path: str | Path) -> RunMetrics:
    """Means over the steps of a finished run's verl file-logger JSONL (``make_tables.read_log``: finite numbers, a
    step's last value) of ``RESP_LEN_KEY``, ``PROMPT_LEN_KEY`` and the first of ``ZERO_ADV_KEYS`` logged."""
    log = read_log(path)
    mean = lambda key: float(np.mean(list(log[key].values()))) if key in log else None  # noqa: E731
    zkey = next((k for k in ZERO_ADV_KEYS if k in log), None)
    steps = set().union(*(log.get(k, {}) for k in (RESP_LEN_KEY, PROMPT_LEN_KEY, *ZERO_ADV_KEYS)))
    return RunMetrics(str(path), len(steps), mean(RESP_LEN_KEY), mean(PROMPT_LEN_KEY), mean(zkey), zkey)


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
    sources = [  # (field, value, source): a later value wins
        ("resp_len", m.resp_len, f"response {RESP_LEN_KEY} mean of {m.steps} steps in {m.path}"),
        ("prompt_len", m.prompt_len, f"prompt {PROMPT_LEN_KEY} mean in {m.path}"),
        ("resp_len", resp_len, "response --resp-len"),
        ("prompt_len", prompt_len, "prompt --prompt-len"),
    ]
    given = {k: (float(v), src) for k, v, src in sources if v is not None}
    changes: dict[str, Any] = {k: v for k, (v, _) in given.items()}
    if given:  # the other length keeps its value (the default, capped at the config's maximum)
        names = {"prompt_len": "prompt", "resp_len": "response"}
        unset = [f"{w} default {getattr(s, k):g}" for k, w in names.items() if k not in given]
        changes["len_source"] = "; ".join([src for _, src in given.values()] + unset)
    if zero_adv_frac is not None:
        changes.update(zero_adv_frac=float(zero_adv_frac), zero_adv_source="--zero-adv-frac")
    elif m.zero_adv_frac is not None:
        changes.update(zero_adv_frac=m.zero_adv_frac, zero_adv_source=f"{m.zero_adv_key} mean in {m.path}")
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
    """The grpo_large baseline for the same pair, batch, lengths and steps: the large model generates and trains
    alone with kd.coef 0 (zero-adv fraction: the experiment's unless given)."""
    zero_adv_frac = s.zero_adv_frac if zero_adv_frac is None else float(zero_adv_frac)
    large_alone = dict(generator="large", large_enabled=False, large_train=False, kd_coef=0.0)
    return replace(s, exp=BASELINE_EXP, zero_adv_frac=zero_adv_frac, **large_alone)


# ---- the model ------------------------------------------------------------------------------------


Line = namedtuple("Line", "phase role model seconds how")  # generate|log_prob|train, small|large, ..., the arithmetic


def _train_scale(s: Settings, role: str) -> float:
    """1 - zero_adv_frac where zero-advantage samples are skipped in training, else 1."""
    second_large = role == "large" and s.generator == "small" and s.large_train
    grpo_actor = role == s.generator and s.kd_coef == 0
    return 1.0 - s.zero_adv_frac if s.skip_zero_grad and (second_large or grpo_actor) else 1.0


def step_cost_detail(phases: Phases, s: Settings) -> list[Line]:
    """Per (phase, model) GPU-seconds of one step, with the figures used (R = responses, T = prompt +
    response tokens, B = decode batch):

        generate = R / B x resp_len x decode_step_s;  log_prob = R x T / logprob tok/s;
        train = R x T / train tok/s x (1 - zero_adv_frac where skipped)
    """
    # the generator runs every phase; a second model (large; settings_from_config checks) log-probs, trains if trained
    second = {"generate": False, "log_prob": s.large_enabled, "train": s.large_train}
    lines = []
    for phase, role in ((p, r) for p in second for r in ROLE_ORDER if r == s.generator or (r == "large" and second[p])):
        m = getattr(s, role)
        if phase == "generate":
            d, batches = decode_step(phases, m.key, s.decode_batch, s.seq), s.responses / s.decode_batch
            how = (
                f"{s.responses}/{s.decode_batch} = {batches:g} batches x {s.resp_len:g} steps x {d['s'] * 1e3:.2f} ms "
                f"(decode B={d['batch']:g}, ctx {d['ctx']:g}: {d['linear_s'] * 1e3:.2f} + {d['attn_s'] * 1e3:.2f} ms)"
            )
            lines.append(Line(phase, role, m.key, batches * s.resp_len * d["s"], how))
            continue
        train = phase == "train"
        names, micro = (TRAIN_PHASES[m.grad_ckpt], m.train_micro) if train else (("logprob_fwd",), m.logprob_micro)
        tps, row = throughput(phases, m.key, names, s.seq, micro)
        scale = _train_scale(s, role) if train else 1.0
        how = (
            f"{s.tokens:,.0f} tok / {tps:,.0f} tok/s ({row['phase']}, micro {int(row['micro_batch'])}, "
            f"seq {int(row['seq'])})" + (f" x (1 - {s.zero_adv_frac:.3g}) zero-adv skip" if scale != 1.0 else "")
        )
        lines.append(Line(phase, role, m.key, s.tokens / tps * scale, how))
    return lines


def step_cost(phases: Phases, s: Settings) -> dict[tuple[str, str], float]:
    """{(phase, role): GPU-seconds of one step}; phase in generate | log_prob | train, role small | large."""
    return {(ln.phase, ln.role): ln.seconds for ln in step_cost_detail(phases, s)}


def large_share(cost: Mapping[tuple[str, str], float]) -> float:
    """The large model's own log-prob + train GPU-seconds."""
    return cost.get(("log_prob", "large"), 0.0) + cost.get(("train", "large"), 0.0)


def gpu_hours(s: Settings, per_step_s: float) -> float:
    """steps x GPU-seconds per step / 3600."""
    return s.steps * per_step_s / 3600.0


# ---- report ---------------------------------------------------------------------------------------


def format_report(
    phases: Phases, s: Settings, lines: list[Line], baseline: Settings | None = None, baseline_lines: list | None = None
) -> str:
    """The full report: the per-(phase, model) table with the figures used, shares, baseline ratio,
    GPU-hours and the assumptions."""
    df = pd.DataFrame(lines)
    tot, by_role = df["seconds"].sum(), df.groupby("role", sort=False)["seconds"].sum()
    table = pd.concat([df, pd.DataFrame([{"phase": "total", "role": "", "model": "", "seconds": tot, "how": ""}])])
    table.columns = ["phase", "model", "", "GPU-s", "figure used"]
    left = {c: f"{{:<{table[c].str.len().max()}}}".format for c in ("phase", "model", "", "figure used")}
    text = table.to_string(index=False, justify="left", formatters=left, float_format="{:.1f}".format)
    out = [
        f"Step cost: pair {s.pair}, experiment {s.exp} (GPU-seconds per training step)",
        f"phases: {', '.join(phases.sources)} ({phases.gpu})",
        f"step: {s.prompts} prompts x {s.n} samples = {s.responses} responses x ({s.prompt_len:g} prompt + "
        f"{s.resp_len:g} response) tokens = {s.tokens:,.0f} tokens",
        "",
        *(ln.rstrip() for ln in text.splitlines()),
        "",
        "per model: "
        + ", ".join(f"{r} {v:.1f} GPU-s ({v / tot:.1%})" for r, v in by_role.reindex(ROLE_ORDER).dropna().items() if v),
    ]
    if "large" in by_role:
        share = large_share({(ln.phase, ln.role): ln.seconds for ln in lines})
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
    gen = next(ln for ln in lines if ln.phase == "generate")
    d = decode_step(phases, gen.model, s.decode_batch, s.seq)
    seqs = sorted(phases.rows.loc[phases.rows["model"] == gen.model, "seq"].dropna().astype(int).unique())
    applied = [f"{ln.phase} {ln.role}" for ln in lines if ln.phase == "train" and _train_scale(s, ln.role) != 1.0]
    notes = [
        f"decode batch: {s.decode_batch} sequences per GPU for the whole response "
        f"(measured batch used: {d['batch']:g}); no tail of part-empty batches",
        f"decode ctx: {d['ctx']:g} tokens, the measured ctx nearest prompt + response = {s.seq:g} "
        f"(attention cost taken at that ctx for every step)",
        f"log-prob and train: measured seq nearest {s.seq:g} tokens (measured: {', '.join(map(str, seqs))}), "
        f"configured micro-batch where measured",
        f"lengths: prompt {s.prompt_len:g} + response {s.resp_len:g} tokens per sample: {s.len_source}",
        f"zero-advantage fraction {s.zero_adv_frac:.3g}: {s.zero_adv_source}; skip_zero_grad "
        f"{'on' if s.skip_zero_grad else 'off'}; scales: {', '.join(applied) or 'nothing'}",
        "not modelled: FSDP communication, optimizer step, vLLM scheduler/sampling overhead, weight sync, "
        "reward scoring, offload, checkpoints, validation",
        "each phase at one GPU's measured throughput; GPU-seconds add up across GPUs (no TP for rollouts)",
    ]
    if baseline is not None:
        notes.append(
            f"{BASELINE_EXP} baseline: same pair, batch, lengths and steps; the large model generates and "
            f"trains alone, kd.coef 0, zero-adv fraction {baseline.zero_adv_frac:.3g}"
        )
    if phases.shrunken:
        notes.append("WARNING: the phase file comes from a shrunken CPU run: its figures mean nothing for sizing")
    gh = gpu_hours(s, tot)
    out += [
        f"run: {s.steps} steps x {tot:.1f} GPU-s = {gh:.2f} GPU-hours; on {s.nnodes} node(s) x "
        f"{s.gpus_per_node} GPUs = {gh / s.gpus:.2f} wall-hours (assumes perfect scaling)",
        "",
        "assumptions:",
        *(f"- {a}" for a in notes),
    ]
    return "\n".join(out)


def format_line(s: Settings, lines: list[Line], baseline_lines: list[Line] | None = None) -> str:
    """The estimate in one line (what the launcher's dry run prints)."""
    by_phase = pd.DataFrame(lines).groupby("phase", sort=False)["seconds"].sum()
    tot, gh = by_phase.sum(), gpu_hours(s, by_phase.sum())
    parts = ", ".join(f"{phase.replace('_', '-')} {v:.1f}" for phase, v in by_phase.items())
    out = (
        f"estimated cost: {tot:.1f} GPU-s/step ({parts}); {s.steps} steps = {gh:.1f} GPU-hours, "
        f"{gh / s.gpus:.1f} h on {s.gpus} GPUs"
    )
    if baseline_lines is not None:
        out += f"; {s.exp}/{BASELINE_EXP} = {tot / sum(ln.seconds for ln in baseline_lines):.3f}"
    return out + " (scripts/cost_model.py, the shipped H200 figures; assumptions: run it without --line)"


# ---- CLI ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (see the module docstring); everything after ``--`` goes to compose_config as hydra overrides."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="After --: hydra overrides.")
    ap.add_argument("--pair", required=True, help="model pair, e.g. qwen2.5-math-1.5b_7b")
    ap.add_argument("--exp", required=True, help="experiment, e.g. codistill, grpo_large")
    ap.add_argument("--phases", action="append", help="phase JSONL (repeatable; default the H200 files)")
    ap.add_argument("--configs", help="resolved config(s) as YAML/JSON (one, or experiment -> config)")
    ap.add_argument("--metrics", help="a finished run's file-logger JSONL: mean lengths and zero-advantage fraction")
    ap.add_argument("--resp-len", type=float, help=f"mean response tokens (default {DEFAULT_RESP_LEN:g})")
    ap.add_argument("--prompt-len", type=float, help=f"mean prompt tokens (default {DEFAULT_PROMPT_LEN:g})")
    ap.add_argument("--zero-adv-frac", type=float, help="share of zero-advantage samples (default 0 or the log's)")
    ap.add_argument("--baseline-zero-adv-frac", type=float, help=f"{BASELINE_EXP}'s zero-adv share (default: same)")
    ap.add_argument("--decode-batch", type=int, help=f"sequences decoded at once per GPU ({DEFAULT_DECODE_BATCH})")
    ap.add_argument("--steps", type=int, help="training steps (default trainer.total_training_steps)")
    ap.add_argument("--line", action="store_true", help="print the estimate in one line")
    sys.path.insert(0, str(REPO))  # this checkout's recipe package, not another installed copy
    from recipe.codistill_grpo.cli import parse_with_overrides

    args, overrides = parse_with_overrides(ap, argv)
    if args.configs and overrides:
        ap.error("overrides after -- go to compose_config; with --configs, put them in the config file")
    try:
        phases = load_phases(args.phases or DEFAULT_PHASES)
        cfg = load_configs_file(args.configs, args.exp) if args.configs else compose(args.pair, args.exp, overrides)
        s = settings_from_config(cfg)
        if (s.pair, s.exp) != (args.pair, args.exp):
            raise ValueError(f"the config is pair '{s.pair}', experiment '{s.exp}', not '{args.pair}', '{args.exp}'")
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
