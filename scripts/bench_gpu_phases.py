#!/usr/bin/env python
"""Per-phase GPU cost of the real model architectures: the input of scripts/cost_model.py.

    python scripts/bench_gpu_phases.py --out phases.jsonl                      # the four built-in models

Examples, phases, fields and the CPU shrunken mode: docs/benchmarks.md, section scripts/bench_gpu_phases.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30

# micro-batches per GPU of configs/pair/*.yaml: (log-prob, train); used with --models
DEFAULT_MICRO = {"qwen2.5-math-1.5b": (8, 4), "qwen2.5-math-7b": (4, 2), "llama-3.2-1b": (8, 4), "llama-3.1-8b": (4, 2)}
# The built-in models' published config.json values (huggingface.co/<hf_id>/blob/main/config.json), one file each
# with its hf_id; parameter counts (checked by tests/test_bench_gpu_phases.py): 1,543,714,304 (tied embeddings),
# 7,615,616,512, 1,235,814,400 (tied), 8,030,261,248.
BUILTIN_CONFIGS = {k: json.loads((REPO / f"scripts/cost_data/configs/{k}.json").read_text()) for k in DEFAULT_MICRO}
FALLBACK_MICRO = (4, 2)
GPU_PLAN = {"seqs": (2048, 4096), "decode_batches": (256, 1024), "ctxs": (2048, 4096), "matmul_n": 8192}
SHRUNKEN_PLAN = {"seqs": (32, 64), "decode_batches": (4,), "ctxs": (32, 64), "matmul_n": 256}
SHRUNKEN_ARCH = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, head_dim=16, vocab_size=1024)
SHRUNKEN_NOTE = (
    "SHRUNKEN CPU run (2 layers, hidden 64, vocab 1024, seq <= 64, fp32): it exercises the code "
    "path only; its figures mean NOTHING for sizing GPU runs"
)


def log(msg: str) -> None:
    print(f"[bench_gpu_phases] {msg}", flush=True)


def model_key(path_or_id: str) -> str:
    """The model name used in phase files: 'Qwen/Qwen2.5-Math-1.5B' -> 'qwen2.5-math-1.5b',
    'meta-llama/Llama-3.2-1B-Instruct' -> 'llama-3.2-1b' (a local folder: its last component)."""
    return str(path_or_id).rstrip("/").split("/")[-1].lower().removesuffix("-instruct")


# ---- what to measure ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    hf_id: str  # HF id or local folder
    logprob_micro: int
    train_micro: int
    grad_ckpt: bool = True

    key = property(lambda self: model_key(self.hf_id))


def spec_for(hf_id: str, logprob_micro: int | None = None, train_micro: int | None = None, grad_ckpt=True) -> ModelSpec:
    """A model to measure; micro-batches default to its pair config's (``DEFAULT_MICRO``)."""
    lp, tr = DEFAULT_MICRO.get(model_key(hf_id), FALLBACK_MICRO)
    return ModelSpec(hf_id, logprob_micro or lp, train_micro or tr, grad_ckpt)


def models_from_config(cfg: Any) -> list[ModelSpec]:
    """Both models (small, large) of a resolved project config (DictConfig): ``pair.<role>.model.path``, the
    micro-batches (``log_prob_micro_batch_size_per_gpu``, ``actor.ppo_micro_batch_size_per_gpu``; missing: the
    ``DEFAULT_MICRO``) and ``model.enable_gradient_checkpointing`` (default on)."""
    from omegaconf import OmegaConf

    out = []
    for role in ("small", "large"):
        get = lambda key, default=None: OmegaConf.select(cfg, f"pair.{role}.{key}", default=default)  # noqa: E731,B023
        if get("model.path") is None:
            raise KeyError(f"the config has no 'pair.{role}.model.path'")
        lp, tr = get("log_prob_micro_batch_size_per_gpu"), get("actor.ppo_micro_batch_size_per_gpu")
        ckpt = bool(get("model.enable_gradient_checkpointing", True))
        out.append(spec_for(str(get("model.path")), lp and int(lp), tr and int(tr), ckpt))
    return out


