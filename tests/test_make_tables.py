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


def _write(root: Path, name: str, suite: str, value: float, pair: str, role: str, method: str, seed=None,
           complete: bool = True) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"pair": pair, "role": role, "method": method, **({"seed": seed} if seed is not None else {})}
    (folder / f"{suite}.json").write_text(json.dumps({
        "model": name, "suite": suite, "complete": complete, "meta": meta,
        "aggregate": {"mean@k": value, "pass@k": 1.0, "n_items": 30}, "items": [],
    }))


def _write_results(root: Path) -> None:
    for (pair, role, method), values in RESULTS.items():
        for suite, value in zip(SUITES, values):
            _write(root, f"{pair}-{role}-{method}", suite, value, pair, role, method)
    _write(root, "llama-small-base", "math500", 0.3, "llama-3.2-1b_3.1-8b", "small", "base", complete=False)


def test_main_table_markdown_and_csv_by_hand(tmp_path, capsys):
    _write_results(tmp_path / "res")
    assert make_tables.main(["--results", str(tmp_path / "res"), "--out", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t" / "main_table.md").read_text().splitlines()
    # averages by hand: (50+10+20+3.333+30)/5 = 22.667; (60+15+25+10+40)/5 = 30; (65+20+30+13.333+45)/5 = 34.667;
    # (80+40+45+20+60)/5 = 49
    assert md[:7] == [
        "| Model pair | Model | Method | MATH500 | Minerva | OlympiadBench | AIME24 | AMC23 | Avg | Train time (min) | Seeds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| llama-3.2-1b_3.1-8b | small | Base | 30.0* | – | – | – | – | – | – | 1 |",
        f"| {QWEN} | small | Base | 50.0 | 10.0 | 20.0 | 3.3 | 30.0 | 22.7 | – | 1 |",
        f"| {QWEN} | small | GRPO | 60.0 | 15.0 | 25.0 | 10.0 | 40.0 | 30.0 | – | 1 |",
        f"| {QWEN} | small | CoDistill-GRPO | 65.0 | 20.0 | 30.0 | 13.3 | 45.0 | 34.7 | – | 1 |",
        f"| {QWEN} | large | CoDistill-GRPO | 80.0 | 40.0 | 45.0 | 20.0 | 60.0 | 49.0 | – | 1 |",
    ]
    assert md[-1] == "\\* unfinished evaluation (not all items scored yet)"
    with (tmp_path / "t" / "main_table.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["pair", "model", "method"] + [f"{s}{p}" for s in SUITES for p in ("", "_std")] + [
        "avg", "train_min", "train_min_std", "seeds"]
    assert rows[2] == [QWEN, "small", "Base", "50.00", "", "10.00", "", "20.00", "", "3.33", "", "30.00", "", "22.67",
                       "", "", "1"]
    assert "CoDistill-GRPO" in capsys.readouterr().out


def test_seeds_give_mean_and_std_and_the_runs_time(tmp_path):
    """Three seeds of GRPO and CoDistill on one suite; times from the runs' timing_s/step, by hand."""
    res = tmp_path / "res"
    _write(res, "base-small", "test", 0.25, "toy", "small", "base")
    for seed, (grpo, cod, cod_large) in enumerate([(0.30, 0.40, 0.70), (0.34, 0.44, 0.66), (0.32, 0.45, 0.68)], 1):
        _write(res, f"grpo-{seed}", "test", grpo, "toy", "small", "grpo", seed)
        _write(res, f"cod-{seed}", "test", cod, "toy", "small", "codistill", seed)
        _write(res, f"codl-{seed}", "test", cod_large, "toy", "large", "codistill", seed)
    logs = []
    for exp, seconds in (("grpo_small", [[60, 60], [90, 90], [75, 75]]), ("codistill", [[120, 120], [120, 120], [180, 180]])):
        for seed, steps in enumerate(seconds, 1):
            f = tmp_path / f"{exp}{seed}.jsonl"
            f.write_text("".join(json.dumps({"step": i + 1, "data": {"timing_s/step": s}}) + "\n" for i, s in enumerate(steps)))
            logs += ["--log", f"{exp}/{seed}={f}"]
    assert make_tables.main(["--results", str(res), "--out", str(tmp_path / "t"), "--suites", "test", *logs]) == 0
    md = (tmp_path / "t" / "main_table.md").read_text().splitlines()
    # GRPO: mean(30, 34, 32) = 32.0, sample std = 2.0; time 2, 3, 2.5 min -> 2.5 +- 0.5
    # CoDistill small: mean(40, 44, 45) = 43.0, std = sqrt(((-3)^2 + 1 + 4) / 2) = 2.6458; time 4, 4, 6 -> 4.667 +- 1.155
    # CoDistill large: mean(70, 66, 68) = 68.0, std = 2.0
    assert md[2:] == [
        "| toy | small | Base | 25.0 | – | 1 |",
        "| toy | small | GRPO | 32.0 ± 2.0 | 2.5 ± 0.5 | 3 |",
        "| toy | small | CoDistill-GRPO | 43.0 ± 2.6 | 4.7 ± 1.2 | 3 |",
        "| toy | large | CoDistill-GRPO | 68.0 ± 2.0 | 4.7 ± 1.2 | 3 |",
    ]


def test_duplicate_results_are_an_error(tmp_path, capsys):
    _write_results(tmp_path / "res")
    _write(tmp_path / "res", "again", "minerva", 0.9, QWEN, "small", "grpo")
    assert make_tables.main(["--results", str(tmp_path / "res"), "--out", str(tmp_path / "t")]) == 2
    assert "two results for pair='qwen2.5-math-1.5b_7b' role='small' method='grpo' seed=None suite='minerva'" in capsys.readouterr().err


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


def test_curves_png_from_seeded_logs(tmp_path, capsys, monkeypatch):
    args = ["--out", str(tmp_path / "t")]
    for name, scale in (("codistill", 1.0), ("grpo_small", 0.5)):
        for seed in (1, 2):
            f = tmp_path / f"{name}{seed}.jsonl"
            f.write_text("".join(
                json.dumps({"step": s, "data": {"critic/score/mean": scale * s / 10 + seed, "small/kd_reward_mean": -1 / s,
                                                 "large/is_ess": 0.9, "val-core/toy/acc/mean@1": 0.1 * s}}) + "\n"
                for s in range(1, 6)
            ))
            args += ["--log", f"{name}/{seed}={f}"]
    drawn = {}
    real = make_tables.plot_curves

    def spy(logs, patterns, path):
        drawn.update(logs)
        return real(logs, patterns, path)

    monkeypatch.setattr(make_tables, "plot_curves", spy)
    assert make_tables.main(args) == 0
    png = tmp_path / "t" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "3 panels: val-core/toy/acc/mean@1, critic/score/mean, small/kd_reward_mean" not in out
    assert "4 panels: val-core/toy/acc/mean@1, critic/score/mean, small/kd_reward_mean, large/is_ess" in out
    assert sorted(drawn) == ["codistill/1", "codistill/2", "grpo_small/1", "grpo_small/2"]


def test_bad_inputs_are_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert make_tables.main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "t")]) == 2
    assert "no result JSON files found" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"data": {}}\n')
    assert make_tables.main(["--log", f"x={tmp_path / 'bad.jsonl'}", "--out", str(tmp_path / "t")]) == 2
    assert "bad.jsonl:1: no 'step' key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_tables.main([])


