"""scripts/cost_model.py: held to numbers worked out by hand from the shipped H200 JSONL (pinned
below with their derivation, each figure they use checked against the file) and to the GPU-cost
table of docs/benchmarks.md; through the real pair configs and through hand-built ones; zero-advantage scaling, run-log
parsing and the CLI without the config module."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.support import load_script

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "scripts" / "cost_data"
MAIN = DATA / "h200_phase_cost.jsonl"
TAIL = DATA / "h200_phase_cost_tail.jsonl"
PAIR = "qwen2.5-math-1.5b_7b"


cm = load_script("cost_model")


# ---- the worked example, by hand ----------------------------------------------------------------
#
# 128 prompts x 8 samples = 1024 responses of 200 + 800 tokens = 1,024,000 tokens; 1024 / 256 = 4
# decode batches of 800 steps. The figures used, from scripts/cost_data/h200_phase_cost.jsonl
# (test_the_figures_used_are_the_shipped_rows holds each of them to the file):
#   decode step = min(s_eager, s_graph) + s_all_layers (batch 256, ctx 2048; cost_data/README.md)
#   log-prob / train = 1,024,000 tokens / tok_per_s (seq 2048, the pair's micro-batches)
# The values below were worked out once with a calculator from those figures, not by the module.

S, L = "qwen2.5-math-1.5b", "qwen2.5-math-7b"
LS, LL = "llama-3.2-1b", "llama-3.1-8b"

SHIPPED = [  # (model, phase, selector, field, value)
    (S, "decode_linear", {"batch": 256}, "s_graph", 0.00752),  # eager 0.0267 is slower
    (S, "decode_attn", {"batch": 256, "ctx": 2048}, "s_all_layers", 0.00442),
    (L, "decode_linear", {"batch": 256}, "s_graph", 0.01551),  # eager 0.01869
    (L, "decode_attn", {"batch": 256, "ctx": 2048}, "s_all_layers", 0.00752),
    (S, "logprob_fwd", {"micro_batch": 8, "seq": 2048}, "tok_per_s", 121884),
    (L, "logprob_fwd", {"micro_batch": 4, "seq": 2048}, "tok_per_s", 36435),
    (S, "train_fwd_bwd_ckpt", {"micro_batch": 4, "seq": 2048}, "tok_per_s", 32346),
    (L, "train_fwd_bwd_ckpt", {"micro_batch": 2, "seq": 2048}, "tok_per_s", 8848),
    (LS, "decode_linear", {"batch": 256}, "s_graph", 0.00479),  # eager 0.0111
    (LS, "decode_attn", {"batch": 256, "ctx": 2048}, "s_all_layers", 0.00491),
    (LL, "decode_linear", {"batch": 256}, "s_graph", 0.01858),  # eager 0.02413
    (LL, "decode_attn", {"batch": 256, "ctx": 2048}, "s_all_layers", 0.01671),
    (LS, "logprob_fwd", {"micro_batch": 8, "seq": 2048}, "tok_per_s", 154938),
    (LL, "logprob_fwd", {"micro_batch": 4, "seq": 2048}, "tok_per_s", 33479),
    (LS, "train_fwd_bwd_ckpt", {"micro_batch": 4, "seq": 2048}, "tok_per_s", 41957),
    (LL, "train_fwd_bwd_ckpt", {"micro_batch": 2, "seq": 2048}, "tok_per_s", 8170),
    # for the length / decode-batch cases below
    (S, "decode_attn", {"batch": 256, "ctx": 4096}, "s_all_layers", 0.00768),
    (L, "logprob_fwd", {"micro_batch": 4, "seq": 4096}, "tok_per_s", 34838),
]

# Qwen 1.5B / 7B (GPU-seconds per step)
GEN_S = 38.208  # 4 x 800 x (7.52 + 4.42) ms = 3200 x 0.01194 s
GEN_L = 73.696  # 3200 x (15.51 + 7.52) ms = 3200 x 0.02303 s
LP_S = 8.40143  # 1,024,000 / 121,884
LP_L = 28.10484  # 1,024,000 / 36,435
TR_S = 31.65770  # 1,024,000 / 32,346
TR_L = 115.73237  # 1,024,000 / 8,848
GRPO_LARGE = 217.53321  # 73.696 + 28.10484 + 115.73237
CODISTILL = 222.10435  # 38.208 + 8.40143 + 28.10484 + 31.65770 + 115.73237
GRPO_SMALL = 78.26713  # 38.208 + 8.40143 + 31.65770
FROZEN = 106.37198  # 38.208 + 8.40143 + 28.10484 + 31.65770 (the large model does not train)

# Llama 1B / 8B
L_GEN_S = 31.04  # 3200 x (4.79 + 4.91) ms
L_GEN_L = 112.928  # 3200 x (18.58 + 16.71) ms
L_LP_S, L_LP_L = 6.60910, 30.58634  # 1,024,000 / 154,938 and / 33,479
L_TR_S, L_TR_L = 24.40594, 125.33660  # 1,024,000 / 41,957 and / 8,170
L_GRPO_LARGE = 268.85094  # 112.928 + 30.58634 + 125.33660
L_CODISTILL = 217.97798  # 31.04 + 6.60910 + 30.58634 + 24.40594 + 125.33660


def _row(model: str, phase: str, path: Path = MAIN, **match) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    found = [
        r
        for r in rows
        if r.get("model") == model and r.get("phase") == phase and all(r.get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, (model, phase, match, found)
    return found[0]


def test_the_figures_used_are_the_shipped_rows():
    for model, phase, match, key, value in SHIPPED:
        row = _row(model, phase, **match)
        assert row[key] == value, (model, phase, match, key)
        if phase == "decode_linear":  # the CUDA-graphed step is the faster one in every row used
            assert row["s_graph"] < row["s_eager"]


def _readme_table() -> dict[str, list[str]]:
    """The GPU-cost table of docs/benchmarks.md (moved there from README.md): first cell -> the other cells."""
    rows = {}
    for line in (REPO / "docs" / "benchmarks.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| Qwen") or line.startswith("| Llama"):
            rows[cells[0]] = cells[1:]
    return rows


def test_readme_table_is_the_hand_worked_numbers():
    """docs/benchmarks.md's table (what a reader sizes a run with) states these numbers, rounded to 0.1."""
    t = _readme_table()
    one = lambda x: f"{x:.1f}"  # noqa: E731
    assert t["Qwen 1.5B/7B `grpo_large`"][:6] == [f"{one(GEN_L)} (7B)", "-", one(LP_L), "-", one(TR_L), one(GRPO_LARGE)]
    assert t["Qwen 1.5B/7B `codistill`"][:6] == [
        f"{one(GEN_S)} (1.5B)",
        one(LP_S),
        one(LP_L),
        one(TR_S),
        one(TR_L),
        one(CODISTILL),
    ]
    assert t["Qwen 1.5B/7B `codistill`"][6] == f"{CODISTILL / GRPO_LARGE:.2f}"  # 1.02
    skip = t["Qwen, 40% zero-advantage samples skipped, `codistill`"]
    assert skip[4:6] == [one(0.6 * TR_L), one(CODISTILL - 0.4 * TR_L)]  # 69.4, 175.8
    assert one(GRPO_LARGE - 0.4 * TR_L) in skip[6]  # the baseline skips too: 171.2
    assert t["Llama 1B/8B `grpo_large`"][:6] == [
        f"{one(L_GEN_L)} (8B)",
        "-",
        one(L_LP_L),
        "-",
        one(L_TR_L),
        one(L_GRPO_LARGE),
    ]
    assert t["Llama 1B/8B `codistill`"][:7] == [
        f"{one(L_GEN_S)} (1B)",
        one(L_LP_S),
        one(L_LP_L),
        one(L_TR_S),
        one(L_TR_L),
        one(L_CODISTILL),
        f"{L_CODISTILL / L_GRPO_LARGE:.2f}",
    ]
    skip = t["Llama, 40% zero-advantage samples skipped, `codistill`"]
    assert skip[4:6] == [one(0.6 * L_TR_L), one(L_CODISTILL - 0.4 * L_TR_L)]  # 75.2, 167.8
    assert one(L_GRPO_LARGE - 0.4 * L_TR_L) in skip[6]  # 218.7