def load_configs_file(path: str | Path, exp: str) -> Any:
    """A resolved config file (YAML/JSON): one config (it has ``pair``), or a mapping experiment name -> config."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.load(path)
    if not isinstance(data, DictConfig):
        raise ValueError(f"{path} holds no mapping")
    if "pair" in data:
        return data
    if exp not in data:
        raise ValueError(f"{path} has no config for experiment '{exp}' (has: {', '.join(data)})")
    return data[exp]


def compose(pair: str, exp: str, overrides: Sequence[str] = ()) -> Any:
    """The project's resolved config of ``pair`` x ``exp`` (compose_config, imported here only)."""
    sys.path.insert(0, str(REPO))  # this checkout's recipe package, not another installed copy
    try:
        from recipe.codistill_grpo.configuration import compose_config
    except ImportError as e:
        raise SystemExit(
            f"cannot compose the config of pair '{pair}' ({e}); pass a resolved config file instead "
            "(YAML/JSON: cost_model.py --configs FILE, bench_gpu_phases.py --pair FILE)"
        ) from None
    return compose_config(pair, exp, list(overrides))


def load_pair(pair: str, exp: str, overrides: Sequence[str]) -> Any:
    """``--pair``: a resolved config file (``load_configs_file``), else a pair name to ``compose``."""
    return load_configs_file(pair, exp) if Path(pair).is_file() else compose(pair, exp, overrides)


# ---- model configs --------------------------------------------------------------------------------


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to huggingface_hub's endpoint (HF_ENDPOINT), unless it is offline (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    if constants.HF_HUB_OFFLINE or not url.hostname:
        return False
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def builtin_config(key: str):
    """The transformers config of a model of the built-in table."""
    from transformers import AutoConfig

    values = copy.deepcopy(BUILTIN_CONFIGS[key])
    del values["hf_id"]
    return AutoConfig.for_model(values.pop("model_type"), **values)


def load_config(hf_id: str, source: str = "auto") -> tuple[Any, str]:
    """(transformers config, where it came from). source: auto (local/cache, the hub, the table) | hub | builtin."""
    from transformers import AutoConfig

    errors = []
    for where in () if source == "builtin" else ("local/cache", "hub"):
        if where == "hub" and not hub_reachable():
            errors.append("hub: not reachable")
            continue
        try:
            return AutoConfig.from_pretrained(hf_id, local_files_only=where != "hub"), f"from_pretrained ({where})"
        except Exception as e:  # noqa: BLE001 - missing, gated or offline: the next source
            errors.append(
                f"{where}: {type(e).__name__}" + (f": {str(e).splitlines()[0][:120]}" if where == "hub" else "")
            )
    key, why = model_key(hf_id), "; ".join(errors) or "builtin only"
    if source == "hub" or key not in BUILTIN_CONFIGS:
        raise SystemExit(f"bench_gpu_phases: no config for {hf_id} ({why}); built-in: {', '.join(BUILTIN_CONFIGS)}")
    return builtin_config(key), "built-in table" + (f" ({why})" if errors else "")


