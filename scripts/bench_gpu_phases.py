#!/usr/bin/env python
"""Per-phase GPU cost of the real model architectures: the input of scripts/cost_model.py.

    python scripts/bench_gpu_phases.py --out phases.jsonl                      # the four built-in models
    python scripts/bench_gpu_phases.py --models Qwen/Qwen2.5-Math-1.5B Qwen/Qwen2.5-Math-7B --out q.jsonl
    python scripts/bench_gpu_phases.py --pair qwen2.5-math-1.5b_7b --out q.jsonl   # models + micro-batches of a pair
    python scripts/bench_gpu_phases.py --pair resolved_config.yaml --out q.jsonl   # ... from a resolved config file
    python scripts/cost_model.py --phases q.jsonl --pair qwen2.5-math-1.5b_7b --exp codistill

Needs torch and transformers only (no verl, vLLM or Ray) and no weights: each model is its real
architecture with random weights, bf16, SDPA attention, on one GPU. Per model it measures (field
names as in ``scripts/cost_data/h200_phase_cost.jsonl``, so the figures compare):

- ``logprob_fwd``: forward of ``micro_batch x seq`` random tokens, then fp32 log-softmax + gather
  of the next token (plain torch, no fused kernel), no grad. ``s``: median of ``--repeats`` after
  one warm-up; ``tok_per_s`` = micro_batch x seq / s; ``peak_extra_gb``: peak allocation above the
  weights (GiB).
- ``train_fwd_bwd_ckpt`` (``train_fwd_bwd`` with gradient checkpointing off): the same with grad,
  plus backward of ``-(logprob * adv).mean()``, no optimizer step (median of ``--train-repeats``).
- ``decode_linear``: one forward of ``batch`` one-token sequences without a KV cache (all linear
  layers + lm_head of a decode step): ``s_eager``, ``s_graph`` (the same replayed as a CUDA graph)
  and ``s`` = the faster of the two.
- ``decode_attn``: ``scaled_dot_product_attention`` of ``batch`` one-token queries over a KV cache
  of ``ctx`` tokens (GQA: the model's query and KV heads), timed for ``layers`` calls:
  ``s_all_layers`` (= ``s``), ``s_per_layer``; ``kv_cache_gb`` is the whole cache of all layers
  (arithmetic; one layer's cache is allocated).

A decode step is about ``decode_linear`` + ``decode_attn`` (what vLLM runs, minus sampling and
scheduling). The first line is a header (GPU, memory, torch and transformers versions, 8192^3 bf16
matmul TFLOP/s); each model starts with a line of its parameter count and weight memory; the last
line is ``{"done": true}``. Lines are written as they are measured.

Model configs: ``AutoConfig.from_pretrained`` (a local folder or the HF cache, then the hub when it
is reachable), else the built-in table below (published config.json values of the four models of
``configs/model_pairs/``), so offline nodes work; ``--config-source builtin`` skips the lookups.

Without CUDA the script runs a SHRUNKEN version on the CPU (the same code with each architecture cut
to 2 layers, hidden 64, vocabulary 1024, seq <= 64, fp32; peak memory from the profiler's allocator
events; no CUDA graph) so that it is tested: its figures mean nothing for sizing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse



def model_key(path_or_id: str) -> str:
    """The model name used in phase files: 'Qwen/Qwen2.5-Math-1.5B' -> 'qwen2.5-math-1.5b',
    'meta-llama/Llama-3.2-1B-Instruct' -> 'llama-3.2-1b' (a local folder: its last component)."""
    name = str(path_or_id).rstrip("/").split("/")[-1].lower()
    return name.removesuffix("-instruct")


REPO = Path(__file__).resolve().parents[1]
GIB = 2**30

# Published config.json values (huggingface.co/<hf_id>/blob/main/config.json). Parameter counts of
# these architectures (checked by tests/test_bench_gpu_phases.py): 1,543,714,304 (tied embeddings),
# 7,615,616,512, 1,235,814,400 (tied), 8,030,261,248.
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2.5-math-1.5b": {
        "hf_id": "Qwen/Qwen2.5-Math-1.5B",
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 21,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
    "qwen2.5-math-7b": {
        "hf_id": "Qwen/Qwen2.5-Math-7B",
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
    "llama-3.2-1b": {
        "hf_id": "meta-llama/Llama-3.2-1B-Instruct",
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
    },
    "llama-3.1-8b": {
        "hf_id": "meta-llama/Llama-3.1-8B-Instruct",
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
    },
}
# micro-batches per GPU of configs/model_pairs/*.yaml: (log-prob, train); used with --models
DEFAULT_MICRO = {"qwen2.5-math-1.5b": (8, 4), "qwen2.5-math-7b": (4, 2), "llama-3.2-1b": (8, 4), "llama-3.1-8b": (4, 2)}
FALLBACK_MICRO = (4, 2)

GPU_PLAN = {"seqs": (2048, 4096), "decode_batches": (256, 1024), "ctxs": (2048, 4096), "matmul_n": 8192}
SHRUNKEN_PLAN = {"seqs": (32, 64), "decode_batches": (4,), "ctxs": (32, 64), "matmul_n": 256}
SHRUNKEN_ARCH = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "head_dim": 16,
    "vocab_size": 1024,
}
SHRUNKEN_NOTE = (
    "SHRUNKEN CPU run (2 layers, hidden 64, vocab 1024, seq <= 64, fp32): it exercises the code "
    "path only; its figures mean NOTHING for sizing GPU runs"
)


def log(msg: str) -> None:
    print(f"[bench_gpu_phases] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# what to measure


@dataclass(frozen=True)
class ModelSpec:
    hf_id: str  # HF id or local folder
    logprob_micro: int
    train_micro: int
    grad_ckpt: bool = True

    @property
    def key(self) -> str:
        return model_key(self.hf_id)


def spec_for(
    hf_id: str, logprob_micro: int | None = None, train_micro: int | None = None, grad_ckpt: bool = True
) -> ModelSpec:
    lp, tr = DEFAULT_MICRO.get(model_key(hf_id), FALLBACK_MICRO)
    return ModelSpec(hf_id, logprob_micro or lp, train_micro or tr, grad_ckpt)


def _select(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except Exception:
            return default
    return default if node is None else node


def models_from_config(cfg: Any) -> list[ModelSpec]:
    """Both models of a resolved project config (DictConfig or nested dicts): path, micro-batches
    (``pair.<role>.log_prob_micro_batch_size_per_gpu``, ``pair.<role>.actor.ppo_micro_batch_size_per_gpu``)
    and ``pair.<role>.model.enable_gradient_checkpointing``."""
    out = []
    for role in ("small", "large"):
        path = _select(cfg, f"pair.{role}.model.path")
        if path is None:
            raise KeyError(f"the config has no 'pair.{role}.model.path'")
        lp = _select(cfg, f"pair.{role}.log_prob_micro_batch_size_per_gpu")
        tr = _select(cfg, f"pair.{role}.actor.ppo_micro_batch_size_per_gpu")
        ckpt = bool(_select(cfg, f"pair.{role}.model.enable_gradient_checkpointing", True))
        out.append(spec_for(str(path), None if lp is None else int(lp), None if tr is None else int(tr), ckpt))
    return out


def load_pair(pair: str, exp: str, overrides: Sequence[str]) -> Any:
    """``--pair``: a resolved config file (YAML/JSON), or a pair name composed by the project's config module."""
    if Path(pair).is_file():
        from omegaconf import OmegaConf

        return OmegaConf.load(pair)
    sys.path.insert(0, str(REPO))  # this checkout's recipe package, not another installed copy
    try:
        from recipe.codistill_grpo.configuration import compose_config
    except ImportError as e:
        raise SystemExit(
            f"bench_gpu_phases: cannot compose pair '{pair}' ({e}); pass a resolved config file "
            f"to --pair or the models to --models"
        ) from None
    return compose_config(pair, exp, list(overrides))