@pytest.mark.parametrize("pair, exp, expected", [
    ("qwen2.5-math-1.5b_7b", "grpo_large", {("generate", "large"): GEN_L, ("log_prob", "large"): LP_L,
                                            ("train", "large"): TR_L}),
    ("qwen2.5-math-1.5b_7b", "codistill", {("generate", "small"): GEN_S, ("log_prob", "small"): LP_S,
                                           ("log_prob", "large"): LP_L, ("train", "small"): TR_S,
                                           ("train", "large"): TR_L}),
    ("llama-3.2-1b_3.1-8b", "grpo_large", {("generate", "large"): L_GEN_L, ("log_prob", "large"): L_LP_L,
                                           ("train", "large"): L_TR_L}),
    ("llama-3.2-1b_3.1-8b", "codistill", {("generate", "small"): L_GEN_S, ("log_prob", "small"): L_LP_S,
                                          ("log_prob", "large"): L_LP_L, ("train", "small"): L_TR_S,
                                          ("train", "large"): L_TR_L}),
])  # fmt: skip
def test_shipped_pair_configs_give_the_hand_worked_numbers(pair, exp, expected):
    """The real pair and experiment configs (compose_config) on the shipped figures."""
    s = cm.settings_from_config(cm.compose(pair, exp))
    cost = cm.step_cost(cm.load_phases(cm.DEFAULT_PHASES), s)
    assert cost == pytest.approx(expected, rel=1e-6)
    assert cm.gpu_hours(s, sum(cost.values())) == pytest.approx(s.steps * sum(expected.values()) / 3600, rel=1e-6)


