#!/usr/bin/env python
"""Raw math datasets -> verl RLHFDataset parquet (train + evaluation suites) and a manifest.

    python scripts/prepare_data.py --out data/qwen_math --template qwen_math

Examples, formats and options: docs/running.md, section scripts/prepare_data.py.
"""

import argparse
import hashlib
import json
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


class DataError(ValueError):
    """A bad dataset, row or config value; the message names it."""


def load_templates(path: str | Path = DEFAULT_TEMPLATES) -> dict[str, list[dict[str, str]]]:
    """``{key: [{"role", "content"}, ...]}`` from the templates YAML, validated."""
    templates = yaml.safe_load(Path(path).read_text())
    for key, chat in templates.items():
        if not isinstance(chat, list) or not all(isinstance(m, dict) and set(m) == {"role", "content"} for m in chat):
            raise DataError(f"{path}: template '{key}' must be a list of {{role, content}} messages")
        if sum("{question}" in m["content"] for m in chat) != 1:
            raise DataError(f"{path}: template '{key}' must contain {{question}} in exactly one message")
    return templates


def read_table(spec: dict[str, Any], suite: str) -> pd.DataFrame:
    """The suite's raw rows as a DataFrame: Hub (``datasets.load_dataset``) or a local jsonl/json/parquet file."""
    loader, file = spec["loader"], Path(str(spec["path"]))
    if loader == "hub":
        import datasets

        return datasets.load_dataset(str(spec["path"]), spec.get("name"), split=spec.get("split", "train")).to_pandas()
    if loader != "local":
        raise DataError(f"suite '{suite}': loader must be 'hub' or 'local', got {loader!r}")
    if not file.exists():
        raise DataError(f"suite '{suite}': local file not found: {file}")
    if file.suffix not in (".jsonl", ".json", ".parquet"):
        raise DataError(f"suite '{suite}': unsupported local file type '{file.suffix}' (jsonl, json, parquet)")
    if file.suffix == ".parquet":
        return pd.read_parquet(file)
    return pd.read_json(file, lines=file.suffix == ".jsonl", dtype=False)


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


def build_suite(frame, spec, suite, template, on_bad_row="fail", levels=None) -> tuple[pd.DataFrame, list[str]]:
    """Raw rows -> ``(verl rows, problems)``; ``problems`` names the rows dropped for a missing or empty question or
    answer (a ``DataError`` if ``on_bad_row == "fail"``, as is a missing column); rows of other ``levels``
    (else the config's ``levels``) are filtered out."""
    if missing := [key for key in ("data_source", "loader", "path", "question", "answer") if key not in spec]:
        raise DataError(f"suite '{suite}': config key '{missing[0]}' is missing")
    qcol, acol, lcol = spec["question"], spec["answer"], spec.get("level")
    where = f"dataset '{spec['path']}' (suite '{suite}')"
    for column in filter(None, (qcol, acol, lcol)):
        if column not in frame.columns:
            raise DataError(f"{where}: column '{column}' is missing; has {list(frame.columns)}")
    answer_from = spec.get("answer_from", "field")
    if answer_from not in ("field", "boxed"):
        raise DataError(f"suite '{suite}': answer_from must be 'field' or 'boxed', got {answer_from!r}")

    questions, raw_answers = [_as_text(v) for v in frame[qcol]], [_as_text(v) for v in frame[acol]]
    answers = [last_boxed_content(a) if a and answer_from == "boxed" else a for a in raw_answers]
    answers = [normalize_answer(a) if a else None for a in answers]
    digits = frame[lcol].astype(str).str.extract(r"(\d+)", expand=False) if lcol else pd.Series("-1", frame.index)
    level_values = digits.fillna("-1").astype(np.int64).to_numpy()  # the first number in the cell ("Level 3"), or -1
    bad_question = np.array([not (q and q.strip()) for q in questions], dtype=bool)
    bad_answer = np.array([not a for a in answers], dtype=bool)
    no_box = " (no \\boxed{} in the solution)" if answer_from == "boxed" else ""
    problems = [
        f"{where} row {r}: field '{col}' is "
        + ("missing" if values[r] is None else "empty" + (no_box if col == acol else ""))
        for col, values, bad in ((qcol, questions, bad_question), (acol, raw_answers, bad_answer))
        for r in np.flatnonzero(bad)
    ]
    if problems and on_bad_row == "fail":
        raise DataError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))

    keep = ~(bad_question | bad_answer)
    wanted = levels if levels is not None else spec.get("levels")
    if wanted:
        if not lcol:
            raise DataError(f"suite '{suite}': a level filter {wanted} needs a 'level' column in the config")
        keep &= np.isin(level_values, [int(x) for x in wanted])
    kept, split = np.flatnonzero(keep), spec.get("split_name", "test")
    extra_info = [
        dict(split=split, index=i, source_row=int(r), level=int(level_values[r]), question=questions[r])
        for i, r in enumerate(kept)
    ]
    prompts = [
        [{"role": m["role"], "content": m["content"].replace("{question}", questions[r])} for m in template]
        for r in kept
    ]
    reward_model = [{"style": "rule", "ground_truth": answers[r]} for r in kept]
    columns = {"data_source": spec["data_source"], "prompt": prompts, "ability": "math", "reward_model": reward_model}
    return pd.DataFrame({**columns, "extra_info": extra_info}), problems


