#!/usr/bin/env python
"""Evaluation JSONs -> the paper's main table (Markdown + CSV); training logs -> curves (PNG).

    python scripts/make_tables.py --results results --out tables --log codistill/1=<run>/metrics.jsonl

Examples, formats, equations and options: docs/running.md, section scripts/make_tables.py.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import math
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SUITES = ["math500", "minerva", "olympiadbench", "aime24", "amc23"]
SUITE_TITLES = dict(zip([*SUITES, "test"], ["MATH500", "Minerva", "OlympiadBench", "AIME24", "AMC23", "Test"]))
METHOD_ORDER = ["base", "grpo", "codistill", "frozen_teacher", "no_is", "kd_only"]
METHOD_TITLES = dict(zip(METHOD_ORDER, ["Base", "GRPO", "CoDistill-GRPO", "Frozen teacher", "No IS", "KD only"]))
ROLE_ORDER = ["small", "large"]
DEFAULT_CURVE_KEYS = ["val-core/*/acc/mean@*", "critic/score/mean", "small/kd_reward_mean", "large/is_ess"]
DEFAULT_CURVE_KEYS += ["small/pg_loss", "large/pg_loss", "val/kd_kl", "val*/*kd_kl*"]  # held-out KD divergence


class TableError(ValueError):
    """Bad input for the table; the message names the file or value."""


CELL = ["pair", "role", "method", "suite", "mode"]  # a table cell; a row is its first three


def load_results(dirs: list[str | Path], suites: list[str], allow_missing: bool = False) -> tuple[pd.DataFrame, list]:
    """One row per (evaluate.py JSON, item): ``CELL``, seed (``"None"``: base), index, mean/max (``mean_j c_ij``,
    ``max_j c_ij``), k, file; and the files skipped (unreadable or item-less: an error unless ``allow_missing``)."""
    records, seen, skipped = [], {}, []
    for root in dirs:
        files = sorted(Path(root).rglob("*.json"))
        if not files:
            raise TableError(f"--results {root}: no result JSON files found")
        for file in files:
            try:
                data = json.loads(file.read_text())
                problem = None if isinstance(data, dict) else "not a JSON object"
            except (OSError, ValueError) as error:
                data, problem = {}, f"unreadable ({error})"
            if not problem and (data.get("suite") not in suites or "aggregate" not in data):
                continue  # another suite, or not an evaluate.py result
            items = data.get("items") or [None] if isinstance(data, dict) else []
            if not problem and not all(isinstance(it, dict) and "index" in it and it.get("correct") for it in items):
                problem = "no per-item records (items with index and correct)"
            if problem:
                if not allow_missing:
                    raise TableError(f"{file}: {problem}; fix or remove it, or pass --allow-missing")
                skipped.append(f"{file} ({problem})")
                continue
            meta = data.get("meta") or {}
            key = (meta.get("pair") or "", meta.get("role") or "", meta.get("method") or data.get("model", ""))
            suite, seed = data["suite"], meta.get("seed")
            mode = "sampled" if float((data.get("sampling") or {}).get("temperature", 0.0)) > 0 else "greedy"
            if (first := seen.setdefault((*key, seed, suite, mode), file)) != file:
                raise TableError(
                    f"two results for pair={key[0]!r} role={key[1]!r} method={key[2]!r} seed={seed!r} "
                    f"suite={suite!r} ({mode}): {first} and {file}"
                )
            cell = dict(zip(CELL, (*key, suite, mode)), seed=str(seed), k=len(data["items"][0]["correct"]), file=file)
            records += [
                {**cell, "index": int(it["index"]), "mean": np.mean(it["correct"]), "max": np.max(it["correct"])}
                for it in data["items"]
            ]
    frame = pd.DataFrame(records, columns=[*CELL, "seed", "k", "file", "index", "mean", "max"])
    return frame.drop_duplicates([*CELL, "seed", "index"], keep="last"), skipped


def check_missing(df: pd.DataFrame, seeds: list[int] | None = None) -> dict[tuple, str]:
    """``{CELL values: what is missing}`` for every cell short of the seeds of its pair's trained rows (and
    ``seeds``; base: none), of a (suite, mode) of its pair, or of items another file of the suite has."""
    missing = {}
    for pair, p in df.groupby("pair"):
        trained = set(p.seed[p.method != "base"]) | {str(s) for s in seeds or []}
        n_items = p.groupby("suite")["index"].nunique()
        cells, found = sorted(p.groupby(["suite", "mode"]).groups), dict(list(p.groupby(CELL[1:])))
        for (role, method), (suite, mode) in itertools.product(p.groupby(["role", "method"]).groups, cells):
            cell = found.get((role, method, suite, mode), p.iloc[:0])
            files = cell.groupby("seed").agg(n=("index", "size"), file=("file", "first"))
            want = {"None"} if method == "base" else trained
            what = []
            if lacking := sorted(want - set(files.index)):
                have = len(want) - len(lacking)
                what.append(f"no result for seed {', '.join(lacking)} (have {have} of {len(want)} seeds)")
            what += [f"{f.n} of {n_items[suite]} items in {f.file}" for f in files.itertuples() if f.n < n_items[suite]]
            if what:
                missing[(pair, role, method, suite, mode)] = "; ".join(what)
    return missing


def bootstrap(values: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple:
    """Mean of ``values`` [S seeds, N items] and the ``level`` percentile-bootstrap interval over ``resamples``
    draws of seeds and items: ``est_b = c_b^T values d_b / (S N)``, c_b [S], d_b [N] draw counts (docs/running.md).
    """
    values = np.asarray(values, dtype=np.float64)
    S, N = values.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, S, size=(resamples, S))
    item_draws = rng.integers(0, N, size=(resamples, N))
    rows = np.arange(resamples)[:, None]
    c = np.bincount((rows * S + seed_draws).ravel(), minlength=resamples * S).reshape(resamples, S)
    d = np.bincount((rows * N + item_draws).ravel(), minlength=resamples * N).reshape(resamples, N)
    est = np.einsum("bs,sn,bn->b", c, values, d) / (S * N)  # [B]
    lo, hi = np.quantile(est, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(lo), float(hi)


def paired(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """``[S, N]`` mean@k differences a - b on the items both have; seeds paired by label, or, when b is the
    base model (one unlabelled seed), b subtracted from every seed of a."""
    A, B = (x.pivot(index="seed", columns="index", values="mean") for x in (a, b))  # [S, N], seeds in str order
    diff = A - B.iloc[0] if list(B.index) == ["None"] else A.sub(B).loc[A.index.intersection(B.index)]
    return diff.dropna(axis=1).to_numpy()  # aligned on item index: NaN where either side lacks the item


def _order(df: pd.DataFrame) -> list[tuple]:
    """The table's rows (pair, role, method): pairs sorted, then roles and methods in their order."""
    keys = set(df[CELL[:3]].itertuples(index=False, name=None))

    def rank(values: list[str], x: str) -> tuple:  # a sweep's "codistill[kd.coef=0.3]" sorts with codistill
        return [*values, x.split("[")[0]].index(x.split("[")[0]), x  # unknown: after the known ones

    return sorted(keys, key=lambda k: (k[0], rank(ROLE_ORDER, k[1]), rank(METHOD_ORDER, k[2])))


