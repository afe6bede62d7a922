"""scripts/make_tables.py: the table, its bootstrap intervals and paired differences (against a slow
loop reference and hand-worked cases), missing results, tokens generated, curves from a verl log."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.support import load_script

REPO = Path(__file__).resolve().parents[1]


make_tables = load_script("make_tables")


def reference_bootstrap(values, resamples, seed=0, level=0.95):
    """The documented bootstrap with explicit loops: the same two draws, then every resample's mean
    by summing over the drawn seeds and items, and the quantiles by linear interpolation by hand."""
    values = [list(map(float, row)) for row in values]
    S, N = len(values), len(values[0])
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, S, size=(resamples, S)).tolist()
    item_draws = rng.integers(0, N, size=(resamples, N)).tolist()
    est = []
    for b in range(resamples):
        total = 0.0
        for s in seed_draws[b]:
            for i in item_draws[b]:
                total += values[s][i]
        est.append(total / (S * N))
    est.sort()

    def quantile(q):
        pos = q * (resamples - 1)
        low = int(pos)
        high = min(low + 1, resamples - 1)
        return est[low] + (est[high] - est[low]) * (pos - low)

    mean = sum(sum(row) for row in values) / (S * N)
    return mean, quantile((1 - level) / 2), quantile((1 + level) / 2)


# ----------------------------------------------------------------------------- the bootstrap


def test_bootstrap_equals_the_slow_loop_reference():
    values = np.random.default_rng(5).random((3, 7))
    got = make_tables.bootstrap(values, resamples=300, seed=11)
    want = reference_bootstrap(values, 300, seed=11)
    assert got == pytest.approx(want, abs=1e-12)
    one_seed = [[1, 0, 0, 1, 1]]
    assert make_tables.bootstrap(np.array(one_seed), 200, 3) == pytest.approx(
        reference_bootstrap(one_seed, 200, 3), abs=1e-12
    )


def test_bootstrap_of_equal_items_has_zero_width():
    assert make_tables.bootstrap(np.full((3, 9), 0.4), resamples=100) == pytest.approx((0.4, 0.4, 0.4), abs=1e-12)


def test_bootstrap_interval_covers_a_known_mean():
    """300 synthetic one-seed tables of 300 Bernoulli(0.3) items: the 95% interval holds 0.3 in about
    95% of them and is as wide as the normal one, 2 * 1.96 * sqrt(0.3 * 0.7 / 300) = 0.1037. With
    3 iid seeds, resampling seeds too can only widen it: coverage at least as high."""
    rng = np.random.default_rng(0)
    for seeds, low, high in ((1, 0.90, 0.985), (3, 0.92, 1.0)):
        hits, widths = 0, []
        for t in range(300):
            values = (rng.random((seeds, 300)) < 0.3).astype(float)
            mean, lo, hi = make_tables.bootstrap(values, resamples=400, seed=t)
            assert lo <= mean <= hi
            hits += lo <= 0.3 <= hi
            widths.append(hi - lo)
        assert low <= hits / 300 <= high, (seeds, hits)
        if seeds == 1:
            assert np.mean(widths) == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 300), rel=0.05)


# ----------------------------------------------------------------------------- the table

# 4 test items; per-item correctness of each sample (greedy: 1 sample; sampled: 4 samples per item)
GREEDY = {
    ("base", None): [1, 0, 0, 0],
    ("grpo", 1): [1, 1, 0, 0],
    ("grpo", 2): [1, 0, 0, 0],
    ("grpo", 3): [1, 1, 0, 0],
    ("codistill", 1): [1, 1, 1, 0],
    ("codistill", 2): [1, 1, 0, 0],
    ("codistill", 3): [1, 1, 1, 0],
}
SAMPLED = {
    ("base", None): [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]],
    ("grpo", 1): [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]],
    ("grpo", 2): [[1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]],
    ("grpo", 3): [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    ("codistill", 1): [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]],
    ("codistill", 2): [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]],
    ("codistill", 3): [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]],
}


def _write(
    root: Path,
    name: str,
    suite: str,
    correct: list[list[float]],
    pair: str,
    role: str,
    method: str,
    seed=None,
    temperature: float = 0.0,
    complete: bool = True,
    indices=None,
) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"pair": pair, "role": role, "method": method, **({"seed": seed} if seed is not None else {})}
    items = [{"index": i, "correct": c} for i, c in zip(indices or range(len(correct)), correct)]
    file = folder / f"{suite}.json"
    file.write_text(
        json.dumps(
            {
                "model": name,
                "suite": suite,
                "complete": complete,
                "meta": meta,
                "sampling": {
                    "n": len(correct[0]),
                    "temperature": temperature,
                    "top_p": 1.0,
                    "max_tokens": 8,
                    "seed": 0,
                },
                "aggregate": {"mean@k": float(np.mean(correct))},
                "items": items,
            }
        )
    )
    return file


def _toy_results(root: Path, skip=()) -> None:
    for (method, seed), greedy in GREEDY.items():
        name = f"{method}-{seed}"
        if (method, seed, "greedy") not in skip:
            _write(root, name, "test", [[c] for c in greedy], "toy", "small", method, seed)
        if (method, seed, "sampled") not in skip:
            _write(
                root, name + "-sampled", "test", SAMPLED[(method, seed)], "toy", "small", method, seed, temperature=1.0
            )


def _cell(method, resamples, sampled=True, stat=np.mean):
    seeds = [s for m, s in GREEDY if m == method]
    if sampled:
        return [[stat(item) for item in SAMPLED[(method, s)]] for s in seeds]
    return [GREEDY[(method, s)] for s in seeds]


def _fmt(triple, digits=1):
    mean, lo, hi = (100 * x for x in triple)
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def test_table_sampled_main_greedy_beside_with_intervals(tmp_path, capsys):
    _toy_results(tmp_path / "res")
    assert (
        make_tables.main(
            ["--results", str(tmp_path / "res"), "--out", str(tmp_path / "t"), "--suites", "test", "--resamples", "500"]
        )
        == 0
    )
    md = (tmp_path / "t" / "main_table.md").read_text().splitlines()
    assert (
        md[0] == "| Model pair | Model | Method | Test mean@4 | Test greedy | Test pass@4 | Train time (min) | Seeds |"
    )
    # mean@4 by hand: base (1 + 0 + 0 + 1) / 16 = 12.5%; GRPO (4 + 4 + 3) / 48 = 22.9%;
    # CoDistill (8 + 8 + 7) / 48 = 47.9%
    # greedy by hand: base 25%, GRPO 5/12 = 41.7%, CoDistill 8/12 = 66.7%; pass@4: base 50%, GRPO 7/12, CoDistill 10/12
    rows = {line.split(" | ")[2]: line.split(" | ")[3:6] for line in md[2:5]}
    for method, title, mean, greedy, passk in (
        ("base", "Base", 12.5, 25.0, 50.0),
        ("grpo", "GRPO", 1100 / 48, 125 / 3, 175 / 3),
        ("codistill", "CoDistill-GRPO", 2300 / 48, 200 / 3, 250 / 3),
    ):
        cells = [_cell(method, 500), _cell(method, 500, sampled=False), _cell(method, 500, stat=np.max)]
        want = [reference_bootstrap(c, 500) for c in cells]
        assert [round(100 * w[0], 6) for w in want] == pytest.approx([mean, greedy, passk])
        assert rows[title] == [_fmt(w) for w in want], title
    diff = (tmp_path / "t" / "differences.md").read_text().splitlines()
    assert diff[0] == "| Model pair | Model | Comparison | Δ Test mean@4 |"
    got = {line.split(" | ")[2]: line.split(" | ")[3].rstrip(" |") for line in diff[2:5]}
    assert sorted(got) == ["CoDistill-GRPO − Base", "CoDistill-GRPO − GRPO", "GRPO − Base"]
    base = np.array(_cell("base", 500)[0])
    want = {
        "GRPO − Base": reference_bootstrap(np.array(_cell("grpo", 500)) - base, 500),
        "CoDistill-GRPO − Base": reference_bootstrap(np.array(_cell("codistill", 500)) - base, 500),
        "CoDistill-GRPO − GRPO": reference_bootstrap(
            np.array(_cell("codistill", 500)) - np.array(_cell("grpo", 500)), 500
        ),
    }
    assert want["CoDistill-GRPO − GRPO"][0] == pytest.approx(0.25)  # by hand: 23/48 - 11/48
    for name, w in want.items():
        excludes = w[1] > 0 or w[2] < 0
        assert got[name] == (f"**{_fmt(w)}**" if excludes else _fmt(w)), name
    with (tmp_path / "t" / "differences.csv").open() as fh:
        rows_csv = {r["comparison"]: r for r in csv.DictReader(fh)}
    assert float(rows_csv["CoDistill-GRPO − GRPO"]["diff"]) == pytest.approx(25.0, abs=0.005)
    assert rows_csv["CoDistill-GRPO − GRPO"]["seeds"] == "3" and rows_csv["CoDistill-GRPO − GRPO"]["items"] == "4"
    with (tmp_path / "t" / "main_table.csv").open() as fh:
        main_csv = list(csv.DictReader(fh))
    assert [r["method"] for r in main_csv] == ["Base", "GRPO", "CoDistill-GRPO"]
    assert float(main_csv[2]["test"]) == pytest.approx(2300 / 48, abs=0.005) and float(
        main_csv[2]["test_greedy"]
    ) == pytest.approx(200 / 3, abs=0.005)
    # deterministic: a second run writes the same tables
    first = (tmp_path / "t" / "main_table.md").read_text()
    assert (
        make_tables.main(
            ["--results", str(tmp_path / "res"), "--out", str(tmp_path / "t"), "--suites", "test", "--resamples", "500"]
        )
        == 0
    )
    assert (tmp_path / "t" / "main_table.md").read_text() == first


def test_greedy_only_pairs_keep_one_column_per_suite(tmp_path):
    for seed, correct in ((1, [1, 0, 1, 1]), (2, [1, 0, 0, 1])):
        _write(tmp_path / "r", f"g{seed}", "math500", [[c] for c in correct], "qwen", "small", "grpo", seed)
        _write(tmp_path / "r", f"a{seed}", "aime24", [[1, 0], [0, 0]], "qwen", "small", "grpo", seed, temperature=0.6)
    assert (
        make_tables.main(
            [
                "--results",
                str(tmp_path / "r"),
                "--out",
                str(tmp_path / "t"),
                "--suites",
                "math500,aime24",
                "--resamples",
                "200",
            ]
        )
        == 0
    )
    md = (tmp_path / "t" / "main_table.md").read_text().splitlines()
    assert md[0] == "| Model pair | Model | Method | MATH500 | AIME24 | Avg | Train time (min) | Seeds |"
    math500 = reference_bootstrap([[1, 0, 1, 1], [1, 0, 0, 1]], 200)
    aime = reference_bootstrap([[0.5, 0.0], [0.5, 0.0]], 200)
    assert md[2] == f"| qwen | small | GRPO | {_fmt(math500)} | {_fmt(aime)} | 43.8 | – | 2 |"  # (62.5 + 25) / 2


def test_a_missing_seed_fails_naming_it_unless_allowed(tmp_path, capsys):
    _toy_results(tmp_path / "res", skip={("codistill", 3, "sampled")})
    args = ["--results", str(tmp_path / "res"), "--out", str(tmp_path / "t"), "--suites", "test", "--resamples", "200"]
    assert make_tables.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "make_tables: error: toy small codistill test (sampled): no result for seed 3 (have 2 of 3 seeds); "
        "finish the evaluation or pass --allow-missing"
    ]
    assert not (tmp_path / "t" / "main_table.md").exists()
    assert make_tables.main(args + ["--allow-missing"]) == 0
    md = (tmp_path / "t" / "main_table.md").read_text().splitlines()
    row = next(line for line in md if "| CoDistill-GRPO |" in line)
    two_seeds = [[np.mean(item) for item in SAMPLED[("codistill", s)]] for s in (1, 2)]
    assert row.split(" | ")[3] == _fmt(reference_bootstrap(two_seeds, 200)) + "†"
    assert row.split(" | ")[4] == _fmt(
        reference_bootstrap(_cell("codistill", 200, sampled=False), 200)
    )  # greedy: all seeds
    assert "† toy small CoDistill-GRPO Test mean@4: no result for seed 3 (have 2 of 3 seeds)" in md


def test_expected_seeds_flag_and_unfinished_items(tmp_path, capsys):
    _toy_results(tmp_path / "res")
    args = ["--results", str(tmp_path / "res"), "--out", str(tmp_path / "t"), "--suites", "test", "--resamples", "100"]
    assert make_tables.main(args + ["--seeds", "1,2,3,4"]) == 2
    assert (
        "toy small codistill test (greedy): no result for seed 4 (have 3 of 4 seeds) (and 3 more cells)"
        in capsys.readouterr().err
    )
    short = _write(
        tmp_path / "res",
        "grpo-2-sampled",
        "test",
        SAMPLED[("grpo", 2)][:3],
        "toy",
        "small",
        "grpo",
        2,
        temperature=1.0,
        complete=False,
    )
    assert make_tables.main(args) == 2
    assert f"toy small grpo test (sampled): 3 of 4 items in {short}" in capsys.readouterr().err


def test_a_corrupt_result_file_is_named_unless_allowed(tmp_path, capsys):
    _toy_results(tmp_path / "res")
    bad = tmp_path / "res" / "grpo-1" / "test.json"
    bad.write_text(bad.read_text()[:50])  # cut mid-write
    args = ["--results", str(tmp_path / "res"), "--out", str(tmp_path / "t"), "--suites", "test", "--resamples", "100"]
    assert make_tables.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"make_tables: error: {bad}: unreadable (")
    assert make_tables.main(args + ["--allow-missing"]) == 0
    md = (tmp_path / "t" / "main_table.md").read_text()
    assert f"Skipped (--allow-missing): {bad} (unreadable" in md
    assert "† toy small GRPO Test greedy: no result for seed 1 (have 2 of 3 seeds)" in md


def test_duplicate_results_are_an_error(tmp_path, capsys):
    _toy_results(tmp_path / "res")
    _write(tmp_path / "res", "again", "test", [[1]] * 4, "toy", "small", "grpo", 2)
    assert make_tables.main(["--results", str(tmp_path / "res"), "--out", str(tmp_path / "t"), "--suites", "test"]) == 2
    assert (
        "two results for pair='toy' role='small' method='grpo' seed=2 suite='test' (greedy)" in capsys.readouterr().err
    )


def test_sweep_rows_train_time_and_tokens_generated(tmp_path):
    res = tmp_path / "res"
    _write(res, "base", "test", [[0], [1]], "toy", "small", "base")
    for seed in (1, 2):
        _write(res, f"g{seed}", "test", [[1], [0]], "toy", "small", "grpo", seed)
        _write(res, f"c{seed}", "test", [[1], [1]], "toy", "small", "codistill[kd.coef=0.3]", seed)
        _write(res, f"cl{seed}", "test", [[1], [1]], "toy", "large", "codistill[kd.coef=0.3]", seed)
    logs = []
    # per step 16 prompts x 8 = 128 responses, mean prompt length 10:
    # perf/total_num_tokens = 128 * (10 + response mean);
    # grpo_small: 2 steps of response mean 6 -> 2 * 128 * 6 = 1536 tokens; codistill: 3 steps of 5 -> 3 * 128 * 5 = 1920
    for exp, steps, resp in (("grpo_small", 2, 6.0), ("codistill[kd.coef=0.3]", 3, 5.0)):
        for seed in (1, 2):
            f = tmp_path / f"{exp}{seed}.jsonl"
            f.write_text(
                "".join(
                    json.dumps(
                        {
                            "step": s,
                            "data": {
                                "timing_s/step": 30.0 * seed,
                                "response_length/mean": resp,
                                "prompt_length/mean": 10.0,
                                "perf/total_num_tokens": 128 * (10 + resp),
                            },
                        }
                    )
                    + "\n"
                    for s in range(1, steps + 1)
                )
            )
            logs += ["--log", f"{exp}/{seed}={f}"]
    assert (
        make_tables.main(
            ["--results", str(res), "--out", str(tmp_path / "t"), "--suites", "test", "--resamples", "100", *logs]
        )
        == 0
    )
    md = (tmp_path / "t" / "main_table.md").read_text().splitlines()
    titles = [line.split(" | ")[1:3] for line in md[2:6]]
    assert titles == [
        ["small", "Base"],
        ["small", "GRPO"],
        ["small", "CoDistill-GRPO [kd.coef=0.3]"],
        ["large", "CoDistill-GRPO [kd.coef=0.3]"],
    ]
    # time: grpo 2 steps x 30 s (seed 1) and x 60 s (seed 2) = 1 and 2 min; codistill 1.5 and 3 min
    assert md[3].endswith("| 1.5 ± 0.7 | 2 |") and md[4].endswith("| 2.2 ± 1.1 | 2 |")
    assert md[-1] == (
        "Response tokens generated in training (mean over seeds): grpo_small 1,536 by the small model "
        "(n=2); codistill[kd.coef=0.3] 1,920 by the small model (n=2), the large model none."
    )
    diff = (tmp_path / "t" / "differences.md").read_text()
    assert "| toy | small | CoDistill-GRPO [kd.coef=0.3] − GRPO | " in diff


# ----------------------------------------------------------------------------- logs and curves


def test_read_log_verl_file_logger_format(tmp_path):
    log = tmp_path / "run.jsonl"
    lines = [
        {"step": 1, "data": {"critic/score/mean": 0.1, "large/is_ess": 0.9, "timing_s/gen": 2.0, "note": "x"}},
        {"step": 2, "data": {"critic/score/mean": 0.2, "large/is_ess": 0.8, "small/kd_reward_mean": -0.5}},
        {"step": 2, "data": {"critic/score/mean": 0.25}},  # a repeated step keeps its last value
        {"step": 3, "critic/score/mean": 0.3},  # flat form
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
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
            f.write_text(
                "".join(
                    json.dumps(
                        {
                            "step": s,
                            "data": {
                                "critic/score/mean": scale * s / 10 + seed,
                                "small/kd_reward_mean": -1 / s,
                                "large/is_ess": 0.9,
                                "val-core/toy/acc/mean@1": 0.1 * s,
                                "val/kd_kl": 1 / s,
                                "val-aux/toy/kd_kl/mean": 2 / s,
                            },
                        }
                    )
                    + "\n"
                    for s in range(1, 6)
                )
            )
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
    assert (
        "6 panels: val-core/toy/acc/mean@1, critic/score/mean, small/kd_reward_mean, large/is_ess, val/kd_kl, "
        "val-aux/toy/kd_kl/mean"
    ) in out
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

    logs = {
        "grpo_small/1": {"critic/score/mean": {1: 0.1, 2: 0.2}},
        "codistill/1": {"critic/score/mean": {1: 0.2, 2: 0.3}, "large/is_ess": {1: 0.9, 2: 0.8}},
        "grpo_large/1": {"critic/score/mean": {1: 0.7, 2: 0.8}, "large/is_ess": {1: 1.0, 2: 1.0}},
    }
    figures = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), real_savefig(fig, *a, **k))[1])
    make_tables.plot_curves(logs, ["critic/*", "large/*"], tmp_path / "c.png")
    (fig,) = figures
    colours = [{line.get_label().split(" ")[0]: line.get_color() for line in ax.get_lines()} for ax in fig.axes[:2]]
    assert sorted(colours[0]) == ["codistill", "grpo_large", "grpo_small"] and sorted(colours[1]) == [
        "codistill",
        "grpo_large",
    ]
    assert colours[1]["codistill"] == colours[0]["codistill"] and colours[1]["grpo_large"] == colours[0]["grpo_large"]
    assert len(set(colours[0].values())) == 3
