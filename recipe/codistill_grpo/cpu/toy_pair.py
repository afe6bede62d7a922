"""A learnable toy math task and a small/large model pair warmed up on it (CPU, offline).

The tiny pair (``tiny_pair.py``) is random: it never answers right, so a CPU run with the real
0/1 math reward sees no signal. This module builds what a CPU run needs to show learning:

* a deterministic arithmetic task with graded difficulty (``TOY_LEVELS``), one integer answer
  per question, scored by the project's reward (``verl_ext.reward.math_reward.compute_score``),
  written as verl RLHFDataset parquet (``data/train.parquet``, ``data/test.parquet``; no
  question in both);
* one tokenizer (``tiny_pair.build_tokenizer(split_digits=True)``, a ``Qwen2Tokenizer`` whose
  merges were trained under Qwen's own splitting: digits are single tokens), saved and *reloaded* with ``AutoTokenizer.from_pretrained`` before anything uses it,
  so training, evaluation and verl all tokenize the same way;
* two Qwen2-architecture models (``TOY_MODELS``: small and large, different widths and padded
  vocab sizes) warmed up by a short supervised pass (AdamW, loss on response tokens only,
  fixed seeds, one CPU thread) to a real competence gap: the small model answers a minority of
  the test questions, the large one most of them (greedy).

Everything is cached under ``out_dir``: data and tokenizer by the hash of their settings (and of
the tokenizer's files), each model by its own key (its settings + the data and tokenizer keys),
so a second call with the same settings returns at once and a caller that asks only for the
small model never trains the large one. Layout::

    out_dir/build.json                  settings, keys, per-model train time and accuracy
    out_dir/data/{train,test}.parquet   rows like tiny_pair.tiny_math_rows, extra_info.difficulty
    out_dir/tokenizer/                  the shared tokenizer as saved
    out_dir/models/{small,large}/       HF model + tokenizer + toy_build.json (the model's key)

    python -m recipe.codistill_grpo.cpu.toy_pair --out DIR [--models small,large]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from recipe.codistill_grpo.cpu.tiny_pair import INSTRUCTION, build_tokenizer

FORMAT_VERSION = 1
DATA_SOURCE = "toy_arith"
MAX_RESPONSE_TOKENS = 24

# difficulty -> what its questions look like (operands drawn from the ranges, + and - each)
TOY_LEVELS = {
    1: "a op b, a and b in 0..9",
    2: "a op b, one operand in 10..99 and the other in 0..9",
    3: "a op b, a and b in 10..99",
    4: "a op b op c, a, b and c in 0..9",
}

DATA_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "levels": [1, 2, 3, 4],
    "n_test_per_level": 64,  # 256 test questions
    "n_train_per_level": 1024,  # level 1 has only 200 questions: 136 left for train
    "echo": False,  # True: the warm-up response repeats the question first (slower to learn, longer responses)
    "instruction": False,  # the warm-up teaches the boxed format; without the instruction steps are ~30% cheaper
}

# per model: architecture (Qwen2) and warm-up. ``pad_multiple`` pads the embedding rows, so the
# pair differs in config.vocab_size like Qwen2.5-Math-1.5B/7B do.
TOY_MODELS: dict[str, dict[str, Any]] = {
    "small": {
        "hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2, "pad_multiple": 8,
        "steps": 600, "batch_size": 64, "lr": 3e-3, "warmup": 30, "weight_decay": 0.0, "init_std": 0.08, "seed": 1,
    },
    "large": {
        "hidden": 128, "intermediate": 256, "layers": 4, "heads": 4, "kv_heads": 2, "pad_multiple": 256,
        "steps": 800, "batch_size": 64, "lr": 2e-3, "warmup": 60, "weight_decay": 0.0, "init_std": 0.06, "seed": 2,
    },
}
TRAIN_THREADS = 1  # tiny matmuls: one thread is fastest (measured), and a fixed count keeps the weights
# independent of how many cores the machine has

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"[toy_pair] {msg}", flush=True)


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the task


Problem = tuple  # (a, op, b) or (a, op, b, op2, c)


def problem_text(p: Problem) -> str:
    """``"53 + 12"``, ``"5 - 7 + 3"``."""
    return " ".join(str(x) for x in p)


def problem_answer(p: Problem) -> int:
    value = p[0]
    for op, x in zip(p[1::2], p[2::2]):
        value = value + x if op == "+" else value - x
    return value


def question(p: Problem, instruction: bool = False) -> str:
    """``"What is 53 + 12?"`` (and the recipe's boxed-answer instruction when asked: 15 tokens more)."""
    return f"What is {problem_text(p)}?" + (f" {INSTRUCTION}" if instruction else "")


def response(p: Problem, echo: bool = False) -> str:
    """The warm-up target (followed by EOS): ``\\boxed{65}`` (``53 + 12 = \\boxed{65}`` with ``echo``)."""
    answer = f"\\boxed{{{problem_answer(p)}}}"
    return f"{problem_text(p)} = {answer}" if echo else answer


def level_problems(level: int) -> list[Problem]:
    """Every question of a difficulty level, in a fixed order."""
    ops = ("+", "-")
    one, two = range(10), range(10, 100)
    if level == 1:
        return [(a, op, b) for a in one for op in ops for b in one]
    if level == 2:
        return [(a, op, b) for a in two for op in ops for b in one] + [(a, op, b) for a in one for op in ops for b in two]
    if level == 3:
        return [(a, op, b) for a in two for op in ops for b in two]
    if level == 4:
        return [(a, o1, b, o2, c) for a in one for o1 in ops for b in one for o2 in ops for c in one]
    raise ValueError(f"toy_pair: unknown difficulty level {level} (known: {sorted(TOY_LEVELS)})")


def toy_split(settings: dict[str, Any] | None = None) -> dict[str, list[tuple[int, Problem]]]:
    """``{"train": [(level, problem)], "test": [...]}``: per level a seeded shuffle, the first
    ``n_test_per_level`` to test and the next ``n_train_per_level`` (or what is left) to train;
    each split then shuffled. Disjoint by construction."""
    s = {**DATA_DEFAULTS, **(settings or {})}
    rng = random.Random(s["seed"])
    splits: dict[str, list[tuple[int, Problem]]] = {"train": [], "test": []}
    for level in s["levels"]:
        problems = level_problems(level)
        rng.shuffle(problems)
        n_test = s["n_test_per_level"]
        if n_test >= len(problems):
            raise ValueError(f"toy_pair: level {level} has {len(problems)} questions, cannot hold out {n_test}")
        splits["test"] += [(level, p) for p in problems[:n_test]]
        splits["train"] += [(level, p) for p in problems[n_test : n_test + s["n_train_per_level"]]]
    for split in ("train", "test"):
        rng.shuffle(splits[split])
    return splits


def toy_rows(
    items: Sequence[tuple[int, Problem]], split: str, instruction: bool = False, echo: bool = False,
    data_source: str = DATA_SOURCE,
) -> list[dict]:
    """verl RLHFDataset rows (the layout of ``tiny_pair.tiny_math_rows``) with ``extra_info.difficulty``."""
    return [
        {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": question(p, instruction)}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(problem_answer(p))},
            "extra_info": {"split": split, "index": i, "difficulty": int(level), "expression": problem_text(p),
                           "response": response(p, echo)},
        }
        for i, (level, p) in enumerate(items)
    ]


# ----------------------------------------------------------------------------- caching helpers


@contextlib.contextmanager
def _locked(out: Path):
    """One builder per ``out_dir`` at a time (pytest workers, parallel CLI calls)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _files_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- data + tokenizer


def _build_data(out: Path, settings: dict[str, Any], log: Log) -> dict[str, Any]:
    import pandas as pd

    key = _key({"version": FORMAT_VERSION, "data": settings})
    folder = out / "data"
    meta = _read_json(folder / "meta.json")
    if meta and meta.get("key") == key and all((folder / f"{s}.parquet").exists() for s in ("train", "test")):
        return meta
    splits = toy_split(settings)
    tmp = _fresh_tmp(folder)
    counts = {}
    for split, items in splits.items():
        pd.DataFrame(toy_rows(items, split, settings["instruction"], settings["echo"])).to_parquet(tmp / f"{split}.parquet")
        counts[split] = {str(lv): sum(1 for level, _ in items if level == lv) for lv in settings["levels"]}
    meta = {"key": key, "settings": settings, "rows": {s: len(v) for s, v in splits.items()}, "per_level": counts}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    _replace_dir(tmp, folder)
    log(f"data: {meta['rows']['train']} train / {meta['rows']['test']} test questions -> {folder}")
    return meta


def load_tokenizer(folder: str | os.PathLike):
    """The tokenizer exactly as verl loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _build_tokenizer(out: Path, log: Log) -> dict[str, Any]:
    """Save ``tiny_pair.build_tokenizer(split_digits=True)`` to ``out/tokenizer`` (replaced only when its files change)."""
    folder = out / "tokenizer"
    tmp = _fresh_tmp(folder)
    build_tokenizer(split_digits=True).save_pretrained(tmp)
    key = _files_hash(tmp)
    meta = _read_json(folder / "toy_tokenizer.json") if folder.exists() else None
    if meta and meta.get("key") == key:
        shutil.rmtree(tmp)
        return meta
    meta = {"key": key}
    (tmp / "toy_tokenizer.json").write_text(json.dumps(meta))
    _replace_dir(tmp, folder)
    log(f"tokenizer -> {folder}")
    return meta


def check_tokenizer(tokenizer) -> None:
    """What verl and the recipe need from the shared tokenizer."""
    problems = []
    if tokenizer.eos_token != "<|im_end|>" or tokenizer.pad_token != "<|endoftext|>":
        problems.append(f"eos/pad are {tokenizer.eos_token!r}/{tokenizer.pad_token!r}")
    if len(tokenizer.encode("\n", add_special_tokens=False)) != 1:
        problems.append("'\\n' is not one token")
    if "<|im_start|>" not in (tokenizer.chat_template or ""):
        problems.append("no Qwen-style chat template")
    if problems:
        raise RuntimeError("toy_pair: tokenizer unfit: " + "; ".join(problems))


def same_tokenizer(a, b, texts: Iterable[str]) -> bool:
    """Same class, vocab, special tokens, chat template and ids on ``texts``."""
    if type(a) is not type(b) or a.get_vocab() != b.get_vocab() or a.chat_template != b.chat_template:
        return False
    if (a.eos_token, a.pad_token, a.bos_token) != (b.eos_token, b.pad_token, b.bos_token):
        return False
    return all(a(t, add_special_tokens=False)["input_ids"] == b(t, add_special_tokens=False)["input_ids"] for t in texts)


# ----------------------------------------------------------------------------- models


def encode_examples(tokenizer, frame) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + EOS) per row: the prompt rendered with the chat template and
    tokenized as verl and ``scripts/evaluate.py`` do, the response as the model would emit it."""
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    out = []
    for messages, extra in zip(frame["prompt"], frame["extra_info"]):
        text = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        resp = tokenizer(extra["response"], add_special_tokens=False)["input_ids"] + [eos]
        out.append((prompt, resp))
    return out


def _new_model(spec: dict[str, Any], tokenizer):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    pad = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)
    multiple = spec["pad_multiple"]
    config = Qwen2Config(
        vocab_size=(len(tokenizer) + multiple - 1) // multiple * multiple,
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        max_position_embeddings=512,
        initializer_range=spec["init_std"],
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=pad,
        torch_dtype="float32",
    )
    torch.manual_seed(spec["seed"])
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    return model


def _batch(examples: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 except response tokens)."""
    import torch

    length = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for i, (p, r) in enumerate(examples):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(r)
    return ids, mask, labels