def method_title(method: str) -> str:
    base, _, variant = method.partition("[")
    return METHOD_TITLES.get(base, base) + (f" [{variant}" if variant else "")


def _per_experiment(logs: dict[str, dict[str, dict[int, float]]], per_run) -> dict[str, list]:
    """``{experiment (a log's label before its last "/"): [per_run(log) of each seed's log]}`` (None: left out)."""
    out: dict[str, list] = {}
    for label, series in logs.items():
        if (value := per_run(series)) is not None:
            out.setdefault(label.rsplit("/", 1)[0], []).append(value)
    return out


def train_minutes(logs: dict[str, dict[str, dict[int, float]]]) -> dict[str, list[float]]:
    """``{experiment: [training minutes of each seed's run]}``: the sum of ``timing_s/step`` of a log."""
    return _per_experiment(logs, lambda t: sum(t["timing_s/step"].values()) / 60 if t.get("timing_s/step") else None)


def generated_tokens(logs: dict[str, dict[str, dict[int, float]]]) -> dict[str, list[float]]:
    """``{experiment: [response tokens generated in each seed's run]}``: sum over steps of
    ``perf/total_num_tokens * response_length/mean / (prompt_length/mean + response_length/mean)`` (docs/running.md)."""

    def tokens(log: dict[str, dict[int, float]]) -> float | None:
        keys = ("perf/total_num_tokens", "response_length/mean", "prompt_length/mean")
        total, resp, prompt = (log.get(k, {}) for k in keys)
        steps = set(total) & set(resp) & set(prompt)
        parts = [total[s] * resp[s] / (prompt[s] + resp[s]) for s in steps if prompt[s] + resp[s] > 0]
        return sum(parts) if steps else None

    return _per_experiment(logs, tokens)