# ---- configs as compose_config would give them (built by hand) ----------------------------------


def _model(path, micro, lp_micro):
    return {
        "model": {"path": path, "enable_gradient_checkpointing": True},
        "actor": {"ppo_micro_batch_size_per_gpu": micro},
        "log_prob_micro_batch_size_per_gpu": lp_micro,
    }


EXPS = {  # exp -> (generator, large.enable, large.train, kd.coef)
    "codistill": ("small", True, True, 1.0),
    "grpo_large": ("large", False, True, 0.0),
    "grpo_small": ("small", False, True, 0.0),
    "frozen_teacher": ("small", True, False, 1.0),
}


def _cfg(exp: str, skip: bool = True, steps: int = 300) -> dict:
    generator, enable, train, coef = EXPS[exp]
    return {
        "pair": {
            "name": PAIR,
            "small": _model("Qwen/Qwen2.5-Math-1.5B", 4, 8),
            "large": _model("Qwen/Qwen2.5-Math-7B", 2, 4),
        },
        "exp": {"name": exp, "generator": generator},
        "algorithm": {
            "codistill": {"kd": {"coef": coef}, "large": {"enable": enable, "train": train, "skip_zero_grad": skip}}
        },
        "data": {"train_batch_size": 128, "max_prompt_length": 1024, "max_response_length": 3072},
        "actor_rollout_ref": {"rollout": {"n": 8}},
        "trainer": {"total_training_steps": steps, "nnodes": 1, "n_gpus_per_node": 8},
    }


@pytest.fixture(scope="module")
def phases():
    return cm.load_phases([MAIN, TAIL])


def _cost(phases, exp, **figures):
    s = cm.settings_from_config(OmegaConf.create(_cfg(exp, **{k: figures.pop(k) for k in ("skip",) if k in figures})))
    return cm.step_cost(phases, cm.apply_run_figures(s, **figures))


def test_worked_example(phases):
    grpo_large = _cost(phases, "grpo_large")
    assert grpo_large == pytest.approx(
        {("generate", "large"): GEN_L, ("log_prob", "large"): LP_L, ("train", "large"): TR_L}, rel=1e-6
    )
    codistill = _cost(phases, "codistill")
    assert codistill == pytest.approx(
        {
            ("generate", "small"): GEN_S,
            ("log_prob", "small"): LP_S,
            ("log_prob", "large"): LP_L,
            ("train", "small"): TR_S,
            ("train", "large"): TR_L,
        },
        rel=1e-6,
    )
    assert sum(codistill.values()) == pytest.approx(CODISTILL, rel=1e-6)
    assert sum(codistill.values()) / sum(grpo_large.values()) == pytest.approx(CODISTILL / GRPO_LARGE, rel=1e-6)
    assert cm.large_share(codistill) == pytest.approx(LP_L + TR_L, rel=1e-6)
    assert sum(_cost(phases, "grpo_small").values()) == pytest.approx(GRPO_SMALL, rel=1e-6)
    frozen = _cost(phases, "frozen_teacher")
    assert ("train", "large") not in frozen and sum(frozen.values()) == pytest.approx(FROZEN, rel=1e-6)
    s = cm.settings_from_config(_cfg("codistill"))  # plain dicts work too
    assert cm.gpu_hours(s, sum(codistill.values())) == pytest.approx(300 * CODISTILL / 3600, rel=1e-6)
    assert round(cm.gpu_hours(s, sum(codistill.values())), 1) == 18.5