def train_model(spec: dict[str, Any], tokenizer, examples, name: str = "model", log: Log = _log,
                callback: Callable[[int, Any], None] | None = None):
    """Warm-up: AdamW on response tokens only, linear warm-up then cosine decay to 10%, epochs
    of seeded permutations. Deterministic for fixed ``spec`` (one thread, seeded init and order)."""
    import torch

    model = _new_model(spec, tokenizer)
    model.train()
    pad = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"], betas=(0.9, 0.98))
    steps, warmup, bs = spec["steps"], spec["warmup"], spec["batch_size"]

    def lr_at(step: int) -> float:
        if step < warmup:
            return spec["lr"] * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return spec["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    order = torch.Generator().manual_seed(spec["seed"])
    queue: list[int] = []
    every = max(1, steps // 10)
    start = time.perf_counter()
    running = None
    for step in range(steps):
        while len(queue) < bs:
            queue += torch.randperm(len(examples), generator=order).tolist()
        batch, queue = queue[:bs], queue[bs:]
        ids, mask, labels = _batch([examples[i] for i in batch], pad)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if (step + 1) % every == 0 or step + 1 == steps:
            log(f"{name}: step {step + 1}/{steps} loss {running:.4f} lr {lr_at(step):.2e} "
                f"{time.perf_counter() - start:.1f}s")
            if callback is not None:
                model.eval()
                callback(step + 1, model)
                model.train()
    model.eval()
    return model


def greedy_accuracy(model, tokenizer, frame, batch_size: int = 64, max_new_tokens: int = MAX_RESPONSE_TOKENS):
    """Greedy answers to ``frame``'s prompts scored by the project's reward: ``(accuracy, per level, responses)``."""
    import torch

    from verl_ext.reward.math_reward import score_batch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts = [tokenizer.apply_chat_template([dict(m) for m in p], add_generation_prompt=True, tokenize=False)
             for p in frame["prompt"]]
    responses: list[str] = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(texts[s : s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, top_p=None, top_k=None,
                                 temperature=None, pad_token_id=tokenizer.pad_token_id)
            responses += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    tokenizer.padding_side = side
    golds = [str(r["ground_truth"]) for r in frame["reward_model"]]
    quiet = logging.getLogger("math_verify")  # graded in this process, math-verify warns that it has no timeout
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        scores = [r["score"] for r in score_batch(responses, golds, num_workers=0)]
    finally:
        quiet.setLevel(level)
    levels = [int(e["difficulty"]) for e in frame["extra_info"]]
    per_level = {
        str(lv): sum(sc for sc, l in zip(scores, levels) if l == lv) / levels.count(lv) for lv in sorted(set(levels))
    }
    return sum(scores) / len(scores), per_level, responses


@contextlib.contextmanager
def _threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the build


def toy_settings(
    seed: int = 0, data: dict[str, Any] | None = None, overrides: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The full settings a build uses: defaults, ``data`` and per-model ``overrides`` applied,
    and ``seed`` added to every seed (data and models)."""
    unknown = set(overrides or {}) - set(TOY_MODELS)
    if unknown:
        raise ValueError(f"toy_pair: no model named {sorted(unknown)} (known: {sorted(TOY_MODELS)})")
    bad = set(data or {}) - set(DATA_DEFAULTS)
    if bad:
        raise ValueError(f"toy_pair: unknown data setting(s) {sorted(bad)} (known: {sorted(DATA_DEFAULTS)})")
    data_s = {**DATA_DEFAULTS, **(data or {})}
    data_s["seed"] += seed
    data_s["levels"] = [int(x) for x in data_s["levels"]]
    models = {}
    for name, spec in TOY_MODELS.items():
        extra = (overrides or {}).get(name, {})
        bad = set(extra) - set(spec)
        if bad:
            raise ValueError(f"toy_pair: unknown setting(s) {sorted(bad)} for {name} (known: {sorted(spec)})")
        models[name] = {**spec, **extra}
        models[name]["seed"] += seed
    return {"version": FORMAT_VERSION, "data": data_s, "models": models, "train_threads": TRAIN_THREADS}


def build_toy_pair(
    out_dir: str | os.PathLike,
    models: Sequence[str] = ("small", "large"),
    seed: int = 0,
    data: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    evaluate: bool = True,
    log: Log | None = _log,
) -> dict[str, Any]:
    """Build (or reuse) the toy data, tokenizer and the named models under ``out_dir``.

    ``overrides`` changes model settings by name (``{"small": {"steps": 20}}``), ``data`` the data
    settings (``DATA_DEFAULTS``). Returns ``{"small": path, "large": path (those asked for),
    "train": parquet, "test": parquet, "tokenizer": folder, "build": build.json,
    "trained": {name: seconds} (models trained by this call; empty when all were cached)}``.
    """
    log = log or (lambda msg: None)
    out = Path(out_dir).resolve()
    models = list(dict.fromkeys(models))
    settings = toy_settings(seed, data, overrides)
    unknown = set(models) - set(settings["models"])
    if unknown:
        raise ValueError(f"toy_pair: no model named {sorted(unknown)} (known: {sorted(TOY_MODELS)})")
    with _locked(out):
        data_meta = _build_data(out, settings["data"], log)
        tok_meta = _build_tokenizer(out, log)
        tokenizer = load_tokenizer(out / "tokenizer")
        check_tokenizer(tokenizer)
        previous = _read_json(out / "build.json") or {}
        entries: dict[str, dict] = {}
        trained: dict[str, float] = {}
        for name, spec in settings["models"].items():
            key = _key({"version": FORMAT_VERSION, "model": spec, "data": data_meta["key"], "tokenizer": tok_meta["key"],
                        "threads": settings["train_threads"]})
            folder = out / "models" / name
            have = _read_json(folder / "toy_build.json")
            if have and have.get("key") == key and (folder / "config.json").exists():
                entries[name] = have
                continue
            if name not in models:
                continue
            entries[name] = _build_model(out, name, spec, key, tokenizer, evaluate, log)
            trained[name] = entries[name]["train_seconds"]
        build = {
            "key": _key(settings),
            "settings": settings,
            "data": data_meta,
            "tokenizer": tok_meta,
            "models": entries,
        }
        if build != previous:
            (out / "build.json").write_text(json.dumps(build, indent=1))
    result: dict[str, Any] = {name: str(out / "models" / name) for name in models}
    result.update(train=str(out / "data" / "train.parquet"), test=str(out / "data" / "test.parquet"),
                  tokenizer=str(out / "tokenizer"), build=str(out / "build.json"), trained=trained)
    return result


def _build_model(out: Path, name: str, spec: dict, key: str, tokenizer, evaluate: bool, log: Log) -> dict:
    import pandas as pd

    folder = out / "models" / name
    train = pd.read_parquet(out / "data" / "train.parquet")
    examples = encode_examples(tokenizer, train)
    log(f"{name}: training {spec['layers']} layers x hidden {spec['hidden']} for {spec['steps']} steps "
        f"of {spec['batch_size']} ({len(examples)} train questions)")
    start = time.perf_counter()
    with _threads(TRAIN_THREADS):
        model = train_model(spec, tokenizer, examples, name=name, log=log)
        seconds = time.perf_counter() - start
        entry: dict[str, Any] = {"key": key, "settings": spec, "train_seconds": round(seconds, 2),
                                 "params": sum(p.numel() for p in model.parameters())}
        if evaluate:
            test = pd.read_parquet(out / "data" / "test.parquet")
            acc, per_level, _ = greedy_accuracy(model, tokenizer, test)
            entry.update(test_accuracy=acc, test_accuracy_per_level=per_level)
            log(f"{name}: greedy test accuracy {acc:.3f} (per level {per_level})")
    tmp = _fresh_tmp(folder)
    model.save_pretrained(tmp)
    for f in (out / "tokenizer").iterdir():  # the very files the training tokenizer was loaded from
        if f.name != "toy_tokenizer.json":
            shutil.copy(f, tmp / f.name)
    reloaded = load_tokenizer(tmp)
    sample = [m["content"] for p in train["prompt"][:64] for m in p] + [e["response"] for e in train["extra_info"][:64]]
    if not same_tokenizer(tokenizer, reloaded, sample):
        raise RuntimeError(f"toy_pair: {name}: the tokenizer saved with the model does not load back as trained")
    (tmp / "toy_build.json").write_text(json.dumps(entry, indent=1))
    _replace_dir(tmp, folder)
    log(f"{name}: {seconds:.1f}s -> {folder}")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (models/, data/, tokenizer/, build.json)")
    parser.add_argument("--models", default="small,large", help="comma-separated: small, large (default both)")
    parser.add_argument("--seed", type=int, default=0, help="added to every data and model seed")
    parser.add_argument("--no-eval", action="store_true", help="skip the greedy test accuracy after training")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    start = time.perf_counter()
    try:
        paths = build_toy_pair(args.out, models=models, seed=args.seed, evaluate=not args.no_eval)
    except ValueError as error:
        print(f"toy_pair: error: {error}", file=sys.stderr)
        return 2
    trained = paths.pop("trained")
    for name, path in paths.items():
        print(f"{name}: {path}")
    if trained:
        done = ", ".join(f"{n} {s:.1f}s" for n, s in trained.items())
        print(f"trained: {done} (total {time.perf_counter() - start:.1f}s)")
    else:
        print("cached: nothing trained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
