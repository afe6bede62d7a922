#!/usr/bin/env python
"""Raw math datasets -> verl RLHFDataset parquet (train + evaluation suites) and a manifest.

    python scripts/prepare_data.py --out data/qwen_math --template qwen_math
    python scripts/prepare_data.py --out data/llama --template llama_instruct --levels 3,4,5
    python scripts/prepare_data.py --out /tmp/d --template qwen_math --suites math500,minerva \\
        --local math500=/data/math500.jsonl --local minerva=/data/minerva.parquet --on-bad-row drop

Details (formats, equations, options): docs/running.md, section scripts/prepare_data.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from verl_ext.reward.answer import last_boxed_content, normalize_answer  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "data" / "math.yaml"
DEFAULT_TEMPLATES = REPO / "configs" / "prompt_templates.yaml"
REQUIRED_SUITE_KEYS = ("data_source", "loader", "path", "question", "answer")


class DataError(ValueError):
    """A bad dataset, row or config value; the message names it."""


def load_templates(path: str | Path = DEFAULT_TEMPLATES) -> dict[str, list[dict[str, str]]]:
    """``{key: [{"role", "content"}, ...]}`` from the templates YAML, validated."""
    templates = yaml.safe_load(Path(path).read_text())
    for key, messages in templates.items():
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and set(m) == {"role", "content"} for m in messages
        ):
            raise DataError(f"{path}: template '{key}' must be a list of {{role, content}} messages")
        if sum("{question}" in m["content"] for m in messages) != 1:
            raise DataError(f"{path}: template '{key}' must contain {{question}} in exactly one message")
    return templates


def render_prompt(template: list[dict[str, str]], question: str) -> list[dict[str, str]]:
    """Chat messages of ``template`` with the literal ``{question}`` replaced by ``question``."""
    return [{"role": m["role"], "content": m["content"].replace("{question}", question)} for m in template]


def read_table(spec: dict[str, Any], suite: str) -> pd.DataFrame:
    """The suite's raw rows as a DataFrame: Hub (``datasets.load_dataset``) or a local file."""
    loader, path = spec["loader"], str(spec["path"])
    if loader == "local":
        file = Path(path)
        if not file.exists():
            raise DataError(f"suite '{suite}': local file not found: {file}")
        if file.suffix == ".parquet":
            return pd.read_parquet(file)
        if file.suffix in (".jsonl", ".json"):
            return pd.read_json(file, lines=file.suffix == ".jsonl", dtype=False)
        raise DataError(f"suite '{suite}': unsupported local file type '{file.suffix}' (jsonl, json, parquet)")
    if loader == "hub":
        import datasets

        dataset = datasets.load_dataset(path, spec.get("name"), split=spec.get("split", "train"))
        return dataset.to_pandas()
    raise DataError(f"suite '{suite}': loader must be 'hub' or 'local', got {loader!r}")


def _as_text(value: Any) -> str | None:
    """A cell as text: list/array cells normalised item by item and joined with ', ', missing as None."""
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = [normalize_answer(str(v)) for v in value if v is not None and str(v).strip()]
        return ", ".join(parts) if parts else None
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # numeric answer columns (e.g. AMC) store 12 as 12.0
    return str(value)


def _level(value: Any) -> int:
    match = re.search(r"\d+", str(value)) if value is not None else None
    return int(match.group()) if match else -1


def build_suite(
    frame: pd.DataFrame, spec: dict[str, Any], suite: str, template: list[dict[str, str]], on_bad_row: str = "fail",
    levels: list[int] | None = None,
) -> tuple[pd.DataFrame, list[str]]:  # fmt: skip
    """Map raw rows to verl rows. Returns ``(rows, problems)``; ``problems`` lists dropped rows.

    Raises ``DataError`` for a missing column, or for a bad row when ``on_bad_row == "fail"``.
    """
    for key in REQUIRED_SUITE_KEYS:
        if key not in spec:
            raise DataError(f"suite '{suite}': config key '{key}' is missing")
    qcol, acol, lcol = spec["question"], spec["answer"], spec.get("level")
    for column in (qcol, acol) + ((lcol,) if lcol else ()):
        if column not in frame.columns:
            raise DataError(
                f"dataset '{spec['path']}' (suite '{suite}'): column '{column}' is missing; has {list(frame.columns)}"
            )
    answer_from = spec.get("answer_from", "field")
    if answer_from not in ("field", "boxed"):
        raise DataError(f"suite '{suite}': answer_from must be 'field' or 'boxed', got {answer_from!r}")

    questions = [_as_text(v) for v in frame[qcol].tolist()]
    raw_answers = [_as_text(v) for v in frame[acol].tolist()]
    answer_missing = np.array([a is None for a in raw_answers], dtype=bool)
    if answer_from == "boxed":
        raw_answers = [None if a is None else last_boxed_content(a) for a in raw_answers]
    answers = [None if a is None else normalize_answer(a) for a in raw_answers]
    level_values = np.array([_level(v) for v in frame[lcol].tolist()] if lcol else [-1] * len(frame), dtype=np.int64)

    bad_question = np.array([q is None or not q.strip() for q in questions], dtype=bool)
    bad_answer = np.array([not a for a in answers], dtype=bool)
    problems = [
        f"dataset '{spec['path']}' (suite '{suite}') row {row}: field '{field}' is {'missing' if missing else 'empty'}"
        + (" (no \\boxed{} in the solution)" if field == acol and answer_from == "boxed" and not missing else "")
        for row, field, missing in [
            *((int(r), qcol, questions[r] is None) for r in np.flatnonzero(bad_question)),
            *((int(r), acol, bool(answer_missing[r])) for r in np.flatnonzero(bad_answer)),
        ]
    ]
    if problems and on_bad_row == "fail":
        raise DataError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))

    keep = ~(bad_question | bad_answer)
    wanted = levels if levels is not None else spec.get("levels")
    if wanted:
        if not lcol:
            raise DataError(f"suite '{suite}': a level filter {wanted} needs a 'level' column in the config")
        keep &= np.isin(level_values, [int(x) for x in wanted])
    source_rows = np.flatnonzero(keep)
    split = spec.get("split_name", "test")
    rows = pd.DataFrame(
        {
            "data_source": spec["data_source"],
            "prompt": [render_prompt(template, questions[r]) for r in source_rows],
            "ability": "math",
            "reward_model": [{"style": "rule", "ground_truth": answers[r]} for r in source_rows],
            "extra_info": [
                dict(split=split, index=i, source_row=int(r), level=int(level_values[r]), question=questions[r])
                for i, r in enumerate(source_rows)
            ],
        }
    )
    return rows, problems