def _lookup(df: pd.DataFrame, key: tuple, suite: str, kind: str) -> tuple[tuple | None, str]:
    """The cell (``CELL`` values) and statistic (``mean`` mean@k, ``max`` pass@k) a column reads for a row."""
    sampled = ((df.pair == key[0]) & (df.suite == suite) & (df["mode"] == "sampled")).any()
    mode = {"main": "sampled" if sampled else "greedy", "greedy": "greedy", "pass": "sampled" if sampled else None}
    return ((*key, suite, mode[kind]) if mode[kind] else None), "max" if kind == "pass" else "mean"


def _ci(cell: tuple | None) -> str:
    return "–" if cell is None else "{:.1f} [{:.1f}, {:.1f}]".format(*cell)


def _title(df: pd.DataFrame, suite: str, kind: str) -> str:
    name, ks = SUITE_TITLES.get(suite, suite), set(df.k[(df.suite == suite) & (df["mode"] == "sampled")])
    k = str(ks.pop()) if len(ks) == 1 else "k"
    both = {"greedy", "sampled"} <= set(df["mode"][df.suite == suite])
    return {"main": f"{name} mean@{k}" if both else name, "greedy": f"{name} greedy", "pass": f"{name} pass@{k}"}[kind]


def _write(path: Path, header: list[str], rows: list[list[str]], after: list[str], frame: pd.DataFrame) -> str:
    """``<path>.md`` (returned): the table (numbers right-aligned), then ``after``; ``<path>.csv``: ``frame``."""
    lines = ["| " + " | ".join(row) + " |" for row in [header, *rows]]
    lines.insert(1, "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|")
    path.with_suffix(".md").write_text(markdown := "\n".join(lines + list(after)) + "\n")
    frame.to_csv(path.with_suffix(".csv"), index=False, float_format="%.2f", lineterminator="\r\n")
    return markdown


def main_table(df: pd.DataFrame, suites: list, minutes: dict, missing: dict, boot: tuple, path, footer: list) -> str:
    """main_table.md/.csv (columns: docs/running.md): per (pair, role, method) each column's number and
    interval, Avg, train time (mean ± std over seeds), seeds; returns the Markdown."""
    both = [s for s in suites if set(df["mode"][df.suite == s]) == {"greedy", "sampled"}]
    cols = [(s, k) for s in suites for k in (["main", "greedy", "pass"] if s in both else ["main"])]
    cells = dict(list(df.groupby(CELL)))
    header = ["Model pair", "Model", "Method"] + [_title(df, s, k) for s, k in cols]
    header += (["Avg"] if len(suites) > 1 else []) + ["Train time (min)", "Seeds"]
    lines, notes, records = [], [], []
    for key in _order(df):
        pair, role, method = *key[:2], method_title(key[2])
        text, record, flags = [pair, role, method], {"pair": pair, "model": role, "method": method}, []
        for suite, kind in cols:
            where, stat = _lookup(df, key, suite, kind)
            values = cells[where].pivot(index="seed", columns="index", values=stat) if where in cells else None
            ci = None if values is None else tuple(100 * x for x in bootstrap(values.dropna(axis=1), *boot))
            name = suite if kind == "main" else f"{suite}_{kind}"
            record.update(zip((name, f"{name}_lo", f"{name}_hi"), ci or (None,) * 3))
            text.append(_ci(ci) + ("†" if missing.get(where) else ""))
            if missing.get(where):
                flags.append(missing[where])
                notes.append(f"† {pair} {role} {method} {_title(df, suite, kind)}: {missing[where]}")
        means = [record[s] for s in suites]
        avg = sum(means) / len(means) if None not in means else None
        text += [] if len(suites) < 2 else ["–" if avg is None else f"{avg:.1f}"]
        runs = None if key[2] == "base" else minutes.get(f"grpo_{key[1]}" if key[2] == "grpo" else key[2])  # its run
        time = (statistics.fmean(runs), statistics.stdev(runs) if len(runs) > 1 else None) if runs else (None, None)
        seeds = max(c.seed.nunique() for k, c in cells.items() if k[:3] == key)
        text.append("–" if time[0] is None else f"{time[0]:.1f}" + ("" if time[1] is None else f" ± {time[1]:.1f}"))
        lines.append([*text, str(seeds)])
        record.update(avg=avg, train_min=time[0], train_min_std=time[1], seeds=seeds, missing="; ".join(flags))
        records.append(record)
    notes = ["", "Cells: mean [95% bootstrap interval over seeds and test items], in percent.", *dict.fromkeys(notes)]
    return _write(path, header, lines, [*notes, *footer], pd.DataFrame(records))


