#!/usr/bin/env python
"""Evaluation JSONs -> the paper's main table (Markdown + CSV); verl training logs -> curves (PNG).

    python scripts/make_tables.py --results results --out tables \\
        --log codistill=logs/codistill/qwen_codistill.jsonl --log grpo=logs/codistill/qwen_grpo_small.jsonl

Table: one row per (model pair, model role, method), methods ordered base, GRPO,
CoDistill-GRPO (others after); one column per suite plus their average, in percent::

    cell(row, suite) = 100 * aggregate["mean@k"] of <results>/*/<suite>.json whose meta matches the row
    Avg(row)         = mean of the row's suite cells (blank when a suite is missing)

A cell from an unfinished evaluation (``complete: false``) is marked ``*``. Two result files for
the same row and suite are an error naming both.

Curves: each ``--log LABEL=FILE`` is verl's ``file`` tracking backend output
(``verl/utils/tracking.py: FileLogger``, one ``{"step": N, "data": {metric: value}}`` per line,
written to ``$VERL_FILE_LOGGER_PATH`` or ``$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl``;
flat ``{"step": N, metric: value}`` lines are accepted too; a repeated step keeps its last
line). Every metric matching ``--curve-keys`` (fnmatch patterns) in any log gets a panel in
``<out>/curves.png`` with one line per log.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

SUITES = ["math500", "minerva", "olympiadbench", "aime24", "amc23"]
SUITE_TITLES = {"math500": "MATH500", "minerva": "Minerva", "olympiadbench": "OlympiadBench",
                "aime24": "AIME24", "amc23": "AMC23"}
METHOD_ORDER = ["base", "grpo", "codistill"]
METHOD_TITLES = {"base": "Base", "grpo": "GRPO", "codistill": "CoDistill-GRPO"}
ROLE_ORDER = ["small", "large"]
DEFAULT_CURVE_KEYS = [
    "critic/score/mean",
    "small/acc",
    "val-core/*/acc/mean@*",
    "small/kd_reward_mean",
    "small/kd_reverse_kl",
    "small/adv_kd_part_abs",
    "large/is_ess",
    "large/is_weight_mean",
    "large/is_clip_frac",
    "large/logprob_gap",
    "actor/pg_loss",
    "large/pg_loss",
    "actor/grad_norm",
    "large/grad_norm",
]


class TableError(ValueError):
    """Bad input for the table; the message names the file or value."""


def load_results(dirs: list[str | Path], suites: list[str], metric: str = "mean@k") -> dict[tuple, dict[str, Any]]:
    """``{(pair, role, method): {suite: {"value", "complete", "file"}}}`` from evaluate.py JSONs."""
    table: dict[tuple, dict[str, Any]] = {}
    for root in dirs:
        files = sorted(Path(root).rglob("*.json"))
        if not files:
            raise TableError(f"--results {root}: no result JSON files found")
        for file in files:
            data = json.loads(file.read_text())
            if "aggregate" not in data or "suite" not in data:
                continue
            suite = data["suite"]
            if suite not in suites:
                continue
            meta = data.get("meta") or {}
            key = (meta.get("pair") or "", meta.get("role") or "", meta.get("method") or data.get("model", ""))
            if metric not in data["aggregate"]:
                raise TableError(f"{file}: aggregate has no '{metric}' (has {sorted(data['aggregate'])})")
            row = table.setdefault(key, {})
            if suite in row:
                raise TableError(f"two results for pair={key[0]!r} role={key[1]!r} method={key[2]!r} "
                                 f"suite={suite!r}: {row[suite]['file']} and {file}")
            row[suite] = {"value": float(data["aggregate"][metric]), "complete": bool(data.get("complete", True)),
                          "file": str(file)}
    return table


def _order(keys: list[tuple]) -> list[tuple]:
    pairs = list(OrderedDict.fromkeys(k[0] for k in sorted(keys)))

    def rank(values: list[str], x: str) -> tuple:
        return (values.index(x), "") if x in values else (len(values), x)

    return sorted(keys, key=lambda k: (pairs.index(k[0]), rank(ROLE_ORDER, k[1]), rank(METHOD_ORDER, k[2])))


def table_rows(table: dict[tuple, dict[str, Any]], suites: list[str]) -> list[dict[str, Any]]:
    """Ordered rows: ``{"pair", "role", "method", suite: percent | None, ..., "avg", "partial": set}``."""
    rows = []
    for key in _order(list(table)):
        cells = table[key]
        row: dict[str, Any] = {"pair": key[0], "role": key[1], "method": METHOD_TITLES.get(key[2], key[2]),
                               "partial": {s for s, c in cells.items() if not c["complete"]}}
        for suite in suites:
            row[suite] = 100.0 * cells[suite]["value"] if suite in cells else None
        values = [row[s] for s in suites]
        row["avg"] = sum(values) / len(values) if all(v is not None for v in values) else None
        rows.append(row)
    return rows


def render_markdown(rows: list[dict[str, Any]], suites: list[str], digits: int = 1) -> str:
    header = ["Model pair", "Model", "Method"] + [SUITE_TITLES.get(s, s) for s in suites] + ["Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(suites) + 1)) + "|"]
    for row in rows:
        cells = [row["pair"], row["role"], row["method"]]
        for suite in suites:
            value = row[suite]
            cells.append("–" if value is None else f"{value:.{digits}f}" + ("*" if suite in row["partial"] else ""))
        cells.append("–" if row["avg"] is None else f"{row['avg']:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    if any(row["partial"] for row in rows):
        lines.append("")
        lines.append("\\* unfinished evaluation (not all items scored yet)")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], suites: list[str], path: Path, digits: int = 2) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["pair", "model", "method"] + suites + ["avg"])
        for row in rows:
            writer.writerow([row["pair"], row["role"], row["method"]]
                            + ["" if row[s] is None else f"{row[s]:.{digits}f}" for s in suites]
                            + ["" if row["avg"] is None else f"{row['avg']:.{digits}f}"])


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
    """One panel per metric matching ``patterns`` in any log, one line per log. Returns the metrics plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    all_keys = sorted({k for series in logs.values() for k in series})
    keys = [k for pattern in patterns for k in all_keys if fnmatch.fnmatchcase(k, pattern)]
    keys = list(OrderedDict.fromkeys(keys))
    if not keys:
        raise TableError(f"no metric in the logs matches --curve-keys {patterns}")
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, series in logs.items():
            if key in series:
                steps = sorted(series[key])
                ax.plot(steps, [series[key][s] for s in steps], label=label, marker="o" if len(steps) <= 50 else None,
                        markersize=3)
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
    p.add_argument("--log", action="append", default=[], metavar="LABEL=FILE", help="verl file-logger JSONL (repeatable)")
    p.add_argument("--curve-keys", default=None, help="comma-separated fnmatch patterns of metrics to plot")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suites = [s for s in args.suites.split(",") if s]
    try:
        if not args.results and not args.log:
            raise TableError("nothing to do: give --results and/or --log")
        if args.results:
            rows = table_rows(load_results(args.results, suites, args.metric), suites)
            markdown = render_markdown(rows, suites)
            (out / "main_table.md").write_text(markdown)
            write_csv(rows, suites, out / "main_table.csv")
            print(markdown, end="")
            print(f"wrote {out / 'main_table.md'} and {out / 'main_table.csv'}")
        if args.log:
            logs = {}
            for item in args.log:
                if "=" not in item:
                    raise TableError(f"--log expects LABEL=FILE, got {item!r}")
                label, file = item.split("=", 1)
                if not Path(file).exists():
                    raise TableError(f"--log {label}: {file} not found")
                logs[label] = read_log(file)
            patterns = args.curve_keys.split(",") if args.curve_keys else DEFAULT_CURVE_KEYS
            keys = plot_curves(logs, patterns, out / "curves.png")
            print(f"wrote {out / 'curves.png'} ({len(keys)} panels: {', '.join(keys)})")
    except TableError as error:
        print(f"make_tables: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