def test_zero_adv_fraction_scaling(phases):
    codistill = _cost(phases, "codistill", zero_adv_frac=0.4)
    assert codistill[("train", "large")] == pytest.approx(TR_L * 0.6, rel=1e-6)  # ~116 x 0.6
    assert codistill[("train", "small")] == pytest.approx(TR_S, rel=1e-6)  # KD term: no zero gradients
    assert codistill[("log_prob", "large")] == pytest.approx(LP_L, rel=1e-6)  # the forward still runs
    assert _cost(phases, "grpo_small", zero_adv_frac=0.4)[("train", "small")] == pytest.approx(TR_S * 0.6, rel=1e-6)
    assert _cost(phases, "grpo_large", zero_adv_frac=0.4)[("train", "large")] == pytest.approx(TR_L * 0.6, rel=1e-6)
    # skip off: nothing scales
    assert _cost(phases, "codistill", zero_adv_frac=0.4, skip=False)[("train", "large")] == pytest.approx(
        TR_L, rel=1e-6
    )
    assert _cost(phases, "grpo_small", zero_adv_frac=0.4, skip=False)[("train", "small")] == pytest.approx(
        TR_S, rel=1e-6
    )
    with pytest.raises(ValueError, match="zero-advantage"):
        _cost(phases, "codistill", zero_adv_frac=1.5)


def test_lengths_and_decode_batch_pick_nearest_measured(phases):
    # 1000 -> 3000 tokens per sample: the seq-4096 rows and ctx 4096 (measured at batch 256)
    c = _cost(phases, "codistill", prompt_len=1000, resp_len=2000)
    assert c[("log_prob", "large")] == pytest.approx(88.17957, rel=1e-6)  # 1024 x 3000 / 34,838 tok/s
    assert c[("generate", "small")] == pytest.approx(121.6, rel=1e-6)  # 4 x 2000 x (7.52 + 7.68) ms
    # decode batch 64: only in the tail file (ctx 2048): graph 4.94 ms (eager 22.57) + attention 2.03 ms
    assert _row(S, "decode_linear", TAIL, batch=64)["s_graph"] == 0.00494
    assert _row(S, "decode_attn", TAIL, batch=64, ctx=2048)["s_all_layers"] == 0.00203
    c = _cost(phases, "codistill", decode_batch=64)
    assert c[("generate", "small")] == pytest.approx(89.216, rel=1e-6)  # 1024 / 64 = 16 x 800 x 6.97 ms
    # without the tail file the nearest measured batch is 256: 16 x 800 x 11.94 ms
    c = cm.step_cost(
        cm.load_phases(MAIN), cm.apply_run_figures(cm.settings_from_config(_cfg("codistill")), decode_batch=64)
    )
    assert c[("generate", "small")] == pytest.approx(152.832, rel=1e-6)


def test_settings_from_config():
    s = cm.settings_from_config(OmegaConf.create(_cfg("codistill")))
    assert (s.pair, s.exp, s.generator, s.small.key, s.large.key) == (PAIR, "codistill", "small", S, L)
    assert (s.small.train_micro, s.small.logprob_micro, s.large.train_micro, s.large.logprob_micro) == (4, 8, 2, 4)
    assert (s.responses, s.prompt_len, s.resp_len, s.steps, s.gpus) == (1024, 200, 800, 300, 8)
    assert s.large_enabled and s.large_train and s.skip_zero_grad and s.kd_coef == 1.0
    g = cm.settings_from_config(_cfg("grpo_large"))
    assert g.generator == "large" and not g.large_enabled and not g.large_train  # train=true but not loaded
    short = _cfg("codistill")
    short["data"]["max_response_length"] = 512
    assert cm.settings_from_config(short).resp_len == 512  # the default 800 capped at the maximum
    bad = _cfg("grpo_large")
    bad["algorithm"]["codistill"]["large"]["enable"] = True
    with pytest.raises(ValueError, match="both the actor and the second model"):
        cm.settings_from_config(bad)
    missing = _cfg("codistill")
    del missing["data"]["train_batch_size"]
    with pytest.raises(KeyError, match="data.train_batch_size"):
        cm.settings_from_config(missing)
    assert cm.model_key("meta-llama/Llama-3.1-8B-Instruct") == "llama-3.1-8b"
    assert cm.model_key("/models/Qwen2.5-Math-7B/") == "qwen2.5-math-7b"


