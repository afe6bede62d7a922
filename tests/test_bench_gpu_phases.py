"""scripts/bench_gpu_phases.py: the shrunken CPU mode end to end (a subprocess), the JSONL it writes,
and the built-in config table against the models' published config.json values."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_gpu_phases.py"
PHASES = ("logprob_fwd", "train_fwd_bwd_ckpt", "decode_linear", "decode_attn")
MODELS = ("qwen2.5-math-1.5b", "qwen2.5-math-7b", "llama-3.2-1b", "llama-3.1-8b")


bench = load_script("bench_gpu_phases")

# Published config.json values (huggingface.co/<id>/blob/main/config.json), written out by hand:
# hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size,
# vocab_size, tie_word_embeddings, max_position_embeddings, rope_theta; and the parameter counts
# of these architectures (the H200 run's "params" lines agree).
PUBLISHED = {
    "qwen2.5-math-1.5b": (1536, 28, 12, 2, 8960, 151936, True, 4096, 10000.0, 1_543_714_304),
    "qwen2.5-math-7b": (3584, 28, 28, 4, 18944, 152064, False, 4096, 10000.0, 7_615_616_512),
    "llama-3.2-1b": (2048, 16, 32, 8, 8192, 128256, True, 131072, 500000.0, 1_235_814_400),
    "llama-3.1-8b": (4096, 32, 32, 8, 14336, 128256, False, 131072, 500000.0, 8_030_261_248),
}


@pytest.mark.parametrize("key", MODELS)
def test_builtin_table_matches_published_configs(key):
    import torch
    from transformers import AutoModelForCausalLM

    hidden, layers, heads, kv, inter, vocab, tie, max_pos, theta, params = PUBLISHED[key]
    table = bench.BUILTIN_CONFIGS[key]
    assert (
        table["hidden_size"],
        table["num_hidden_layers"],
        table["num_attention_heads"],
        table["num_key_value_heads"],
        table["intermediate_size"],
        table["vocab_size"],
        table["tie_word_embeddings"],
        table["max_position_embeddings"],
        table["rope_theta"],
    ) == (hidden, layers, heads, kv, inter, vocab, tie, max_pos, theta)
    assert bench.model_key(table["hf_id"]) == key
    cfg = bench.builtin_config(key)  # what the script builds from the table
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.vocab_size) == (
        hidden,
        layers,
        kv,
        vocab,
    )
    assert bench.head_dim(cfg) == hidden // heads
    if key.startswith("llama"):
        assert cfg.rope_parameters["rope_type"] == "llama3"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) == params


def test_shrunken_config_keeps_the_family_and_gqa():
    for key in MODELS:
        full = bench.builtin_config(key)
        small = bench.shrink_config(full)
        assert small.model_type == full.model_type and small.num_hidden_layers == 2 and small.hidden_size == 64
        assert small.num_key_value_heads < small.num_attention_heads  # still grouped-query attention
        assert small.tie_word_embeddings == full.tie_word_embeddings and len(getattr(small, "layer_types", [0, 0])) == 2


def test_models_from_a_resolved_config(tmp_path):
    cfg = {
        "pair": {
            "small": {
                "model": {"path": "Qwen/Qwen2.5-Math-1.5B", "enable_gradient_checkpointing": True},
                "actor": {"ppo_micro_batch_size_per_gpu": 4},
                "log_prob_micro_batch_size_per_gpu": 8,
            },
            "large": {
                "model": {"path": "/models/Qwen2.5-Math-7B", "enable_gradient_checkpointing": False},
                "actor": {"ppo_micro_batch_size_per_gpu": 1},
                "log_prob_micro_batch_size_per_gpu": 2,
            },
        }
    }
    path = tmp_path / "resolved.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    specs = bench.models_from_config(bench.load_pair(str(path), "codistill", []))
    assert specs == [
        bench.ModelSpec("Qwen/Qwen2.5-Math-1.5B", 8, 4, True),
        bench.ModelSpec("/models/Qwen2.5-Math-7B", 2, 1, False),
    ]
    assert [s.key for s in specs] == ["qwen2.5-math-1.5b", "qwen2.5-math-7b"]
    assert bench.spec_for("meta-llama/Llama-3.1-8B-Instruct") == bench.ModelSpec(
        "meta-llama/Llama-3.1-8B-Instruct", 4, 2
    )


def _numbers(row: dict):
    for k, v in row.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "t":
            yield k, v


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "phases_cpu.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), "--repeats", "2", "--train-repeats", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_cpu_run_end_to_end(cpu_run):
    proc, lines = cpu_run
    assert "mean NOTHING for sizing" in proc.stdout
    header = lines[0]
    assert header["shrunken"] is True and header["gpu"].startswith("cpu") and header["torch"]
    assert "NOTHING for sizing" in header["note"]
    assert lines[1]["fp32_matmul_tflops"] > 0
    assert lines[-1]["done"] is True
    models = {r["model"]: r for r in lines if "params" in r}
    assert set(models) == set(MODELS)
    for m in models.values():
        assert m["layers"] == 2 and m["params"] > 0 and m["config_source"].startswith("built-in table")
    rows = [r for r in lines if "phase" in r]
    for key in MODELS:
        assert {r["phase"] for r in rows if r["model"] == key} == set(PHASES), key
    for r in rows:
        assert "peak_extra_gb" not in r, r  # peak memory on CUDA only (max_memory_allocated): none on the CPU
        assert "error" not in r and "skipped" not in r, r
        nums = dict(_numbers(r))
        for k, v in nums.items():
            assert math.isfinite(v) and v > 0, (k, r)
        if r["phase"] in ("logprob_fwd", "train_fwd_bwd_ckpt"):
            assert {"micro_batch", "seq", "s", "tok_per_s"} <= set(nums), r
            assert r["tok_per_s"] == pytest.approx(r["micro_batch"] * r["seq"] / r["s"], rel=2e-3), r
        elif r["phase"] == "decode_linear":
            assert {"batch", "s_eager", "s"} <= set(nums), r
            assert r["s"] == min(r["s_eager"], r.get("s_graph", math.inf))
        else:
            assert {"batch", "ctx", "s_per_layer", "s_all_layers", "kv_cache_gb"} <= set(nums), r
            layers = models[r["model"]]["layers"]
            assert r["s_all_layers"] == pytest.approx(r["s_per_layer"] * layers, rel=2e-3)
            hd = models[r["model"]]["hidden"] // models[r["model"]]["heads"]
            kv_bytes = layers * 2 * r["batch"] * r["ctx"] * models[r["model"]]["kv_heads"] * hd * 4  # fp32
            assert r["kv_cache_gb"] == pytest.approx(kv_bytes / 2**30, rel=1e-3)
    assert {r["seq"] for r in rows if r["phase"] == "logprob_fwd"} == set(bench.SHRUNKEN_PLAN["seqs"])


@pytest.mark.slow
def test_cost_model_reads_the_cpu_file_and_warns(cpu_run, tmp_path):
    """The bench's output is the cost model's input: same field names, and the CPU origin is flagged."""
    _, lines = cpu_run
    path = tmp_path / "cpu.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cm = load_script("cost_model")
    phases = cm.load_phases(path)
    assert phases.shrunken
    cfg = {
        "pair": {
            "name": "qwen2.5-math-1.5b_7b",
            "small": {"model": {"path": "Qwen/Qwen2.5-Math-1.5B"}},
            "large": {"model": {"path": "Qwen/Qwen2.5-Math-7B"}},
        },
        "exp": {"name": "codistill", "generator": "small"},
        "algorithm": {"codistill": {"kd": {"coef": 1.0}, "large": {"enable": True, "train": True}}},
        "data": {"train_batch_size": 4},
        "actor_rollout_ref": {"rollout": {"n": 2}},
        "trainer": {"total_training_steps": 2, "nnodes": 1, "n_gpus_per_node": 1},
    }
    s = cm.apply_run_figures(cm.settings_from_config(cfg), prompt_len=16, resp_len=48, decode_batch=4)
    lines_ = cm.step_cost_detail(phases, s)
    assert len(lines_) == 5 and all(ln.seconds > 0 for ln in lines_)
    assert "WARNING: the phase file comes from a shrunken CPU run" in cm.format_report(phases, s, lines_)