# ---------------------------------------------------------------------------------------------
# model configs


_HUB_REACHABLE: bool | None = None


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub (HF_ENDPOINT's host), unless HF_HUB_OFFLINE is set."""
    global _HUB_REACHABLE
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    if _HUB_REACHABLE is None:
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            _HUB_REACHABLE = True
        except OSError:
            _HUB_REACHABLE = False
    return _HUB_REACHABLE


def builtin_config(key: str):
    from transformers import AutoConfig

    values = {k: copy.deepcopy(v) for k, v in BUILTIN_CONFIGS[key].items() if k != "hf_id"}
    return AutoConfig.for_model(values.pop("model_type"), **values)


def load_config(hf_id: str, source: str = "auto") -> tuple[Any, str]:
    """(transformers config, where it came from). source: auto | hub | builtin."""
    from transformers import AutoConfig

    errors = []
    if source in ("auto", "hub"):
        try:
            return AutoConfig.from_pretrained(hf_id, local_files_only=True), "from_pretrained (local/cache)"
        except Exception as e:  # noqa: BLE001 - any failure falls through to the next source
            errors.append(f"local: {type(e).__name__}")
        if hub_reachable():
            try:
                return AutoConfig.from_pretrained(hf_id), "from_pretrained (hub)"
            except Exception as e:  # noqa: BLE001 - gated or missing repo
                errors.append(f"hub: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        else:
            errors.append("hub: not reachable")
        if source == "hub":
            raise SystemExit(f"bench_gpu_phases: no config for {hf_id} ({'; '.join(errors)})")
    key = model_key(hf_id)
    if key not in BUILTIN_CONFIGS:
        raise SystemExit(
            f"bench_gpu_phases: no config for {hf_id} ({'; '.join(errors) or 'builtin only'}) and "
            f"'{key}' is not in the built-in table ({', '.join(BUILTIN_CONFIGS)})"
        )
    return builtin_config(key), "built-in table" + (f" ({'; '.join(errors)})" if errors else "")


def shrink_config(cfg):
    """The same architecture family cut down for the CPU: 2 layers, hidden 64, 4 query heads with the
    model's GQA ratio (at least 1 KV head), the model's MLP/hidden ratio, vocabulary 1024."""
    from transformers import AutoConfig

    d = cfg.to_dict()
    heads = d["num_attention_heads"]
    ratio = max(1, heads // (d.get("num_key_value_heads") or heads))
    d.update(SHRUNKEN_ARCH)
    d["num_key_value_heads"] = max(1, SHRUNKEN_ARCH["num_attention_heads"] // ratio)
    d["intermediate_size"] = max(8, round(SHRUNKEN_ARCH["hidden_size"] * cfg.intermediate_size / cfg.hidden_size))
    for k in (
        "layer_types",
        "max_window_layers",
        "transformers_version",
        "architectures",
        "_name_or_path",
        "id2label",
        "label2id",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "dtype",
        "torch_dtype",
    ):
        d.pop(k, None)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def head_dim(cfg) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


# ---------------------------------------------------------------------------------------------
# timing and memory


@contextlib.contextmanager
def _stderr_silenced():
    """fd 2 to /dev/null: torch's profiler prints two 'USDT: profiler_start/stop' lines per use."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _sig(x: float, digits: int = 4) -> float:
    """``digits`` significant digits (small CPU figures must not round to 0)."""
    return float(f"{x:.{digits}g}")


class Device:
    """Synchronisation, timing and peak memory for CUDA (max_memory_allocated) or CPU (profiler)."""

    def __init__(self, name: str):
        import torch

        self.torch = torch
        self.dev = torch.device(name)
        self.cuda = self.dev.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.dev)

    def allocated(self) -> int:
        return self.torch.cuda.memory_allocated(self.dev) if self.cuda else 0

    def time(self, fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            out.append(time.perf_counter() - t0)
        return out

    def peak_extra(self, fn: Callable[[], Any], base: int) -> float:
        """GiB allocated at peak during one run of ``fn`` above ``base`` bytes (the weights)."""
        torch = self.torch
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.dev)
            fn()
            self.sync()
            return (torch.cuda.max_memory_allocated(self.dev) - base) / GIB
        # CPU: the allocator's own allocation/free events (same method as scripts/bench_algos.py)
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.typed[0] == _EventType.Allocation:
                events.append((node.start_time_ns, node.typed[1].alloc_size))
        live = peak = 0
        for _, size in sorted(events):
            live += size
            peak = max(peak, live)
        return peak / GIB

    def empty_cache(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def matmul_tflops(dev: Device, n: int, dtype) -> float:
    torch = dev.torch
    a = torch.randn(n, n, device=dev.dev, dtype=dtype)
    b = torch.randn(n, n, device=dev.dev, dtype=dtype)
    reps = 10 if dev.cuda else 3
    times = dev.time(lambda: [a @ b for _ in range(reps)], repeats=3, warmup=1)
    return 2 * n**3 * reps / statistics.median(times) / 1e12


# ---------------------------------------------------------------------------------------------
# the phases


def _next_token_logprob(model, ids):
    import torch

    logits = model(input_ids=ids, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def bench_logprob(dev: Device, model, vocab: int, micro: int, seq: int, repeats: int, weights: int) -> dict:
    torch = dev.torch
    ids = torch.randint(0, vocab, (micro, seq), device=dev.dev)
    model.eval()

    def run():
        with torch.no_grad():
            _next_token_logprob(model, ids)

    s = statistics.median(dev.time(run, repeats))
    peak = dev.peak_extra(run, weights)
    return {
        "micro_batch": micro,
        "seq": seq,
        "s": _sig(s),
        "tok_per_s": _sig(micro * seq / s, 6),
        "peak_extra_gb": _sig(peak),
    }


def bench_train(
    dev: Device, model, vocab: int, micro: int, seq: int, repeats: int, weights: int, grad_ckpt: bool
) -> dict:
    torch = dev.torch
    ids = torch.randint(0, vocab, (micro, seq), device=dev.dev)
    adv = torch.randn(micro, seq - 1, device=dev.dev)
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()  # HF checkpoints layers only in training mode (dropout is 0 in these configs)

    def run():
        loss = -(_next_token_logprob(model, ids) * adv).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    try:
        s = statistics.median(dev.time(run, repeats))
        peak = dev.peak_extra(run, weights)
    finally:
        model.eval()
        model.gradient_checkpointing_disable()
    return {
        "micro_batch": micro,
        "seq": seq,
        "grad_ckpt": grad_ckpt,
        "s": _sig(s),
        "tok_per_s": _sig(micro * seq / s, 6),
        "peak_extra_gb": _sig(peak),
    }


def bench_decode_linear(dev: Device, model, vocab: int, batch: int, weights: int, graph: bool) -> dict:
    torch = dev.torch
    ids = torch.randint(0, vocab, (batch, 1), device=dev.dev)
    model.eval()

    def run():
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)

    s_eager = statistics.median(dev.time(run, repeats=10 if dev.cuda else 3, warmup=2))
    out = {"batch": batch, "s_eager": _sig(s_eager)}
    out["peak_extra_gb"] = _sig(dev.peak_extra(run, weights))
    if graph and dev.cuda:
        try:
            out["s_graph"] = _sig(_graph_time(dev, model, ids))
        except Exception as e:  # noqa: BLE001 - a model whose forward cannot be captured: eager only
            out["graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            dev.sync()
    out["s"] = min(v for k, v in out.items() if k in ("s_eager", "s_graph"))
    return out


def _graph_time(dev: Device, model, ids, replays: int = 10) -> float:
    """Seconds per replay of the one-token forward captured as a CUDA graph (median of 5 x ``replays``)."""
    torch = dev.torch
    static = ids.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            model(input_ids=static, use_cache=False)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(g):
        model(input_ids=static, use_cache=False)
    times = dev.time(lambda: [g.replay() for _ in range(replays)], repeats=5, warmup=1)
    del g
    return statistics.median(times) / replays


def bench_decode_attn(dev: Device, cfg, batch: int, ctx: int, dtype, weights: int) -> dict:
    torch = dev.torch
    import torch.nn.functional as F

    h, kv, hd, layers = cfg.num_attention_heads, cfg.num_key_value_heads, head_dim(cfg), cfg.num_hidden_layers
    elt = torch.empty((), dtype=dtype).element_size()
    layer_bytes = 2 * batch * ctx * kv * hd * elt
    out = {"batch": batch, "ctx": ctx, "kv_cache_gb": _sig(layers * layer_bytes / GIB)}
    if dev.cuda:
        free, _ = torch.cuda.mem_get_info(dev.dev)
        if layer_bytes * 1.2 > free:
            return {**out, "skipped": f"one layer's KV cache needs {layer_bytes / GIB:.1f} GiB, {free / GIB:.1f} free"}
    q = torch.randn(batch, h, 1, hd, device=dev.dev, dtype=dtype)
    k = torch.randn(batch, kv, ctx, hd, device=dev.dev, dtype=dtype)
    v = torch.randn(batch, kv, ctx, hd, device=dev.dev, dtype=dtype)

    def attn():
        try:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        except TypeError:  # torch < 2.5: expand the KV heads
            rep = h // kv
            return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))

    def run():  # one decode step's attention: every layer (same cache, as the layers are identical in cost)
        for _ in range(layers):
            attn()

    s = statistics.median(dev.time(run, repeats=5 if dev.cuda else 2, warmup=1))
    # above the weights: one layer's KV cache, the queries and what the call allocates
    if dev.cuda:
        peak = dev.peak_extra(attn, weights)
    else:
        peak = (layer_bytes + q.numel() * elt) / GIB + dev.peak_extra(attn, 0)
    out.update({"s_per_layer": _sig(s / layers), "s_all_layers": _sig(s), "s": _sig(s), "peak_extra_gb": _sig(peak)})
    return out


# ---------------------------------------------------------------------------------------------
# driver


def run(
    specs: Sequence[ModelSpec],
    out_path: Path,
    *,
    device: str,
    shrunken: bool,
    seqs: Sequence[int],
    decode_batches: Sequence[int],
    ctxs: Sequence[int],
    repeats: int,
    train_repeats: int,
    graph: bool,
    config_source: str,
    matmul_n: int,
) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    dev = Device(device)
    dtype = torch.float32 if shrunken else torch.bfloat16
    torch.manual_seed(0)
    t_start = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fh = out_path.open("w")

    def emit(obj: dict) -> None:
        obj = {**obj, "t": round(time.perf_counter() - t_start, 1)}
        fh.write(json.dumps(obj) + "\n")
        fh.flush()

    if dev.cuda:
        props = torch.cuda.get_device_properties(dev.dev)
        gpu, mem = props.name, round(props.total_memory / GIB, 1)
    else:
        gpu, mem = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)", None
    dname = str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32")
    header = {
        "gpu": gpu,
        "mem_gb": mem,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": dname,
        "attn": "sdpa",
        "shrunken": shrunken,
        "host": platform.node(),
    }
    if shrunken:
        header["note"] = SHRUNKEN_NOTE
    emit(header)
    tflops = matmul_tflops(dev, matmul_n, dtype)
    emit({f"{dname}_matmul_tflops": _sig(tflops, 3), "matmul_n": matmul_n})
    log(f"{gpu}: {dname} {matmul_n}^3 matmul {tflops:.3g} TFLOP/s")

    for spec in specs:
        cfg, source = load_config(spec.hf_id, config_source)
        if shrunken:
            cfg = shrink_config(cfg)
        key = spec.key
        t0 = time.perf_counter()
        with torch.device(dev.dev):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
        model.eval()
        dev.sync()
        params = sum(p.numel() for p in model.parameters())
        weights = dev.allocated() if dev.cuda else sum(p.numel() * p.element_size() for p in model.parameters())
        emit(
            {
                "model": key,
                "hf_id": spec.hf_id,
                "config_source": source,
                "params": params,
                "init_s": round(time.perf_counter() - t0, 1),
                "weights_gb": _sig(weights / GIB),
                "layers": cfg.num_hidden_layers,
                "hidden": cfg.hidden_size,
                "heads": cfg.num_attention_heads,
                "kv_heads": cfg.num_key_value_heads,
                "vocab": cfg.vocab_size,
            }
        )
        log(f"{key}: {params:,} parameters ({source})")
        vocab = cfg.vocab_size
        train_phase = "train_fwd_bwd_ckpt" if spec.grad_ckpt else "train_fwd_bwd"
        jobs: list[tuple[str, Callable[[], dict]]] = []
        for seq in seqs:
            jobs.append(
                (
                    "logprob_fwd",
                    lambda seq=seq: bench_logprob(dev, model, vocab, spec.logprob_micro, seq, repeats, weights),
                )
            )
        for seq in seqs:
            jobs.append(
                (
                    train_phase,
                    lambda seq=seq: bench_train(
                        dev, model, vocab, spec.train_micro, seq, train_repeats, weights, spec.grad_ckpt
                    ),
                )
            )
        for b in decode_batches:
            jobs.append(("decode_linear", lambda b=b: bench_decode_linear(dev, model, vocab, b, weights, graph)))
            for c in ctxs:
                jobs.append(("decode_attn", lambda b=b, c=c: bench_decode_attn(dev, cfg, b, c, dtype, weights)))
        for phase, job in jobs:
            try:
                row = job()
            except torch.cuda.OutOfMemoryError as e:
                row = {"error": f"OutOfMemoryError: {str(e).splitlines()[0][:200]}"}
                model.zero_grad(set_to_none=True)  # a train run stopped before its own zero_grad
            dev.empty_cache()
            emit({"model": key, "phase": phase, **row})
            log(f"{key} {phase}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
        del jobs, model  # the job closures hold the model: free both before the next model is built
        dev.empty_cache()
    emit({"done": True})
    fh.close()


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Everything after -- goes to compose_config (with a pair name)."
    )
    src = ap.add_mutually_exclusive_group()
    src.add_argument(
        "--models",
        nargs="+",
        metavar="HF_ID",
        help=f"HF ids or local folders (default: the four built-in: {', '.join(BUILTIN_CONFIGS)})",
    )
    src.add_argument(
        "--pair",
        metavar="FILE_OR_NAME",
        help="both models of a pair with its micro-batches: a resolved config file (YAML/JSON) or a "
        "pair name for recipe.codistill_grpo.configuration.compose_config",
    )
    ap.add_argument("--exp", default="codistill", help="experiment composed with a --pair name (default codistill)")
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_gpu_phases.jsonl"), help="JSONL to write")
    ap.add_argument("--logprob-micro", type=int, help="log-prob micro-batch for every model (default: per model)")
    ap.add_argument("--train-micro", type=int, help="train micro-batch for every model (default: per model)")
    ap.add_argument("--no-grad-ckpt", action="store_true", help="train without gradient checkpointing (with --models)")
    ap.add_argument("--seqs", type=_ints, help=f"log-prob/train sequence lengths (default {GPU_PLAN['seqs']})")
    ap.add_argument("--decode-batches", type=_ints, help=f"decode batch sizes (default {GPU_PLAN['decode_batches']})")
    ap.add_argument("--ctxs", type=_ints, help=f"decode KV-cache lengths (default {GPU_PLAN['ctxs']})")
    ap.add_argument("--repeats", type=int, default=3, help="timed log-prob runs after one warm-up (median)")
    ap.add_argument("--train-repeats", type=int, default=2, help="timed train runs after one warm-up (median)")
    ap.add_argument("--no-graph", action="store_true", help="no CUDA-graphed decode_linear")
    ap.add_argument(
        "--config-source",
        choices=("auto", "hub", "builtin"),
        default="auto",
        help="auto: local/cache, then the hub if reachable, then the built-in table",
    )
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    ap.add_argument("--shrink", action="store_true", help="the shrunken architectures on CUDA too (a quick smoke test)")
    args = ap.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shrunken = args.shrink or not device.startswith("cuda")
    if args.pair:
        specs = models_from_config(load_pair(args.pair, args.exp, overrides))
    else:
        specs = [
            spec_for(m, grad_ckpt=not args.no_grad_ckpt)
            for m in (args.models or [v["hf_id"] for v in BUILTIN_CONFIGS.values()])
        ]
    specs = [
        ModelSpec(s.hf_id, args.logprob_micro or s.logprob_micro, args.train_micro or s.train_micro, s.grad_ckpt)
        for s in specs
    ]
    plan = SHRUNKEN_PLAN if shrunken else GPU_PLAN
    if shrunken:
        log(f"no CUDA device used: {SHRUNKEN_NOTE}")
    out = Path(args.out)
    run(
        specs,
        out,
        device=device,
        shrunken=shrunken,
        seqs=args.seqs or plan["seqs"],
        decode_batches=args.decode_batches or plan["decode_batches"],
        ctxs=args.ctxs or plan["ctxs"],
        repeats=args.repeats,
        train_repeats=args.train_repeats,
        graph=not args.no_graph,
        config_source=args.config_source,
        matmul_n=plan["matmul_n"],
    )
    log(f"wrote {out}")
    if shrunken:
        log(f"reminder: {SHRUNKEN_NOTE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
