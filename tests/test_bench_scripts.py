"""scripts/bench_step.py, bench_algos.py and bench_reward.py: bench_step's phase arithmetic on a hand-worked
metrics table and its up-front --warmup check; bench_algos and bench_reward end to end (subprocesses, tiny sizes):
the printed tables' rows and columns, and the figures that do not depend on timing."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.support import load_script

REPO = Path(__file__).resolve().parents[1]


bench_step = load_script("bench_step")


def test_phase_means_hand_worked():
    """Two steps' timers (s); small log-prob is old_log_prob minus the large model's share, advantage adds the
    KD part where logged, a phase whose first key a step lacks is None."""
    df = pd.DataFrame(
        [
            {
                "timing_s/gen": 1.0,
                "timing_s/old_log_prob": 0.5,
                "timing_s/large_log_prob": 0.2,
                "timing_s/adv": 0.01,
                "timing_s/kd_advantage": 0.03,
                "timing_s/small_update": 0.6,
                "timing_s/step": 3.0,
            },
            {
                "timing_s/gen": 2.0,
                "timing_s/old_log_prob": 0.7,
                "timing_s/large_log_prob": 0.4,
                "timing_s/adv": 0.03,
                "timing_s/step": 5.0,
            },
        ]
    )
    got = bench_step.phase_means(df)
    # by hand: generate (1+2)/2, small log-prob ((0.5-0.2)+(0.7-0.4))/2, large log-prob (0.2+0.4)/2,
    # advantage ((0.01+0.03)+0.03)/2, step (3+5)/2; small update is missing in step 2, reward/large/sync everywhere
    want = {"generate": 1.5, "small log-prob": 0.3, "large log-prob": 0.3, "advantage": 0.035, "step (total)": 4.0}
    assert set(got) == {label for label, _, _ in bench_step.PHASES}
    for label, value in got.items():
        if label in want:
            assert math.isclose(value, want[label], rel_tol=1e-12), (label, value)
        else:
            assert value is None, (label, value)


def test_steps_not_above_warmup_is_refused_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match=r"bench_step: no steps after the 2 warm-up steps; raise --steps"):
        bench_step.main(["--steps", "2", "--warmup", "2", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / script), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # a subprocess each (torch, verl or math-verify start-up)
def test_bench_algos_table_on_cpu():
    proc = _run(
        "bench_algos.py",
        "--batch",
        "16",
        "--seq-len",
        "32",
        "--group-size",
        "4",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("bench_algos: 16 responses x 32 tokens (")
    assert "group 4, cpu, 1 threads" in lines[0] and lines[0].endswith("2 repeats (after 1 warm-up)")
    assert lines[1].split() == [
        "phase",
        "wall",
        "med",
        "ms",
        "wall",
        "min",
        "ms",
        "cpu",
        "med",
        "ms",
        "peak",
        "MiB",
        "(memory:",
        "none",
        "on",
        "CPU)",
    ]
    rows = [(line[:34].strip(), line[34:].split()) for line in lines[2:16]]
    assert [name for name, _ in rows] == [
        "verl grpo advantage",
        "verl vanilla loss fwd+bwd",
        "GRPO path",
        "kd reward + small adv + metrics",
        "IS weights + metrics",
        "large advantage",
        "teacher loss fwd+bwd",
        "CoDistill path",
        "kd reward + small adv + metrics",
        "IS weights + metrics",
        "large advantage",
        "teacher loss fwd+bwd",
        "small vanilla loss fwd+bwd",
        "CoDistill + small loss",
    ]
    for name, cells in rows:  # 3 times (med >= min); the paths' rows end in "-" (no peak memory on CPU)
        assert len(cells) == (4 if name.endswith(("path", "small loss")) else 3), (name, cells)
        assert float(cells[0]) >= float(cells[1]) >= 0 and float(cells[2]) >= 0
        assert cells[3:] in ([], ["-"])
    assert [line.split(":")[0] for line in lines[16:]] == [
        "ratio CoDistill path / GRPO path (median of per-repeat ratios)",
        "ratio CoDistill + small loss / GRPO path (median of per-repeat ratios)",
    ]
    assert all(line.endswith("x; target time <= 3x") and "peak memory" not in line for line in lines[16:])


@pytest.mark.slow  # a subprocess each (torch, verl or math-verify start-up)
def test_bench_algos_batch_not_a_multiple_of_the_group():
    proc = _run("bench_algos.py", "--batch", "10", "--group-size", "4")
    assert proc.returncode == 1 and "--batch=10 must be a multiple of --group-size=4" in proc.stderr


@pytest.mark.slow  # a subprocess each (torch, verl or math-verify start-up)
def test_bench_reward_tables():
    """6 real-looking (right at indices 0, 2, 4) + 5 adversarial (one of each kind): accuracy 3/11 by hand."""
    proc = _run("bench_reward.py", "--n", "6", "--adversarial", "5", "--timeout", "1", "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("Timeout is disabled")]
    kinds = ["1e5_char_boxed", "1e5_char_unboxed", "huge_factorial", "nested_frac_x100", "power_tower"]
    assert (
        lines[0] == f"items: 6 real-looking + 5 adversarial ({', '.join(kinds)}); timeout 1.0 s; cpus {os.cpu_count()}"
    )
    assert lines[1] == "expected accuracy (by construction): 0.273"
    assert lines[2].startswith("pool(1) start-up: ")
    header = [
        "mode",
        "resp/s",
        "total",
        "s",
        "ratio",
        "worst",
        "s",
        "p50",
        "ms",
        "p99",
        "ms",
        "acc",
        "t/o",
        "err",
        "load",
        "same",
        "scores",
    ]
    assert lines[3].split() == header
    seq, pool = lines[4].split(), lines[5].split()
    assert seq[0] == "sequential" and pool[0] == "pool(1)" and seq[3] == "1.00"
    assert seq[7] == pool[7] == "0.273" and seq[-1] == pool[-1] == "True"  # acc; same scores
    assert lines[6] == "pool(1) workers killed and replaced: 0"
    assert lines[7] == "worst latency (s) by input kind:"
    assert lines[8].split() == ["kind", "sequential", "pool(1)"]
    assert [line.split()[0] for line in lines[9:]] == ["real-looking", *kinds]