def test_each_experiment_keeps_its_colour_in_every_panel(tmp_path, monkeypatch):
    """A panel where the first experiment has no data (the large model's metrics in grpo_small) must not
    hand its colour to the next experiment."""
    from matplotlib.figure import Figure

    logs = {"grpo_small/1": {"critic/score/mean": {1: 0.1, 2: 0.2}},
            "codistill/1": {"critic/score/mean": {1: 0.2, 2: 0.3}, "large/is_ess": {1: 0.9, 2: 0.8}},
            "grpo_large/1": {"critic/score/mean": {1: 0.7, 2: 0.8}, "large/is_ess": {1: 1.0, 2: 1.0}}}
    figures = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), real_savefig(fig, *a, **k))[1])
    make_tables.plot_curves(logs, ["critic/*", "large/*"], tmp_path / "c.png")
    (fig,) = figures
    colours = [{line.get_label().split(" ")[0]: line.get_color() for line in ax.get_lines()} for ax in fig.axes[:2]]
    assert sorted(colours[0]) == ["codistill", "grpo_large", "grpo_small"] and sorted(colours[1]) == ["codistill", "grpo_large"]
    assert colours[1]["codistill"] == colours[0]["codistill"] and colours[1]["grpo_large"] == colours[0]["grpo_large"]
    assert len(set(colours[0].values())) == 3
