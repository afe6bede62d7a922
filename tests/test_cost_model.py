"""scripts/cost_model.py: the worked example of the Qwen pair, computed here by hand from the shipped
H200 JSONL (the rows are read in this file, not through the module's helpers), zero-advantage scaling,
run-log parsing and the CLI without the config module."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "scripts" / "cost_data"
MAIN = DATA / "h200_phase_cost.jsonl"
TAIL = DATA / "h200_phase_cost_tail.jsonl"
PAIR = "qwen2.5-math-1.5b_7b"


def _load_script():
    spec = importlib.util.spec_from_file_location("cost_model_script", REPO / "scripts" / "cost_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cm = _load_script()


# ---- the figures, read by hand ------------------------------------------------------------------

def _row(model: str, phase: str, **match) -> dict:
    rows = [json.loads(line) for line in MAIN.read_text().splitlines() if line.strip()]
    found = [r for r in rows if r.get("model") == model and r.get("phase") == phase
             and all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (model, phase, match, found)
    return found[0]


S, L = "qwen2.5-math-1.5b", "qwen2.5-math-7b"
TOKENS = 128 * 8 * (200 + 800)  # 1,024,000
BATCHES = 128 * 8 / 256  # 4 decode batches of 256 per GPU


def _decode_ms(model):
    lin = _row(model, "decode_linear", batch=256)
    attn = _row(model, "decode_attn", batch=256, ctx=2048)
    return min(lin["s_eager"], lin["s_graph"]) + attn["s_all_layers"]


GEN_S = BATCHES * 800 * _decode_ms(S)  # 4 x 800 x 11.94 ms
GEN_L = BATCHES * 800 * _decode_ms(L)  # 4 x 800 x 23.03 ms
LP_S = TOKENS / _row(S, "logprob_fwd", micro_batch=8, seq=2048)["tok_per_s"]
LP_L = TOKENS / _row(L, "logprob_fwd", micro_batch=4, seq=2048)["tok_per_s"]
TR_S = TOKENS / _row(S, "train_fwd_bwd_ckpt", micro_batch=4, seq=2048)["tok_per_s"]
TR_L = TOKENS / _row(L, "train_fwd_bwd_ckpt", micro_batch=2, seq=2048)["tok_per_s"]

GRPO_LARGE = GEN_L + LP_L + TR_L
CODISTILL = GEN_S + (LP_S + LP_L) + (TR_S + TR_L)
GRPO_SMALL = GEN_S + LP_S + TR_S
FROZEN = GEN_S + LP_S + LP_L + TR_S


def test_hand_figures_are_the_issue_s():
    """The numbers the issue quotes (rounded there), from the JSONL rows."""
    assert _decode_ms(L) == pytest.approx(0.02303) and _decode_ms(S) == pytest.approx(0.01194)
    assert GEN_L == pytest.approx(73.6, abs=0.2) and GEN_S == pytest.approx(38, abs=0.5)
    assert round(LP_L) == 28 and round(LP_S, 1) == 8.4
    assert round(TR_L) == 116 and round(TR_S) == 32
    assert (round(GRPO_LARGE), round(CODISTILL), round(GRPO_SMALL)) == (218, 222, 78)
    assert round(FROZEN) == 106
    assert round(300 * CODISTILL / 3600, 1) == 18.5


# ---- configs as compose_config would give them (built by hand) ----------------------------------

def _model(path, micro, lp_micro):
    return {"model": {"path": path, "enable_gradient_checkpointing": True},
            "actor": {"ppo_micro_batch_size_per_gpu": micro}, "log_prob_micro_batch_size_per_gpu": lp_micro}


EXPS = {  # exp -> (generator, large.enable, large.train, kd.coef)
    "codistill": ("small", True, True, 1.0),
    "grpo_large": ("large", False, True, 0.0),
    "grpo_small": ("small", False, True, 0.0),
    "frozen_teacher": ("small", True, False, 1.0),
}


def _cfg(exp: str, skip: bool = True, steps: int = 300) -> dict:
    generator, enable, train, coef = EXPS[exp]
    return {
        "pair": {"name": PAIR, "small": _model("Qwen/Qwen2.5-Math-1.5B", 4, 8),
                 "large": _model("Qwen/Qwen2.5-Math-7B", 2, 4)},
        "exp": {"name": exp, "generator": generator},
        "algorithm": {"codistill": {"kd": {"coef": coef},
                                    "large": {"enable": enable, "train": train, "skip_zero_grad": skip}}},
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
    assert grpo_large == pytest.approx({("generate", "large"): GEN_L, ("log_prob", "large"): LP_L,
                                        ("train", "large"): TR_L}, rel=1e-9)
    codistill = _cost(phases, "codistill")
    assert codistill == pytest.approx({("generate", "small"): GEN_S, ("log_prob", "small"): LP_S,
                                       ("log_prob", "large"): LP_L, ("train", "small"): TR_S,
                                       ("train", "large"): TR_L}, rel=1e-9)
    assert cm.total(codistill) == pytest.approx(CODISTILL, rel=1e-9)
    assert cm.total(codistill) / cm.total(grpo_large) == pytest.approx(CODISTILL / GRPO_LARGE, rel=1e-9)
    assert cm.large_share(codistill) == pytest.approx(LP_L + TR_L, rel=1e-9)
    assert cm.total(_cost(phases, "grpo_small")) == pytest.approx(GRPO_SMALL, rel=1e-9)
    frozen = _cost(phases, "frozen_teacher")
    assert ("train", "large") not in frozen and cm.total(frozen) == pytest.approx(FROZEN, rel=1e-9)
    s = cm.settings_from_config(_cfg("codistill"))  # plain dicts work too
    assert cm.gpu_hours(s, cm.total(codistill)) == pytest.approx(300 * CODISTILL / 3600, rel=1e-9)
    assert round(cm.gpu_hours(s, cm.total(codistill)), 1) == 18.5


def test_zero_adv_fraction_scaling(phases):
    codistill = _cost(phases, "codistill", zero_adv_frac=0.4)
    assert codistill[("train", "large")] == pytest.approx(TR_L * 0.6, rel=1e-9)  # ~116 x 0.6
    assert codistill[("train", "small")] == pytest.approx(TR_S, rel=1e-9)  # KD term: no zero gradients
    assert codistill[("log_prob", "large")] == pytest.approx(LP_L, rel=1e-9)  # the forward still runs
    assert _cost(phases, "grpo_small", zero_adv_frac=0.4)[("train", "small")] == pytest.approx(TR_S * 0.6, rel=1e-9)
    assert _cost(phases, "grpo_large", zero_adv_frac=0.4)[("train", "large")] == pytest.approx(TR_L * 0.6, rel=1e-9)
    # skip off: nothing scales
    assert _cost(phases, "codistill", zero_adv_frac=0.4, skip=False)[("train", "large")] == pytest.approx(TR_L, rel=1e-9)
    assert _cost(phases, "grpo_small", zero_adv_frac=0.4, skip=False)[("train", "small")] == pytest.approx(TR_S, rel=1e-9)
    with pytest.raises(ValueError, match="zero-advantage"):
        _cost(phases, "codistill", zero_adv_frac=1.5)


def test_lengths_and_decode_batch_pick_nearest_measured(phases):
    # 1000 -> 3000 tokens per sample: the seq-4096 rows and ctx 4096 (measured at batch 256)
    c = _cost(phases, "codistill", prompt_len=1000, resp_len=2000)
    tokens = 1024 * 3000
    assert c[("log_prob", "large")] == pytest.approx(tokens / _row(L, "logprob_fwd", seq=4096)["tok_per_s"], rel=1e-9)
    lin, attn = _row(S, "decode_linear", batch=256), _row(S, "decode_attn", batch=256, ctx=4096)
    assert c[("generate", "small")] == pytest.approx(4 * 2000 * (lin["s_graph"] + attn["s_all_layers"]), rel=1e-9)
    # decode batch 64: only in the tail file (ctx 2048)
    tail = [json.loads(x) for x in TAIL.read_text().splitlines() if x.strip()]
    lin = next(r for r in tail if r.get("model") == S and r.get("phase") == "decode_linear" and r["batch"] == 64)
    attn = next(r for r in tail if r.get("model") == S and r.get("phase") == "decode_attn" and r["batch"] == 64)
    step = min(lin["s_eager"], lin["s_graph"]) + attn["s_all_layers"]
    c = _cost(phases, "codistill", decode_batch=64)
    assert c[("generate", "small")] == pytest.approx(1024 / 64 * 800 * step, rel=1e-9)
    # without the tail file the nearest measured batch is 256
    c = cm.step_cost(cm.load_phases(MAIN), cm.apply_run_figures(cm.settings_from_config(_cfg("codistill")), decode_batch=64))
    assert c[("generate", "small")] == pytest.approx(1024 / 64 * 800 * _decode_ms(S), rel=1e-9)


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
    {"step": 1, "data": {"response_length/mean": 700.0, "prompt_length/mean": 190.0, "large/skipped_frac": 0.3,
                         "critic/score/mean": 0.2}},
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
    assert cm.step_cost(phases, s)[("train", "large")] == pytest.approx(TR_L * 0.6, rel=1e-9)
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
    rows = {tuple(line.split()[:2]): float(line.split()[3]) for line in out.splitlines()
            if line.split()[:1] in (["generate"], ["log_prob"], ["train"])}
    assert rows == pytest.approx({("generate", "small"): GEN_S, ("log_prob", "small"): LP_S, ("log_prob", "large"): LP_L,
                                  ("train", "small"): TR_S, ("train", "large"): TR_L}, abs=0.051)
    assert f"total {CODISTILL:.1f}" in " ".join(out.split())
    assert f"codistill/grpo_large = {CODISTILL / GRPO_LARGE:.3f}" in out
    assert f"({GRPO_LARGE:.1f} GPU-s/step" in out
    assert f"{LP_L + TR_L:.1f} GPU-s/step" in out  # the large model's own share
    assert f"{300 * CODISTILL / 3600:.2f} GPU-hours" in out and "18.51 GPU-hours" in out
    assert f"{300 * CODISTILL / 3600 / 8:.2f} wall-hours (assumes perfect scaling)" in out
    for assumption in ("decode batch: 256", "decode ctx: 2048", "lengths: prompt 200 + response 800",
                       "zero-advantage fraction 0", "not modelled: FSDP communication, optimizer step, vLLM scheduler"):
        assert assumption in out


def test_cli_grpo_large_and_metrics(cli_files, capsys):
    tmp, phases, configs = cli_files
    out = _run_cli(capsys, "--phases", phases, "--configs", configs, "--pair", PAIR, "--exp", "grpo_large")
    assert f"total {GRPO_LARGE:.1f}" in " ".join(out.split()) and "grpo_large baseline" not in out
    metrics = _write_metrics(tmp / "metrics.jsonl")
    out = _run_cli(capsys, "--phases", phases, "--configs", configs, "--pair", PAIR, "--exp", "codistill",
                   "--metrics", str(metrics), "--baseline-zero-adv-frac", "0")
    assert f"{TR_L * 0.6:.1f}" in out and "x (1 - 0.4) zero-adv skip" in out
    assert "zero-advantage fraction 0.4: large/skipped_frac mean in" in out
    total = GEN_S + LP_S + LP_L + TR_S + 0.6 * TR_L
    assert f"codistill/grpo_large = {total / GRPO_LARGE:.3f}" in out


def test_cli_uses_compose_config(cli_files, capsys, monkeypatch):
    _, phases, _ = cli_files
    calls = []

    def fake_compose(pair, exp, overrides=()):
        calls.append((pair, exp, list(overrides)))
        return OmegaConf.create(_cfg(exp, steps=100))

    monkeypatch.setattr(cm, "compose", fake_compose)
    out = _run_cli(capsys, "--phases", phases, "--pair", PAIR, "--exp", "codistill", "--", "trainer.total_training_steps=100")
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