METRICS_LINES = [
    {
        "step": 1,
        "data": {
            "response_length/mean": 700.0,
            "prompt_length/mean": 190.0,
            "large/skipped_frac": 0.3,
            "critic/score/mean": 0.2,
        },
    },
    {"step": 2, "data": {"response_length/mean": 800.0, "prompt_length/mean": 200.0, "large/skipped_frac": 0.5}},
    {"step": 2, "data": {"val-core/math500/acc/mean@1": 0.4}},  # validation line of the same step
    {"step": 3, "data": {"response_length/mean": 900.0, "prompt_length/mean": 210.0, "large/skipped_frac": 0.4}},
]


def _write_metrics(path: Path) -> Path:
    path.write_text("\n".join(json.dumps(x) for x in METRICS_LINES) + "\n\n")
    return path


def test_read_run_metrics(tmp_path, phases):
    m = cm.read_run_metrics(_write_metrics(tmp_path / "metrics.jsonl"))
    assert m.steps == 3 and m.resp_len == pytest.approx(800.0) and m.prompt_len == pytest.approx(200.0)
    assert m.zero_adv_frac == pytest.approx(0.4) and m.zero_adv_key == "large/skipped_frac"
    s = cm.apply_run_figures(cm.settings_from_config(_cfg("codistill")), metrics=m)
    assert (s.prompt_len, s.resp_len, s.zero_adv_frac) == pytest.approx((200.0, 800.0, 0.4))
    assert "response_length/mean" in s.len_source and "large/skipped_frac" in s.zero_adv_source
    assert cm.step_cost(phases, s)[("train", "large")] == pytest.approx(TR_L * 0.6, rel=1e-6)
    # explicit values win over the log
    s = cm.apply_run_figures(cm.settings_from_config(_cfg("codistill")), metrics=m, resp_len=1000, zero_adv_frac=0.0)
    assert (s.resp_len, s.zero_adv_frac, s.zero_adv_source) == (1000.0, 0.0, "--zero-adv-frac")
    # a log without a zero-advantage key: fraction 0, said so
    (tmp_path / "plain.jsonl").write_text(json.dumps({"step": 1, "data": {"response_length/mean": 500}}) + "\n")
    m = cm.read_run_metrics(tmp_path / "plain.jsonl")
    s = cm.apply_run_figures(cm.settings_from_config(_cfg("codistill")), metrics=m)
    assert (s.resp_len, s.prompt_len, s.zero_adv_frac) == (500.0, 200.0, 0.0)
    assert "none of large/skipped_frac" in s.zero_adv_source
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        cm.read_run_metrics(tmp_path / "bad.jsonl")


# ---- CLI ----------------------------------------------------------------------------------------


@pytest.fixture()
def cli_files(tmp_path):
    phases = shutil.copy(MAIN, tmp_path / "phases.jsonl")
    configs = tmp_path / "configs.json"
    configs.write_text(json.dumps({exp: _cfg(exp) for exp in EXPS}))
    return tmp_path, str(phases), str(configs)


def _run_cli(capsys, *argv) -> str:
    assert cm.main(list(argv)) == 0
    return capsys.readouterr().out


def test_cli_codistill(cli_files, capsys):
    _, phases, configs = cli_files
    out = _run_cli(capsys, "--phases", phases, "--configs", configs, "--pair", PAIR, "--exp", "codistill")
    rows = {
        tuple(line.split()[:2]): float(line.split()[3])
        for line in out.splitlines()
        if line.split()[:1] in (["generate"], ["log_prob"], ["train"])
    }
    assert rows == pytest.approx(
        {
            ("generate", "small"): GEN_S,
            ("log_prob", "small"): LP_S,
            ("log_prob", "large"): LP_L,
            ("train", "small"): TR_S,
            ("train", "large"): TR_L,
        },
        abs=0.051,
    )
    assert f"total {CODISTILL:.1f}" in " ".join(out.split())
    assert f"codistill/grpo_large = {CODISTILL / GRPO_LARGE:.3f}" in out
    assert f"({GRPO_LARGE:.1f} GPU-s/step" in out
    assert f"{LP_L + TR_L:.1f} GPU-s/step" in out  # the large model's own share
    assert f"{300 * CODISTILL / 3600:.2f} GPU-hours" in out and "18.51 GPU-hours" in out
    assert f"{300 * CODISTILL / 3600 / 8:.2f} wall-hours (assumes perfect scaling)" in out
    for assumption in (
        "decode batch: 256",
        "decode ctx: 2048",
        "lengths: prompt 200 + response 800",
        "zero-advantage fraction 0",
        "not modelled: FSDP communication, optimizer step, vLLM scheduler",
    ):
        assert assumption in out