def shrink_config(cfg):
    """The same architecture family cut down for the CPU: 2 layers, hidden 64, 4 query heads with the
    model's GQA ratio (at least 1 KV head), the model's MLP/hidden ratio, vocabulary 1024."""
    from transformers import AutoConfig

    d = cfg.to_dict()
    ratio = max(1, d["num_attention_heads"] // (d.get("num_key_value_heads") or d["num_attention_heads"]))
    d.update(SHRUNKEN_ARCH, num_key_value_heads=max(1, SHRUNKEN_ARCH["num_attention_heads"] // ratio))
    d["intermediate_size"] = max(8, round(SHRUNKEN_ARCH["hidden_size"] * cfg.intermediate_size / cfg.hidden_size))
    drop = "layer_types max_window_layers transformers_version architectures _name_or_path id2label label2id"
    for k in (drop + " bos_token_id eos_token_id pad_token_id dtype torch_dtype").split():
        d.pop(k, None)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def head_dim(cfg) -> int:
    """Per-head width: ``head_dim`` where the config sets it, else hidden / heads."""
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


# ---- the phases -----------------------------------------------------------------------------------


def _sig(x: float, digits: int = 4) -> float:
    """``digits`` significant digits (small CPU figures must not round to 0)."""
    return float(f"{x:.{digits}g}")


def seconds(fn, calls: int) -> float:
    """Mean seconds per call of ``fn`` over ``calls`` calls after two warm-up calls (torch.utils.benchmark:
    synchronises the accelerator; this process's torch thread count)."""
    import torch
    from torch.utils.benchmark import Timer

    return Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).timeit(calls).mean


def peak_extra_gb(fn, dev, base: int) -> dict:
    """{"peak_extra_gb": GiB allocated at peak during one call of ``fn`` above ``base`` bytes} on CUDA; {} on CPU."""
    import torch

    if dev.type != "cuda":
        return {}
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    return {"peak_extra_gb": _sig((torch.cuda.max_memory_allocated(dev) - base) / GIB)}


def matmul_tflops(dev, n: int, dtype) -> float:
    """TFLOP/s of an n x n x n matmul: 2 n^3 / seconds."""
    import torch

    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    return 2 * n**3 / seconds(lambda: a @ b, 10 if dev.type == "cuda" else 3) / 1e12


def bench_seq(model, dev, vocab: int, micro: int, seq: int, calls: int, weights: int, train: bool, ckpt: bool):
    """``logprob_fwd`` (train False) or ``train_fwd_bwd[_ckpt]`` of ``micro x seq`` random tokens: the next-token
    log-probs (fp32 log-softmax + gather), with grad and the backward of -(logprob x adv).mean() when training."""
    import torch

    ids = torch.randint(0, vocab, (micro, seq), device=dev)
    adv = torch.randn(micro, seq - 1, device=dev)

    def run():
        with torch.set_grad_enabled(train):
            logits = model(input_ids=ids, use_cache=False).logits
            logprob = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        if train:
            (-(logprob * adv).mean()).backward()
            model.zero_grad(set_to_none=True)

    if train and ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train(train)  # HF checkpoints layers only in training mode (dropout is 0 in these configs)
    try:
        s, peak = seconds(run, calls), peak_extra_gb(run, dev, weights)
    finally:
        model.eval()
        model.gradient_checkpointing_disable()
    out = {"micro_batch": micro, "seq": seq} | ({"grad_ckpt": ckpt} if train else {})
    return out | {"s": _sig(s), "tok_per_s": _sig(micro * seq / s, 6)} | peak


def bench_decode_linear(model, dev, vocab: int, batch: int, weights: int, graph: bool) -> dict:
    """One decode step's linear layers: a one-token forward, eager and (CUDA) replayed as a CUDA graph."""
    import torch

    ids = torch.randint(0, vocab, (batch, 1), device=dev)
    run = torch.no_grad()(lambda: model(input_ids=ids, use_cache=False))
    out = {"batch": batch, "s_eager": _sig(seconds(run, 10 if dev.type == "cuda" else 3))}
    out |= peak_extra_gb(run, dev, weights)
    if graph and dev.type == "cuda":
        try:
            side = torch.cuda.Stream()  # warm-up on a side stream, then capture
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph):
                run()
            out["s_graph"] = _sig(seconds(cuda_graph.replay, 50))
        except Exception as e:  # noqa: BLE001 - a model whose forward cannot be captured: eager only
            out["graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            torch.cuda.synchronize(dev)
    return out | {"s": min(out["s_eager"], out.get("s_graph", out["s_eager"]))}


def bench_decode_attn(cfg, dev, batch: int, ctx: int, dtype, weights: int) -> dict:
    """One decode step's attention: SDPA of one-token queries over a ``ctx`` KV cache, for every layer."""
    import torch
    import torch.nn.functional as F

    h, kv, hd, layers = cfg.num_attention_heads, cfg.num_key_value_heads, head_dim(cfg), cfg.num_hidden_layers
    layer_bytes = 2 * batch * ctx * kv * hd * torch.empty((), dtype=dtype).element_size()
    out = {"batch": batch, "ctx": ctx, "kv_cache_gb": _sig(layers * layer_bytes / GIB)}
    if dev.type == "cuda" and layer_bytes * 1.2 > (free := torch.cuda.mem_get_info(dev)[0]):
        return out | {"skipped": f"one layer's KV cache needs {layer_bytes / GIB:.1f} GiB, {free / GIB:.1f} free"}
    q = torch.randn(batch, h, 1, hd, device=dev, dtype=dtype)
    k, v = (torch.randn(batch, kv, ctx, hd, device=dev, dtype=dtype) for _ in range(2))
    attn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731

    def run():  # every layer (the same cache: the layers are identical in cost)
        for _ in range(layers):
            attn()

    s = seconds(run, 5 if dev.type == "cuda" else 2)
    out |= {"s_per_layer": _sig(s / layers), "s_all_layers": _sig(s), "s": _sig(s)}
    return out | peak_extra_gb(attn, dev, weights)


# ---- driver ---------------------------------------------------------------------------------------


def bench_model(spec: ModelSpec, emit, dev, dtype, args) -> None:
    """Build one model (random weights) and emit its parameter line and every phase row (``run``'s ``args``)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg, source = load_config(spec.hf_id, args.config_source)
    cfg = shrink_config(cfg) if args.shrink else cfg
    t0 = time.perf_counter()
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else weights
    arch = {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads}
    arch |= {"kv_heads": cfg.num_key_value_heads, "vocab": cfg.vocab_size}
    init = {"init_s": round(time.perf_counter() - t0, 1), "weights_gb": _sig(weights / GIB)}
    emit({"model": spec.key, "hf_id": spec.hf_id, "config_source": source, "params": params} | init | arch)
    log(f"{spec.key}: {params:,} parameters ({source})")
    vocab, train_phase = cfg.vocab_size, "train_fwd_bwd_ckpt" if spec.grad_ckpt else "train_fwd_bwd"
    seq_phases = [
        ("logprob_fwd", spec.logprob_micro, args.repeats, False),
        (train_phase, spec.train_micro, args.train_repeats, True),
    ]
    jobs = [
        (phase, partial(bench_seq, model, dev, vocab, micro, s, calls, weights, train, train and spec.grad_ckpt))
        for phase, micro, calls, train in seq_phases
        for s in args.seqs
    ]
    for b in args.decode_batches:
        jobs.append(("decode_linear", partial(bench_decode_linear, model, dev, vocab, b, weights, not args.no_graph)))
        jobs += [("decode_attn", partial(bench_decode_attn, cfg, dev, b, c, dtype, weights)) for c in args.ctxs]
    for phase, job in jobs:
        try:
            row = job()
        except torch.cuda.OutOfMemoryError as e:
            row = {"error": f"OutOfMemoryError: {str(e).splitlines()[0][:200]}"}
            model.zero_grad(set_to_none=True)  # a train run stopped before its own zero_grad
        torch.cuda.empty_cache()  # a no-op without CUDA
        emit({"model": spec.key, "phase": phase, **row})
        log(f"{spec.key} {phase}: " + ", ".join(f"{k}={v}" for k, v in row.items()))


def run(specs: Sequence[ModelSpec], args) -> None:
    """Measure every model of ``specs`` as ``args`` say (device, shrink, out, main's plan), writing JSONL as it goes."""
    import torch
    import transformers

    shrunken, out_path = args.shrink, Path(args.out)
    dev, dtype, dname = torch.device(args.device), *((torch.float32, "fp32") if shrunken else (torch.bfloat16, "bf16"))
    torch.manual_seed(0)
    t_start = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w") as fh:

        def emit(obj: dict) -> None:
            fh.write(json.dumps({**obj, "t": round(time.perf_counter() - t_start, 1)}) + "\n")
            fh.flush()

        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(dev)
            gpu, mem = props.name, round(props.total_memory / GIB, 1)
        else:
            gpu, mem = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)", None
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        header = {"gpu": gpu, "mem_gb": mem, **versions, "dtype": dname, "attn": "sdpa", "shrunken": shrunken}
        emit(header | {"host": platform.node()} | ({"note": SHRUNKEN_NOTE} if shrunken else {}))
        tflops = matmul_tflops(dev, args.matmul_n, dtype)
        emit({f"{dname}_matmul_tflops": _sig(tflops, 3), "matmul_n": args.matmul_n})
        log(f"{gpu}: {dname} {args.matmul_n}^3 matmul {tflops:.3g} TFLOP/s")
        for spec in specs:
            bench_model(spec, emit, dev, dtype, args)
            torch.cuda.empty_cache()  # the model freed (a no-op without CUDA)
        emit({"done": True})


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (see the module docstring); with a --pair name, everything after ``--`` goes to compose_config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # standalone: not the project's cli helper
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="After --: hydra overrides (--pair).")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--models", nargs="+", metavar="HF_ID", help="HF ids or local folders (default: built-in)")
    src.add_argument("--pair", metavar="FILE_OR_NAME", help="both models of a pair: resolved config file or pair name")
    ap.add_argument("--exp", default="codistill", help="experiment composed with a --pair name (default codistill)")
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_gpu_phases.jsonl"), help="JSONL to write")
    ap.add_argument("--logprob-micro", type=int, help="log-prob micro-batch for every model (default: per model)")
    ap.add_argument("--train-micro", type=int, help="train micro-batch for every model (default: per model)")
    ap.add_argument("--no-grad-ckpt", action="store_true", help="train without gradient checkpointing (with --models)")
    ints = lambda text: tuple(int(x) for x in text.split(",") if x.strip())  # noqa: E731
    for name in ("seqs", "decode_batches", "ctxs"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=ints, help=f"comma-separated (default {GPU_PLAN[name]})")
    ap.add_argument("--repeats", type=int, default=3, help="timed log-prob calls after the warm-up (mean)")
    ap.add_argument("--train-repeats", type=int, default=2, help="timed train calls after the warm-up (mean)")
    ap.add_argument("--no-graph", action="store_true", help="no CUDA-graphed decode_linear")
    sources = ("auto", "hub", "builtin")
    ap.add_argument("--config-source", choices=sources, default="auto", help="auto: local, hub, table")
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    ap.add_argument("--shrink", action="store_true", help="the shrunken architectures on CUDA too (a quick smoke test)")
    args, overrides = ap.parse_args(argv[:cut]), argv[cut + 1 :]

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.shrink = shrunken = args.shrink or not args.device.startswith("cuda")
    if args.pair:
        specs = models_from_config(load_pair(args.pair, args.exp, overrides))
    else:
        models = args.models or [v["hf_id"] for v in BUILTIN_CONFIGS.values()]
        specs = [spec_for(m, grad_ckpt=not args.no_grad_ckpt) for m in models]
    micro = {"logprob_micro": args.logprob_micro, "train_micro": args.train_micro}
    specs = [replace(s, **{k: v for k, v in micro.items() if v}) for s in specs]
    vars(args).update({k: getattr(args, k, None) or v for k, v in (SHRUNKEN_PLAN if shrunken else GPU_PLAN).items()})
    if shrunken:
        log(f"no CUDA device used: {SHRUNKEN_NOTE}")
    run(specs, args)
    log(f"wrote {args.out}" + (f"\nreminder: {SHRUNKEN_NOTE}" if shrunken else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