def content_hash(rows: pd.DataFrame) -> str:
    """sha256 over the rows' canonical JSON lines (sorted keys), independent of parquet bytes."""
    digest = hashlib.sha256()
    for record in rows.to_dict(orient="records"):
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _parse_local(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise DataError(f"--local expects SUITE=FILE, got {pair!r}")
        suite, file = pair.split("=", 1)
        out[suite] = file
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (<suite>.parquet, manifest.json)")
    p.add_argument("--template", required=True, help="prompt template key, e.g. qwen_math or llama_instruct")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="datasets YAML (default configs/data/math.yaml)")
    p.add_argument("--templates", default=str(DEFAULT_TEMPLATES), help="templates YAML")
    p.add_argument("--suites", default=None, help="comma-separated suites (default: all in the config)")
    local_help = "read SUITE from a local jsonl/json/parquet file instead of its configured source"
    p.add_argument("--local", action="append", default=[], metavar="SUITE=FILE", help=local_help)
    p.add_argument("--levels", default=None, help="train difficulty filter, e.g. 3,4,5 (MATH level 3-5 subset)")
    bad_help = "a row with a missing/empty question or answer: fail the run (default) or drop it"
    p.add_argument("--on-bad-row", choices=("fail", "drop"), default="fail", help=bad_help)
    p.add_argument("--limit", type=int, default=None, help="keep only the first N rows of each suite")
    args = p.parse_args(argv)

    try:
        config = yaml.safe_load(Path(args.config).read_text())
        all_suites = config.get("suites") or {}
        templates = load_templates(args.templates)
        if args.template not in templates:
            raise DataError(f"--template {args.template!r} is not in {args.templates} (have {sorted(templates)})")
        names = args.suites.split(",") if args.suites else list(all_suites)
        unknown = [n for n in names if n not in all_suites]
        if unknown:
            raise DataError(f"--suites: unknown suite(s) {unknown}; {args.config} has {list(all_suites)}")
        local = _parse_local(args.local)
        for suite in local:
            if suite not in names:
                raise DataError(f"--local {suite}=...: suite '{suite}' is not being prepared ({names})")
        levels = [int(x) for x in args.levels.split(",")] if args.levels else None

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {"template": args.template, "config": str(args.config), "suites": {}}
        for suite in names:
            spec = dict(all_suites[suite])
            if suite in local:
                spec.update(loader="local", path=local[suite])
            frame = read_table(spec, suite)
            train_levels = levels if spec.get("level") and spec.get("split_name") == "train" else None
            rows, problems = build_suite(frame, spec, suite, templates[args.template], args.on_bad_row, train_levels)
            for problem in problems:
                print(f"dropped: {problem}", file=sys.stderr)
            if args.limit is not None:
                rows = rows.iloc[: args.limit].reset_index(drop=True)
            filtered = len(frame) - len(problems) - len(rows)
            if len(rows) == 0:
                raise DataError(f"suite '{suite}': no rows left after filtering")
            file = out / f"{suite}.parquet"
            rows.to_parquet(file, index=False)
            manifest["suites"][suite] = dict(
                file=file.name, data_source=spec["data_source"], source=f"{spec['loader']}:{spec['path']}",
                rows=len(rows), read=len(frame), dropped=len(problems), filtered=filtered, sha256=content_hash(rows),
            )  # fmt: skip
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except DataError as error:
        print(f"prepare_data: error: {error}", file=sys.stderr)
        return 2

    print(f"{'suite':<16}{'read':>8}{'kept':>8}{'dropped':>9}{'filtered':>10}  file")
    for suite, entry in manifest["suites"].items():
        print(
            f"{suite:<16}{entry['read']:>8}{entry['rows']:>8}{entry['dropped']:>9}{entry['filtered']:>10}"
            f"  {out / entry['file']}"
        )
    print(f"manifest: {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
