#!/usr/bin/env python
"""Evaluation JSONs -> the paper's main table (Markdown + CSV); training logs -> curves (PNG).

    python scripts/make_tables.py --results results --out tables --suites test \\
        --log codistill/1=runs/codistill/seed1/metrics.jsonl --log grpo_small/1=runs/grpo_small/seed1/metrics.jsonl

Table: one row per (model pair, model role, method), methods ordered base, GRPO, CoDistill-GRPO,
then the ablations; one column per suite, their average, and the training time, in percent::

    cell(row, suite) = 100 * aggregate["mean@k"] of the <results>/**/<suite>.json whose meta matches the row,
                       the mean over the training seeds (meta.seed) +- their standard deviation (n - 1)
    Avg(row)         = mean of the row's suite means (blank when a suite is missing)
    Train time(row)  = the run's training time, sum of timing_s/step over its steps, in minutes,
                       mean +- std over seeds, from the --log of the row's experiment (base: none)

A cell from an unfinished evaluation (``complete: false``) is marked ``*``. Two result files for the
same row, seed and suite are an error naming both.

Logs: ``--log EXP[/SEED]=FILE``, verl's ``file`` tracking backend output (one
``{"step": N, "data": {metric: value}}`` per line; flat ``{"step": N, metric: value}`` lines are
accepted; a repeated step keeps its last line). The experiment of a row: ``grpo_<role>`` for GRPO,
the method's name otherwise. Curves: every metric matching ``--curve-keys`` (fnmatch patterns)
gets a panel in ``<out>/curves.png`` with one line per experiment, the mean over its seeds and the
min-max spread shaded.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import statistics
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

SUITES = ["math500", "minerva", "olympiadbench", "aime24", "amc23"]
SUITE_TITLES = {"math500": "MATH500", "minerva": "Minerva", "olympiadbench": "OlympiadBench",
                "aime24": "AIME24", "amc23": "AMC23", "test": "Test"}
METHOD_ORDER = ["base", "grpo", "codistill", "frozen_teacher", "no_is", "kd_only"]
METHOD_TITLES = {"base": "Base", "grpo": "GRPO", "codistill": "CoDistill-GRPO", "frozen_teacher": "Frozen teacher",
                 "no_is": "No IS", "kd_only": "KD only"}
ROLE_ORDER = ["small", "large"]
DEFAULT_CURVE_KEYS = ["val-core/*/acc/mean@*", "critic/score/mean", "small/kd_reward_mean", "large/is_ess",
                      "small/pg_loss", "large/pg_loss"]


class TableError(ValueError):
    """Bad input for the table; the message names the file or value."""


def load_results(dirs: list[str | Path], suites: list[str], metric: str = "mean@k") -> dict[tuple, dict[str, Any]]:
    """``{(pair, role, method): {suite: {"values": [one per seed], "complete", "files"}}}`` from evaluate.py JSONs."""
    table: dict[tuple, dict[str, Any]] = {}
    seen: dict[tuple, str] = {}
    for root in dirs:
        files = sorted(Path(root).rglob("*.json"))
        if not files:
            raise TableError(f"--results {root}: no result JSON files found")
        for file in files:
            try:
                data = json.loads(file.read_text())
            except ValueError:
                continue
            if not isinstance(data, dict) or "aggregate" not in data or data.get("suite") not in suites:
                continue
            meta = data.get("meta") or {}
            key = (meta.get("pair") or "", meta.get("role") or "", meta.get("method") or data.get("model", ""))
            if metric not in data["aggregate"]:
                raise TableError(f"{file}: aggregate has no '{metric}' (has {sorted(data['aggregate'])})")
            suite, seed = data["suite"], meta.get("seed")
            if (*key, seed, suite) in seen:
                raise TableError(f"two results for pair={key[0]!r} role={key[1]!r} method={key[2]!r} seed={seed!r} "
                                 f"suite={suite!r}: {seen[(*key, seed, suite)]} and {file}")
            seen[(*key, seed, suite)] = str(file)
            cell = table.setdefault(key, {}).setdefault(suite, {"values": [], "complete": True, "files": []})
            cell["values"].append(float(data["aggregate"][metric]))
            cell["complete"] &= bool(data.get("complete", True))
            cell["files"].append(str(file))
    return table


def _order(keys: list[tuple]) -> list[tuple]:
    pairs = list(OrderedDict.fromkeys(k[0] for k in sorted(keys)))

    def rank(values: list[str], x: str) -> tuple:
        return (values.index(x), "") if x in values else (len(values), x)

    return sorted(keys, key=lambda k: (pairs.index(k[0]), rank(ROLE_ORDER, k[1]), rank(METHOD_ORDER, k[2])))


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def experiment_of(role: str, method: str) -> str | None:
    """The training run behind a row: ``grpo_<role>`` for GRPO, the method otherwise (base: none)."""
    if method == "base":
        return None
    return f"grpo_{role}" if method == "grpo" else method


def train_minutes(logs: dict[str, dict[str, dict[int, float]]]) -> dict[str, list[float]]:
    """``{experiment: [training minutes of each seed's run]}``: the sum of ``timing_s/step`` of a log."""
    out: dict[str, list[float]] = {}
    for label, series in logs.items():
        steps = series.get("timing_s/step")
        if steps:
            out.setdefault(label.split("/")[0], []).append(sum(steps.values()) / 60.0)
    return out


def table_rows(table: dict[tuple, dict[str, Any]], suites: list[str], minutes: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
    """Ordered rows: ``{"pair", "role", "method", suite: (mean %, std % | None) | None, "avg", "time", "seeds", "partial"}``."""
    rows = []
    for key in _order(list(table)):
        cells = table[key]
        row: dict[str, Any] = {"pair": key[0], "role": key[1], "method": METHOD_TITLES.get(key[2], key[2]),
                               "partial": {s for s, c in cells.items() if not c["complete"]},
                               "seeds": max((len(c["values"]) for c in cells.values()), default=0)}
        for suite in suites:
            row[suite] = _mean_std([100.0 * v for v in cells[suite]["values"]]) if suite in cells else None
        means = [row[s][0] if row[s] else None for s in suites]
        row["avg"] = sum(means) / len(means) if all(m is not None for m in means) else None
        exp = experiment_of(key[1], key[2])
        runs = (minutes or {}).get(exp) if exp else None
        row["time"] = _mean_std(runs) if runs else None
        rows.append(row)
    return rows


def _fmt(cell: tuple[float, float | None] | None, digits: int) -> str:
    if cell is None:
        return "–"
    mean, std = cell
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def render_markdown(rows: list[dict[str, Any]], suites: list[str], digits: int = 1) -> str:
    header = ["Model pair", "Model", "Method"] + [SUITE_TITLES.get(s, s) for s in suites]
    header += (["Avg"] if len(suites) > 1 else []) + ["Train time (min)", "Seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for row in rows:
        cells = [row["pair"], row["role"], row["method"]]
        cells += [_fmt(row[s], digits) + ("*" if s in row["partial"] else "") for s in suites]
        if len(suites) > 1:
            cells.append("–" if row["avg"] is None else f"{row['avg']:.{digits}f}")
        cells += [_fmt(row["time"], 1), str(row["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    if any(row["partial"] for row in rows):
        lines.append("")
        lines.append("\\* unfinished evaluation (not all items scored yet)")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], suites: list[str], path: Path, digits: int = 2) -> None:
    def num(x):
        return "" if x is None else f"{x:.{digits}f}"

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["pair", "model", "method"] + [f"{s}{part}" for s in suites for part in ("", "_std")]
                        + ["avg", "train_min", "train_min_std", "seeds"])
        for row in rows:
            cells = [num(row[s][0]) if row[s] else "" for s in suites]
            stds = [num(row[s][1]) if row[s] else "" for s in suites]
            writer.writerow([row["pair"], row["role"], row["method"]] + [v for pair in zip(cells, stds) for v in pair]
                            + [num(row["avg"]), num(row["time"][0]) if row["time"] else "",
                               num(row["time"][1]) if row["time"] else "", row["seeds"]])


def read_log(path: str | Path) -> dict[str, dict[int, float]]:
    """``{metric: {step: value}}`` from a verl file-logger JSONL (non-numeric values skipped)."""
    series: dict[str, dict[int, float]] = {}
    with Path(path).open() as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TableError(f"{path}:{line_no}: not JSON ({error.msg})") from error
            if "step" not in record:
                raise TableError(f"{path}:{line_no}: no 'step' key")
            data = record["data"] if isinstance(record.get("data"), dict) else record
            for key, value in data.items():
                if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    series.setdefault(key, {})[int(record["step"])] = float(value)
    return series


def plot_curves(logs: dict[str, dict[str, dict[int, float]]], patterns: list[str], path: Path) -> list[str]:
    """One panel per metric matching ``patterns``; one line per experiment (label before ``/``): the
    mean over its seeds at each step, the seeds' min-max shaded. Returns the metrics plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    all_keys = sorted({k for series in logs.values() for k in series})
    keys = list(OrderedDict.fromkeys(k for pattern in patterns for k in all_keys if fnmatch.fnmatchcase(k, pattern)))
    if not keys:
        raise TableError(f"no metric in the logs matches --curve-keys {patterns}")
    groups: dict[str, list[dict[str, dict[int, float]]]] = OrderedDict()
    for label, series in logs.items():
        groups.setdefault(label.split("/")[0], []).append(series)
    colors = {name: f"C{i}" for i, name in enumerate(groups)}  # one colour per experiment in every panel
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, runs in groups.items():
            runs = [r[key] for r in runs if key in r]
            if not runs:
                continue
            steps = sorted(set().union(*runs))
            values = [[r[s] for r in runs if s in r] for s in steps]
            mean = [statistics.fmean(v) for v in values]
            ax.plot(steps, mean, label=f"{name} (n={len(runs)})", marker="o" if len(steps) <= 50 else None,
                    markersize=3, color=colors[name])
            if len(runs) > 1:
                ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=colors[name], alpha=0.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return keys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", action="append", default=[], help="folder of evaluate.py JSONs (repeatable, searched recursively)")
    p.add_argument("--out", required=True, help="output folder: main_table.md, main_table.csv, curves.png")
    p.add_argument("--suites", default=",".join(SUITES), help="table columns, in order")
    p.add_argument("--metric", default="mean@k", help="aggregate key to tabulate (mean@k = pass@1 when k = 1)")
    p.add_argument("--log", action="append", default=[], metavar="EXP[/SEED]=FILE", help="verl file-logger JSONL (repeatable)")
    p.add_argument("--curve-keys", default=None, help="comma-separated fnmatch patterns of metrics to plot")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suites = [s for s in args.suites.split(",") if s]
    try:
        if not args.results and not args.log:
            raise TableError("nothing to do: give --results and/or --log")
        logs = {}
        for item in args.log:
            if "=" not in item:
                raise TableError(f"--log expects EXP[/SEED]=FILE, got {item!r}")
            label, file = item.split("=", 1)
            if not Path(file).exists():
                raise TableError(f"--log {label}: {file} not found")
            logs[label] = read_log(file)
        if args.results:
            rows = table_rows(load_results(args.results, suites, args.metric), suites, train_minutes(logs))
            markdown = render_markdown(rows, suites)
            (out / "main_table.md").write_text(markdown)
            write_csv(rows, suites, out / "main_table.csv")
            print(markdown, end="")
            print(f"wrote {out / 'main_table.md'} and {out / 'main_table.csv'}")
        if logs:
            patterns = args.curve_keys.split(",") if args.curve_keys else DEFAULT_CURVE_KEYS
            try:
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