def difference_table(df: pd.DataFrame, suites: list, missing: dict, boot: tuple, path: Path) -> str:
    """differences.md/.csv (docs/running.md): method - Base and CoDistill-GRPO - GRPO; returns the Markdown."""
    header = ["Model pair", "Model", "Comparison"] + [f"Δ {_title(df, s, 'main')}" for s in suites]
    lines, records, cells, keys = [], [], dict(list(df.groupby(CELL))), _order(df)
    for pair, role, method in keys:
        refs = [("base", "Base")] + ([("grpo", "GRPO")] if method.split("[")[0] == "codistill" else [])
        for ref, title in (r for r in refs if method != r[0] and (pair, role, r[0]) in keys):
            comparison = f"{method_title(method)} − {title}"
            lines.append([pair, role, comparison])
            for suite in suites:
                where, _ = _lookup(df, (pair, role, method), suite, "main")
                other = (pair, role, ref, *where[3:])
                diff = paired(cells[where], cells[other]) if {where, other} <= set(cells) else np.zeros((0, 0))
                ci = tuple(100 * x for x in bootstrap(diff, *boot)) if diff.size else None
                excludes = ci is not None and (ci[1] > 0 or ci[2] < 0)
                flag = bool(missing.get(where) or missing.get(other))
                lines[-1].append((f"**{_ci(ci)}**" if excludes else _ci(ci)) + ("†" if flag else ""))
                if ci is not None:
                    records.append([pair, role, comparison, suite, *ci, int(excludes), *diff.shape, int(flag)])
    note = (
        "Paired differences in percentage points, 95% bootstrap interval (items paired by index; seeds "
        "paired for GRPO); **bold**: the interval excludes 0; †: a side has missing seeds or items."
    )
    names = ["pair", "model", "comparison", "suite", "diff", "lo", "hi", "excludes_zero", "seeds", "items", "missing"]
    return _write(path, header, lines, ["", note], pd.DataFrame(records, columns=names))


def read_log(path: str | Path) -> dict[str, dict[int, float]]:
    """``{metric: {step: value}}`` of a verl file-logger JSONL (numbers only; a repeated step: the last value)."""
    rows = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError as error:
            raise TableError(f"{path}:{line_no}: not JSON ({error.msg})") from error
        if record is not None and "step" not in record:
            raise TableError(f"{path}:{line_no}: no 'step' key")
        data = record and (record["data"] if isinstance(record.get("data"), dict) else record)
        numbers = {k: v for k, v in (data or {}).items() if type(v) in (int, float) and math.isfinite(v)}
        rows += [{**numbers, "step": int(record["step"])}] if record else []
    frame = pd.DataFrame(rows).groupby("step").last() if rows else pd.DataFrame()
    return {key: {int(k): float(v) for k, v in column.dropna().items()} for key, column in frame.items()}


