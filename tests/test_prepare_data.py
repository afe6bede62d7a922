"""scripts/prepare_data.py on local fixture files written here: layout, answers, bad rows, manifest."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.support import load_script

REPO = Path(__file__).resolve().parents[1]
QWEN_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


prepare_data = load_script("prepare_data")

MATH_ROWS = [
    {"problem": "What is $1+1$?", "solution": "Clearly $1+1=\\boxed{2}$.", "level": "Level 3", "type": "Algebra"},
    {
        "problem": "Halve 1.",
        "solution": "We get \\boxed{1} no wait \\boxed{\\dfrac{1}{2}}.",
        "level": "Level 5",
        "type": "Algebra",
    },
    {"problem": "Easy one.", "solution": "So $\\boxed{ 3 }$", "level": "Level 1", "type": "Prealgebra"},
    {"problem": "Set.", "solution": "The set is $\\boxed{\\{1,\\!2\\}}$", "level": "Level 4", "type": "Algebra"},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def raw(tmp_path):
    files = {
        "train": _write_jsonl(tmp_path / "math_train.jsonl", MATH_ROWS),
        "minerva": tmp_path / "minerva.parquet",
        "olympiadbench": _write_jsonl(
            tmp_path / "olympiad.jsonl",
            [
                {"question": "Find x and y.", "final_answer": ["$3$", "$4$"]},
                {"question": "Find z.", "final_answer": ["$\\frac{1}{3}$"]},
            ],
        ),
    }
    pd.DataFrame([{"question": "Q one", "answer": "$5$"}, {"question": "Q two", "answer": "6.2"}]).to_parquet(
        files["minerva"]
    )
    files["amc23"] = _write_jsonl(
        tmp_path / "amc.jsonl", [{"question": "A?", "answer": 12.0}, {"question": "B?", "answer": 0.25}]
    )
    return files


def _run(args: list[str]) -> int:
    return prepare_data.main([str(a) for a in args])


def _local(raw) -> list[str]:
    return [x for suite, f in raw.items() for x in ("--local", f"{suite}={f}")]


def test_all_suites_layout_answers_and_manifest(raw, tmp_path, capsys):
    out = tmp_path / "out"
    rc = _run(["--out", out, "--template", "qwen_math", "--suites", "train,minerva,olympiadbench,amc23", *_local(raw)])
    assert rc == 0
    train = pd.read_parquet(out / "train.parquet")
    assert list(train.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    # ground truths worked out by hand: last box, balanced, normalised (dfrac->frac, \! and spaces removed)
    assert [r["ground_truth"] for r in train["reward_model"]] == ["2", "\\frac{1}{2}", "3", "\\{1,2\\}"]
    assert set(train["data_source"]) == {"math"} and set(train["ability"]) == {"math"}
    first = train.iloc[0]
    assert [dict(m) for m in first["prompt"]] == [{"role": "user", "content": "What is $1+1$?" + QWEN_SUFFIX}]
    assert [e["index"] for e in train["extra_info"]] == [0, 1, 2, 3]
    assert [e["level"] for e in train["extra_info"]] == [3, 5, 1, 4]
    assert {e["split"] for e in train["extra_info"]} == {"train"}

    minerva = pd.read_parquet(out / "minerva.parquet")
    assert [r["ground_truth"] for r in minerva["reward_model"]] == ["5", "6.2"]
    assert {e["split"] for e in minerva["extra_info"]} == {"test"}
    olympiad = pd.read_parquet(out / "olympiadbench.parquet")
    assert [r["ground_truth"] for r in olympiad["reward_model"]] == ["3, 4", "\\frac{1}{3}"]

    amc = pd.read_parquet(out / "amc23.parquet")
    assert [r["ground_truth"] for r in amc["reward_model"]] == ["12", "0.25"]  # numeric column, 12.0 -> "12"

    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: (v["rows"], v["dropped"]) for k, v in manifest["suites"].items()} == {
        "train": (4, 0),
        "minerva": (2, 0),
        "olympiadbench": (2, 0),
        "amc23": (2, 0),
    }
    # independent hash of the minerva rows, written out by hand in the documented canonical form
    expected_rows = [
        {
            "data_source": "minerva",
            "prompt": [{"role": "user", "content": q + QWEN_SUFFIX}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": gt},
            "extra_info": {"split": "test", "index": i, "source_row": i, "level": -1, "question": q},
        }
        for i, (q, gt) in enumerate([("Q one", "5"), ("Q two", "6.2")])
    ]
    digest = hashlib.sha256()
    for row in expected_rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    assert manifest["suites"]["minerva"]["sha256"] == digest.hexdigest()
    summary = capsys.readouterr().out
    assert "train" in summary and "manifest:" in summary


def test_rerun_is_deterministic_and_template_changes_hash(raw, tmp_path):
    args = ["--suites", "minerva", "--local", f"minerva={raw['minerva']}"]
    assert _run(["--out", tmp_path / "a", "--template", "qwen_math", *args]) == 0
    assert _run(["--out", tmp_path / "b", "--template", "qwen_math", *args]) == 0
    assert _run(["--out", tmp_path / "c", "--template", "llama_instruct", *args]) == 0
    sha = {k: json.loads((tmp_path / k / "manifest.json").read_text())["suites"]["minerva"]["sha256"] for k in "abc"}
    assert sha["a"] == sha["b"] != sha["c"]
    llama = pd.read_parquet(tmp_path / "c" / "minerva.parquet")
    content = llama.iloc[0]["prompt"][0]["content"]
    assert content.endswith("Problem: Q one") and "\\boxed{answer}" in content


def test_level_filter_keeps_levels_3_to_5(raw, tmp_path):
    assert (
        _run(
            [
                "--out",
                tmp_path,
                "--template",
                "qwen_math",
                "--suites",
                "train",
                "--levels",
                "3,4,5",
                "--local",
                f"train={raw['train']}",
            ]
        )
        == 0
    )
    train = pd.read_parquet(tmp_path / "train.parquet")
    assert [e["level"] for e in train["extra_info"]] == [3, 5, 4]
    entry = json.loads((tmp_path / "manifest.json").read_text())["suites"]["train"]
    assert (entry["read"], entry["rows"], entry["dropped"], entry["filtered"]) == (4, 3, 0, 1)
    assert [e["source_row"] for e in train["extra_info"]] == [0, 1, 3]
    assert [e["index"] for e in train["extra_info"]] == [0, 1, 2]


def test_bad_rows_fail_by_default_and_drop_by_flag(tmp_path, capsys):
    bad = _write_jsonl(
        tmp_path / "bad.jsonl",
        MATH_ROWS[:2]
        + [
            {"problem": "No box.", "solution": "It is 4.", "level": "Level 2"},
            {"problem": "", "solution": "\\boxed{1}", "level": "Level 2"},
            {"problem": "Missing.", "level": "Level 2"},
        ],
    )
    args = ["--template", "qwen_math", "--suites", "train", "--local", f"train={bad}"]
    assert _run(["--out", tmp_path / "fail", *args]) == 2
    err = capsys.readouterr().err
    assert f"dataset '{bad}' (suite 'train') row 3: field 'problem' is empty" in err
    assert "(and 2 more)" in err
    assert not (tmp_path / "fail" / "train.parquet").exists()

    assert _run(["--out", tmp_path / "drop", *args, "--on-bad-row", "drop"]) == 0
    captured = capsys.readouterr()
    assert "row 2: field 'solution' is empty (no \\boxed{} in the solution)" in captured.err
    assert "row 4: field 'solution' is missing" in captured.err
    assert [r["ground_truth"] for r in pd.read_parquet(tmp_path / "drop" / "train.parquet")["reward_model"]] == [
        "2",
        "\\frac{1}{2}",
    ]
    manifest = json.loads((tmp_path / "drop" / "manifest.json").read_text())
    assert (
        manifest["suites"]["train"]["read"],
        manifest["suites"]["train"]["rows"],
        manifest["suites"]["train"]["dropped"],
    ) == (5, 2, 3)
    line = next(s for s in captured.out.splitlines() if s.startswith("train"))
    assert line.split()[:5] == ["train", "5", "2", "3", "0"]


def test_missing_column_and_missing_file_are_clear_errors(tmp_path, capsys):
    no_answer = tmp_path / "minerva.parquet"
    pd.DataFrame([{"question": "Q", "solution": "5"}]).to_parquet(no_answer)
    assert (
        _run(["--out", tmp_path, "--template", "qwen_math", "--suites", "minerva", "--local", f"minerva={no_answer}"])
        == 2
    )
    assert "column 'answer' is missing" in capsys.readouterr().err
    assert (
        _run(
            [
                "--out",
                tmp_path,
                "--template",
                "qwen_math",
                "--suites",
                "minerva",
                "--local",
                f"minerva={tmp_path}/nope.jsonl",
            ]
        )
        == 2
    )
    assert "local file not found" in capsys.readouterr().err
    assert _run(["--out", tmp_path, "--template", "nope", "--suites", "minerva"]) == 2
    assert "--template 'nope'" in capsys.readouterr().err


def test_verl_rlhf_dataset_reads_the_output(raw, tmp_path, tiny_pair):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    assert (
        _run(["--out", tmp_path, "--template", "qwen_math", "--suites", "train", "--local", f"train={raw['train']}"])
        == 0
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_pair["small"])
    config = OmegaConf.create(
        {"max_prompt_length": 1024, "filter_overlong_prompts": True, "filter_overlong_prompts_workers": 1}
    )
    dataset = RLHFDataset(str(tmp_path / "train.parquet"), tokenizer, config)
    assert len(dataset) == 4
    item = dataset[1]
    assert item["raw_prompt"][0]["content"] == "Halve 1." + QWEN_SUFFIX
    assert item["reward_model"]["ground_truth"] == "\\frac{1}{2}"
    assert item["index"] == 1 and item["data_source"] == "math"


def test_cli_entry_point_runs(raw, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "prepare_data.py"),
            "--out",
            str(tmp_path),
            "--template",
            "qwen_math",
            "--suites",
            "minerva",
            "--local",
            f"minerva={raw['minerva']}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "minerva" in proc.stdout and (tmp_path / "minerva.parquet").exists()