def content_hash(rows: pd.DataFrame) -> str:
    """sha256 over the rows' canonical JSON lines (sorted keys), independent of parquet bytes."""
    lines = (json.dumps(r, sort_keys=True, ensure_ascii=False, default=str) + "\n" for r in rows.to_dict("records"))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _suite_file(text: str) -> tuple[str, str]:
    suite, sep, file = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expects SUITE=FILE, got {text!r}")
    return suite, file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (<suite>.parquet, manifest.json)")
    p.add_argument("--template", required=True, help="prompt template key, e.g. qwen_math or llama_instruct")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="datasets YAML (default configs/data/math.yaml)")
    p.add_argument("--templates", default=str(DEFAULT_TEMPLATES), help="templates YAML")
    p.add_argument("--suites", default=None, help="comma-separated suites (default: all in the config)")
    local_help = "read SUITE from a local jsonl/json/parquet file instead of its configured source"
    p.add_argument("--local", action="append", type=_suite_file, default=[], metavar="SUITE=FILE", help=local_help)
    p.add_argument("--levels", default=None, help="train difficulty filter, e.g. 3,4,5 (MATH level 3-5 subset)")
    bad_help = "a row with a missing/empty question or answer: fail the run (default) or drop it"
    p.add_argument("--on-bad-row", choices=("fail", "drop"), default="fail", help=bad_help)
    p.add_argument("--limit", type=int, default=None, help="keep only the first N rows of each suite")
    args = p.parse_args(argv)

    try:
        all_suites = yaml.safe_load(Path(args.config).read_text()).get("suites") or {}
        templates = load_templates(args.templates)
        if args.template not in templates:
            raise DataError(f"--template {args.template!r} is not in {args.templates} (have {sorted(templates)})")
        names, local = args.suites.split(",") if args.suites else list(all_suites), dict(args.local)
        unknown = [n for n in names if n not in all_suites]
        if unknown:
            raise DataError(f"--suites: unknown suite(s) {unknown}; {args.config} has {list(all_suites)}")
        for suite in [s for s in local if s not in names]:
            raise DataError(f"--local {suite}=...: suite '{suite}' is not being prepared ({names})")
        levels = [int(x) for x in args.levels.split(",")] if args.levels else None

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {"template": args.template, "config": str(args.config), "suites": {}}
        for suite in names:
            spec = {**all_suites[suite], **({"loader": "local", "path": local[suite]} if suite in local else {})}
            frame = read_table(spec, suite)
            train_levels = levels if spec.get("level") and spec.get("split_name") == "train" else None
            rows, problems = build_suite(frame, spec, suite, templates[args.template], args.on_bad_row, train_levels)
            for problem in problems:
                print(f"dropped: {problem}", file=sys.stderr)
            rows = rows.iloc[: args.limit].reset_index(drop=True)
            if len(rows) == 0:
                raise DataError(f"suite '{suite}': no rows left after filtering")
            rows.to_parquet(out / f"{suite}.parquet", index=False)
            source, filtered = f"{spec['loader']}:{spec['path']}", len(frame) - len(problems) - len(rows)
            entry = dict(file=f"{suite}.parquet", data_source=spec["data_source"], source=source, rows=len(rows))
            entry.update(read=len(frame), dropped=len(problems), filtered=filtered, sha256=content_hash(rows))
            manifest["suites"][suite] = entry
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except DataError as error:
        print(f"prepare_data: error: {error}", file=sys.stderr)
        return 2

    print(f"{'suite':<16}{'read':>8}{'kept':>8}{'dropped':>9}{'filtered':>10}  file")
    for suite, e in manifest["suites"].items():
        print(f"{suite:<16}{e['read']:>8}{e['rows']:>8}{e['dropped']:>9}{e['filtered']:>10}  {out / e['file']}")
    print(f"manifest: {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
