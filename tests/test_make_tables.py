"""scripts/make_tables.py: the main table from synthetic result files (numbers by hand), curves from a verl log."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("make_tables_script", REPO / "scripts" / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tables = _load_script()
SUITES = ["math500", "minerva", "olympiadbench", "aime24", "amc23"]
QWEN = "qwen2.5-math-1.5b_7b"

# (pair, role, method) -> mean@k per suite, in SUITES order
RESULTS = {
    (QWEN, "large", "codistill"): [0.8, 0.4, 0.45, 0.2, 0.6],
    (QWEN, "small", "codistill"): [0.65, 0.2, 0.3, 2 / 15, 0.45],
    (QWEN, "small", "base"): [0.5, 0.1, 0.2, 1 / 30, 0.3],
    (QWEN, "small", "grpo"): [0.6, 0.15, 0.25, 0.1, 0.4],
}


def _write_results(root: Path) -> None:
    for (pair, role, method), values in RESULTS.items():
        for suite, value in zip(SUITES, values):
            folder = root / f"{pair}-{role}-{method}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{suite}.json").write_text(json.dumps({
                "model": folder.name, "suite": suite, "complete": True,
                "meta": {"pair": pair, "role": role, "method": method},
                "aggregate": {"mean@k": value, "pass@k": 1.0, "n_items": 30}, "items": [],
            }))
    partial = root / "llama-small-base"
    partial.mkdir()
    (partial / "math500.json").write_text(json.dumps({
        "model": "llama", "suite": "math500", "complete": False,
        "meta": {"pair": "llama-3.2-1b_3.1-8b", "role": "small", "method": "base"},
        "aggregate": {"mean@k": 0.3}, "items": [],
    }))


def test_main_table_markdown_and_csv_by_hand(tmp_path, capsys):
    _write_results(tmp_path / "res")
    assert make_tables.main(["--results", str(tmp_path / "res"), "--out", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t" / "main_table.md").read_text().splitlines()
    # averages by hand: (50+10+20+3.333+30)/5 = 22.667; (60+15+25+10+40)/5 = 30; (65+20+30+13.333+45)/5 = 34.667;
    # (80+40+45+20+60)/5 = 49
    assert md[:7] == [
        "| Model pair | Model | Method | MATH500 | Minerva | OlympiadBench | AIME24 | AMC23 | Avg |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        "| llama-3.2-1b_3.1-8b | small | Base | 30.0* | – | – | – | – | – |",
        f"| {QWEN} | small | Base | 50.0 | 10.0 | 20.0 | 3.3 | 30.0 | 22.7 |",
        f"| {QWEN} | small | GRPO | 60.0 | 15.0 | 25.0 | 10.0 | 40.0 | 30.0 |",
        f"| {QWEN} | small | CoDistill-GRPO | 65.0 | 20.0 | 30.0 | 13.3 | 45.0 | 34.7 |",
        f"| {QWEN} | large | CoDistill-GRPO | 80.0 | 40.0 | 45.0 | 20.0 | 60.0 | 49.0 |",
    ]
    assert md[-1] == "\\* unfinished evaluation (not all items scored yet)"
    with (tmp_path / "t" / "main_table.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["pair", "model", "method", *SUITES, "avg"]
    assert rows[1] == ["llama-3.2-1b_3.1-8b", "small", "Base", "30.00", "", "", "", "", ""]
    assert rows[2] == [QWEN, "small", "Base", "50.00", "10.00", "20.00", "3.33", "30.00", "22.67"]
    assert rows[4] == [QWEN, "small", "CoDistill-GRPO", "65.00", "20.00", "30.00", "13.33", "45.00", "34.67"]
    assert "CoDistill-GRPO" in capsys.readouterr().out


def test_duplicate_results_are_an_error(tmp_path, capsys):
    _write_results(tmp_path / "res")
    dup = tmp_path / "res" / "again"
    dup.mkdir()
    (dup / "minerva.json").write_text(json.dumps({
        "suite": "minerva", "meta": {"pair": QWEN, "role": "small", "method": "grpo"}, "aggregate": {"mean@k": 0.9},
    }))
    assert make_tables.main(["--results", str(tmp_path / "res"), "--out", str(tmp_path / "t")]) == 2
    assert "two results for pair='qwen2.5-math-1.5b_7b' role='small' method='grpo' suite='minerva'" in capsys.readouterr().err


def test_read_log_verl_file_logger_format(tmp_path):
    log = tmp_path / "run.jsonl"
    lines = [
        {"step": 1, "data": {"critic/score/mean": 0.1, "large/is_ess": 0.9, "timing_s/gen": 2.0, "note": "x"}},
        {"step": 2, "data": {"critic/score/mean": 0.2, "large/is_ess": 0.8, "small/kd_reward_mean": -0.5}},
        {"step": 2, "data": {"critic/score/mean": 0.25}},  # a repeated step keeps its last value
        {"step": 3, "critic/score/mean": 0.3},              # flat form
    ]
    log.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    series = make_tables.read_log(log)
    assert series["critic/score/mean"] == {1: 0.1, 2: 0.25, 3: 0.3}
    assert series["large/is_ess"] == {1: 0.9, 2: 0.8}
    assert series["small/kd_reward_mean"] == {2: -0.5}
    assert "note" not in series


def test_curves_png_from_two_logs(tmp_path, capsys):
    for name, scale in (("codistill", 1.0), ("grpo", 0.5)):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"step": s, "data": {"critic/score/mean": scale * s / 10, "small/kd_reward_mean": -1 / s,
                                             "large/is_ess": 0.9, "val-core/math500/acc/mean@1": 0.1 * s}}) + "\n"
            for s in range(1, 6)
        ))
    args = ["--out", str(tmp_path / "t"), "--log", f"codistill={tmp_path / 'codistill.jsonl'}",
            "--log", f"grpo={tmp_path / 'grpo.jsonl'}"]
    assert make_tables.main(args) == 0
    png = tmp_path / "t" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "4 panels: critic/score/mean, val-core/math500/acc/mean@1, small/kd_reward_mean, large/is_ess" in out


def test_bad_inputs_are_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert make_tables.main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "t")]) == 2
    assert "no result JSON files found" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"data": {}}\n')
    assert make_tables.main(["--log", f"x={tmp_path / 'bad.jsonl'}", "--out", str(tmp_path / "t")]) == 2
    assert "bad.jsonl:1: no 'step' key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_tables.main([])