def plot_curves(logs: dict[str, dict[str, dict[int, float]]], patterns: list[str], path: Path) -> list[str]:
    """One panel per metric matching ``patterns``, a line per experiment (seeds' mean, min-max shaded); the keys."""
    from matplotlib.figure import Figure  # no pyplot: the process's backend stays as it is
    from matplotlib.ticker import MaxNLocator

    all_keys = sorted({k for series in logs.values() for k in series})
    keys = list(dict.fromkeys(k for pattern in patterns for k in all_keys if fnmatch.fnmatchcase(k, pattern)))
    if not keys:
        raise TableError(f"no metric in the logs matches --curve-keys {patterns}")
    groups = _per_experiment(logs, lambda series: series)  # one colour per experiment in every panel: C<c>
    cols, nrows = min(3, len(keys)), math.ceil(len(keys) / 3)
    fig = Figure(figsize=(5 * cols, 3.2 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for c, (name, runs) in enumerate(groups.items()):
            frame = pd.DataFrame({i: r[key] for i, r in enumerate(runs) if key in r}).sort_index()  # [steps, seeds]
            if frame.empty:
                continue
            style = {"marker": "o" if len(frame) <= 50 else None, "markersize": 3, "color": f"C{c}"}
            ax.plot(frame.index, frame.mean(axis=1), label=f"{name} (n={frame.shape[1]})", **style)
            if frame.shape[1] > 1:
                ax.fill_between(frame.index, frame.min(axis=1), frame.max(axis=1), color=f"C{c}", alpha=0.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return keys


def write_tables(args, suites: list[str], seeds: list[int] | None, logs: dict, out: Path) -> None:
    """main_table.md/.csv and differences.md/.csv from ``--results`` (and the logs' train times and tokens)."""
    df, skipped = load_results(args.results, suites, args.allow_missing)
    if df.empty:
        raise TableError(f"no results for suites {suites} under {', '.join(args.results)}")
    missing = check_missing(df, seeds)
    if missing and not args.allow_missing:
        (pair, role, method, suite, mode), what = min(missing.items(), key=str)  # the first in sorted order
        more = f" (and {len(missing) - 1} more cells)" if len(missing) > 1 else ""
        raise TableError(
            f"{pair} {role} {method} {suite} ({mode}): {what}{more}; finish the evaluation or pass --allow-missing"
        )
    tokens = [  # per experiment: response tokens its generating model produced in training, mean over seeds
        f"{exp} {statistics.fmean(values):,.0f} by the {'large' if exp == 'grpo_large' else 'small'} model "
        f"(n={len(values)}){'' if exp.startswith('grpo_') else ', the large model none'}"
        for exp, values in generated_tokens(logs).items()
    ]
    footer = [f"Skipped (--allow-missing): {f}" for f in skipped]
    footer += ["", f"Response tokens generated in training (mean over seeds): {'; '.join(tokens)}."] * bool(tokens)
    boot = (args.resamples, args.bootstrap_seed)
    markdown = main_table(df, suites, train_minutes(logs), missing, boot, out / "main_table", footer)
    print(markdown + "\n" + difference_table(df, suites, missing, boot, out / "differences"), end="")
    print("wrote " + ", ".join(str(out / f"{t}.{e}") for t in ("main_table", "differences") for e in ("md", "csv")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", action="append", default=[], help="folder of evaluate.py JSONs (repeatable, recursive)")
    p.add_argument("--out", required=True, help="output folder: main_table.md/.csv, differences.md/.csv, curves.png")
    p.add_argument("--suites", default=",".join(SUITES), help="table columns, in order")
    p.add_argument("--log", action="append", default=[], metavar="EXP[/SEED]=FILE", help="verl file-logger JSONL")
    p.add_argument("--curve-keys", default=None, help="comma-separated fnmatch patterns of metrics to plot")
    p.add_argument("--seeds", default=None, help="comma-separated training seeds every trained row must have")
    p.add_argument("--allow-missing", action="store_true", help="tabulate despite missing results (cells marked †)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per cell (default 2000)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="RNG seed of the bootstrap (default 0)")
    args = p.parse_args(argv)
    out, suites = Path(args.out), [s for s in args.suites.split(",") if s]
    try:
        if not args.results and not args.log:
            raise TableError("nothing to do: give --results and/or --log")
        if args.resamples < 1:
            raise TableError(f"--resamples must be >= 1, got {args.resamples}")
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s] if args.seeds else None
        except ValueError:
            raise TableError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        logs = {}
        for item in args.log:  # the first "=" outside [...]: a sweep's label has its own, codistill[kd.coef=0.3]/1=F
            if not (match := re.fullmatch(r"((?:\[[^\]]*\]|[^=])*?)=(.*)", item, re.DOTALL)):
                raise TableError(f"--log expects EXP[/SEED]=FILE, got {item!r}")
            if not Path(match[2]).exists():
                raise TableError(f"--log {match[1]}: {match[2]} not found")
            logs[match[1]] = read_log(match[2])
        out.mkdir(parents=True, exist_ok=True)
        if args.results:
            write_tables(args, suites, seeds, logs, out)
        if logs:
            try:
                patterns = args.curve_keys.split(",") if args.curve_keys else DEFAULT_CURVE_KEYS
                keys = plot_curves(logs, patterns, out / "curves.png")
                print(f"wrote {out / 'curves.png'} ({len(keys)} panels: {', '.join(keys)})")
            except TableError as error:
                if not args.results:
                    raise
                print(f"make_tables: no curves: {error}")
    except TableError as error:
        print(f"make_tables: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