def test_cli_grpo_large_and_metrics(cli_files, capsys):
    tmp, phases, configs = cli_files
    out = _run_cli(capsys, "--phases", phases, "--configs", configs, "--pair", PAIR, "--exp", "grpo_large")
    assert f"total {GRPO_LARGE:.1f}" in " ".join(out.split()) and "grpo_large baseline" not in out
    metrics = _write_metrics(tmp / "metrics.jsonl")
    out = _run_cli(
        capsys,
        "--phases",
        phases,
        "--configs",
        configs,
        "--pair",
        PAIR,
        "--exp",
        "codistill",
        "--metrics",
        str(metrics),
        "--baseline-zero-adv-frac",
        "0",
    )
    assert f"{TR_L * 0.6:.1f}" in out and "x (1 - 0.4) zero-adv skip" in out
    assert "zero-advantage fraction 0.4: large/skipped_frac mean in" in out
    total = GEN_S + LP_S + LP_L + TR_S + 0.6 * TR_L
    assert f"codistill/grpo_large = {total / GRPO_LARGE:.3f}" in out


def test_cli_line_is_the_hand_worked_numbers(cli_files, capsys):
    """The one-line estimate the launcher's dry run prints (scripts/run_qwen_math.sh --dry-run)."""
    _, phases, configs = cli_files
    out = _run_cli(capsys, "--phases", phases, "--configs", configs, "--pair", PAIR, "--exp", "codistill", "--line")
    # 222.1 = 38.2 + (8.40 + 28.10) + (31.66 + 115.73); 300 x 222.10 / 3600 = 18.51 GPU-hours, / 8 GPUs = 2.31 h
    assert out.strip().startswith(
        f"estimated cost: {CODISTILL:.1f} GPU-s/step (generate {GEN_S:.1f}, log-prob {LP_S + LP_L:.1f}, "
        f"train {TR_S + TR_L:.1f}); 300 steps = {300 * CODISTILL / 3600:.1f} GPU-hours, "
        f"{300 * CODISTILL / 3600 / 8:.1f} h on 8 GPUs; codistill/grpo_large = {CODISTILL / GRPO_LARGE:.3f}"
    )
    assert "estimated cost: 222.1 GPU-s/step (generate 38.2, log-prob 36.5, train 147.4); 300 steps" in out
    out = _run_cli(capsys, "--phases", phases, "--configs", configs, "--pair", PAIR, "--exp", "grpo_large", "--line")
    assert f"estimated cost: {GRPO_LARGE:.1f} GPU-s/step (generate {GEN_L:.1f}, log-prob {LP_L:.1f}, " in out
    assert "/grpo_large =" not in out  # no baseline ratio for the baseline itself


def test_cli_uses_compose_config(cli_files, capsys, monkeypatch):
    _, phases, _ = cli_files
    calls = []

    def fake_compose(pair, exp, overrides=()):
        calls.append((pair, exp, list(overrides)))
        return OmegaConf.create(_cfg(exp, steps=100))

    monkeypatch.setattr(cm, "compose", fake_compose)
    out = _run_cli(
        capsys, "--phases", phases, "--pair", PAIR, "--exp", "codistill", "--", "trainer.total_training_steps=100"
    )
    assert calls == [(PAIR, "codistill", ["trainer.total_training_steps=100"])]
    assert f"{100 * CODISTILL / 3600:.2f} GPU-hours" in out


def test_cli_errors(cli_files, tmp_path, monkeypatch, capsys):
    _, phases, configs = cli_files
    monkeypatch.setitem(sys.modules, "recipe.codistill_grpo.configuration", None)  # import fails
    with pytest.raises(SystemExit, match="cannot compose the config.*--configs"):
        cm.main(["--phases", phases, "--pair", PAIR, "--exp", "codistill"])
    only_small = tmp_path / "small.jsonl"
    only_small.write_text("".join(line + "\n" for line in MAIN.read_text().splitlines() if L not in line))
    with pytest.raises(SystemExit, match=f"no 'logprob_fwd' figures for model '{L}'.*models there: .*{S}"):
        cm.main(["--phases", str(only_small), "--configs", configs, "--pair", PAIR, "--exp", "codistill"])
    with pytest.raises(SystemExit, match="no config for experiment 'kd_only'"):
        cm.main(["--phases", phases, "--configs", configs, "--pair", PAIR, "--exp", "kd_only"])
    with pytest.raises(SystemExit, match="not 'tiny'"):
        cm.main(["--phases", phases, "--configs", configs, "--pair", "tiny", "--exp", "codistill"])
