"""A toy task with RLVR's structure and a small/large model pair warmed up on it (CPU, offline).

Real RLVR works because the base model can already solve many problems and often does not: RL
and on-policy distillation move probability onto what the model can already produce, and that
move is shared across questions. This toy has exactly that headroom:

* the task: ``What is A + B?`` with A and B of 2, 3 or 4 digits (the level), every aligned digit
  pair ``a_i >= b_i`` with ``a_i + b_i <= 9`` and leading digits ``a_0 > b_0 >= 1``, so neither
  ``A + B`` nor ``A - B`` carries or borrows and each answer digit depends on two aligned digits;
  test operand pairs never occur in training (``toy_split``);
* the response restates the problem, then answers: ``412 + 305 = \boxed{717}``. The wrong
  procedure is an operator slip, ``412 - 305 = \boxed{107}``: one token after the first operand,
  the same decision for every question. A model that executes both procedures well but picks
  ``-`` often has headroom that a policy-level change reaches on every prompt at once;
* the warm-up (AdamW on response tokens) redraws the procedure at every draw of an example,
  correct with probability ``procedure[level]`` (a model setting): the small model's base picks
  the right operator rarely on long questions, the large model's often, so the large model is
  a better but imperfect teacher (``procedure`` of the large model is the teacher's quality,
  a pair setting: ``configs/pair/toy.yaml`` and ``toy_strong.yaml``).

Data (verl RLHFDataset parquet, scored by ``verl_ext.reward.math_reward``), tokenizer
(``tiny_pair.build_tokenizer(split_digits=True)``: digits are single tokens; saved and reloaded
before use) and models (Qwen2, head size 32 so that vLLM's CPU attention supports them) are
cached under ``out_dir`` by the hash of their settings. Warmed-up weights for the settings the
pair YAMLs use ship in ``toy_weights/`` (``SHIPPED``, with the command that rebuilt them and
their sha256): a build whose key is shipped copies them, so the base pair is the same on every
machine; other settings train here (deterministic on one machine, not across CPUs). Layout::

    out_dir/build.json                  settings, keys, per-model source (shipped | trained) and facts
    out_dir/data/{train,test}.parquet   rows like tiny_pair.tiny_math_rows, extra_info.difficulty
    out_dir/tokenizer/                  the shared tokenizer as saved
    out_dir/models/{small,large}/       HF model + tokenizer + toy_build.json (the model's key)

    python -m recipe.codistill_grpo.cpu.toy_pair --out DIR [--models small,large] [--train] [--ship]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from recipe.codistill_grpo.cpu.tiny_pair import INSTRUCTION, build_tokenizer

FORMAT_VERSION = 2
DATA_SOURCE = "toy_arith"
MAX_RESPONSE_TOKENS = 32
SHIPPED = Path(__file__).resolve().parent / "toy_weights"  # <model key>/: weights of shipped builds + SHA256SUMS

# difficulty level -> digits of each operand
TOY_LEVELS = {2: "A + B, two-digit operands", 3: "A + B, three-digit operands", 4: "A + B, four-digit operands"}

DATA_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "levels": [2, 3, 4],
    "n_test_per_level": 64,  # 192 test questions
    "n_train_per_level": 1024,  # level 2 has 480 questions in all: 416 left for train
    "instruction": False,  # the warm-up teaches the boxed format; without the instruction steps are cheaper
}

# per model: architecture (Qwen2, head size 32) and warm-up. ``pad_multiple`` pads the embedding
# rows, so the pair differs in config.vocab_size like Qwen2.5-Math-1.5B/7B do. ``procedure``: the
# probability, per level (in DATA_DEFAULTS["levels"] order), that a warm-up draw shows the correct
# operator; the rest show the operator slip.
TOY_MODELS: dict[str, dict[str, Any]] = {
    "small": {
        "hidden": 64,
        "intermediate": 128,
        "layers": 2,
        "heads": 2,
        "kv_heads": 1,
        "pad_multiple": 8,
        "steps": 600,
        "batch_size": 64,
        "lr": 3e-3,
        "warmup": 30,
        "weight_decay": 0.0,
        "init_std": 0.08,
        "seed": 1,
        "procedure": [0.6, 0.35, 0.2],
    },
    "large": {
        "hidden": 128,
        "intermediate": 256,
        "layers": 4,
        "heads": 4,
        "kv_heads": 2,
        "pad_multiple": 256,
        "steps": 500,
        "batch_size": 64,
        "lr": 2e-3,
        "warmup": 60,
        "weight_decay": 0.0,
        "init_std": 0.06,
        "seed": 2,
        "procedure": [0.85, 0.75, 0.65],
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


Problem = tuple  # (A, B)

# aligned digit pairs (a, b) with a >= b and a + b <= 9: neither a + b carries nor a - b borrows
_INNER = [(a, b) for b in range(10) for a in range(b, 10 - b)]
_LEAD = [(a, b) for a, b in _INNER if a > b >= 1]  # a leading digit of A, B and A - B that is not 0


def problem_text(p: Problem, op: str = "+") -> str:
    """``"412 + 305"`` (``op="-"``: the operator slip ``"412 - 305"``)."""
    return f"{p[0]} {op} {p[1]}"


def problem_answer(p: Problem, op: str = "+") -> int:
    return p[0] + p[1] if op == "+" else p[0] - p[1]


def question(p: Problem, instruction: bool = False) -> str:
    """``"What is 412 + 305?"`` (and the recipe's boxed-answer instruction when asked)."""
    return f"What is {problem_text(p)}?" + (f" {INSTRUCTION}" if instruction else "")


def response(p: Problem, op: str = "+") -> str:
    """A warm-up target (followed by EOS): ``412 + 305 = \\boxed{717}``; ``op="-"`` is the slip
    ``412 - 305 = \\boxed{107}``."""
    return f"{problem_text(p, op)} = \\boxed{{{problem_answer(p, op)}}}"


def level_size(level: int) -> int:
    """How many questions a level has: 16 leading digit pairs x 30 inner pairs per further digit."""
    if level not in TOY_LEVELS:
        raise ValueError(f"toy_pair: unknown difficulty level {level} (known: {sorted(TOY_LEVELS)})")
    return len(_LEAD) * len(_INNER) ** (level - 1)


def level_problem(level: int, i: int) -> Problem:
    """Question ``i`` (``0 <= i < level_size(level)``) of a level: ``i`` read in mixed radix over the digit pairs."""
    pairs = []
    for _ in range(level - 1):
        i, r = divmod(i, len(_INNER))
        pairs.append(_INNER[r])
    pairs.append(_LEAD[i])
    pairs.reverse()
    a = int("".join(str(x) for x, _ in pairs))
    b = int("".join(str(y) for _, y in pairs))
    return a, b


def toy_split(settings: dict[str, Any] | None = None) -> dict[str, list[tuple[int, Problem]]]:
    """``{"train": [(level, problem)], "test": [...]}``: per level a seeded draw without replacement,
    the first ``n_test_per_level`` to test and the next ``n_train_per_level`` (or what is left) to
    train; each split then shuffled. Disjoint by construction (``random.Random``: the same on every machine)."""
    s = {**DATA_DEFAULTS, **(settings or {})}
    rng = random.Random(s["seed"])
    splits: dict[str, list[tuple[int, Problem]]] = {"train": [], "test": []}
    for level in s["levels"]:
        size, n_test = level_size(level), s["n_test_per_level"]
        if n_test >= size:
            raise ValueError(f"toy_pair: level {level} has {size} questions, cannot hold out {n_test}")
        drawn = rng.sample(range(size), min(size, n_test + s["n_train_per_level"]))
        splits["test"] += [(level, level_problem(level, i)) for i in drawn[:n_test]]
        splits["train"] += [(level, level_problem(level, i)) for i in drawn[n_test:]]
    for split in ("train", "test"):
        rng.shuffle(splits[split])
    return splits


def toy_rows(
    items: Sequence[tuple[int, Problem]],
    split: str,
    instruction: bool = False,
    data_source: str = DATA_SOURCE,
) -> list[dict]:
    """verl RLHFDataset rows (the layout of ``tiny_pair.tiny_math_rows``) with ``extra_info``:
    ``difficulty``, ``expression`` and the warm-up's two targets ``response`` (correct) and ``slip``."""
    return [
        {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": question(p, instruction)}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(problem_answer(p))},
            "extra_info": {
                "split": split,
                "index": i,
                "difficulty": int(level),
                "expression": problem_text(p),
                "response": response(p),
                "slip": response(p, "-"),
            },
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
        pd.DataFrame(toy_rows(items, split, settings["instruction"])).to_parquet(tmp / f"{split}.parquet")
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
    """Save ``tiny_pair.build_tokenizer(split_digits=True)`` to ``out/tokenizer`` (replaced only when its files
    change)."""
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
    return all(
        a(t, add_special_tokens=False)["input_ids"] == b(t, add_special_tokens=False)["input_ids"] for t in texts
    )


# ----------------------------------------------------------------------------- models


Example = tuple  # (prompt ids, correct response ids + EOS, slip response ids + EOS, level index)


def encode_examples(tokenizer, frame, levels: Sequence[int]) -> list[Example]:
    """One warm-up example per row: the prompt rendered with the chat template and tokenized as
    verl and ``scripts/evaluate.py`` do, both targets as the model would emit them, and the
    row's position in ``levels`` (which ``procedure`` probability applies)."""
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    out = []
    for messages, extra in zip(frame["prompt"], frame["extra_info"]):
        text = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        right, slip = (tokenizer(extra[k], add_special_tokens=False)["input_ids"] + [eos] for k in ("response", "slip"))
        out.append((prompt, right, slip, list(levels).index(int(extra["difficulty"]))))
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


def train_model(spec: dict[str, Any], tokenizer, examples: Sequence[Example], name: str = "model", log: Log = _log):
    """Warm-up: AdamW on response tokens only, linear warm-up then cosine decay to 10%, epochs of
    seeded permutations; each draw of an example shows the correct procedure with probability
    ``spec["procedure"][level]``, the operator slip otherwise. Deterministic for fixed ``spec``
    on one machine (one thread, seeded init, order and procedure draws)."""
    import torch

    model = _new_model(spec, tokenizer)
    model.train()
    pad = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"], betas=(0.9, 0.98))
    steps, warmup, bs = spec["steps"], spec["warmup"], spec["batch_size"]
    right_rate = torch.tensor([float(x) for x in spec["procedure"]])

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
        batch, queue = [examples[i] for i in queue[:bs]], queue[bs:]
        right = (torch.rand(bs, generator=order) < right_rate[[e[3] for e in batch]]).tolist()
        ids, mask, labels = _batch([(e[0], e[1] if r else e[2]) for e, r in zip(batch, right)], pad)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if (step + 1) % every == 0 or step + 1 == steps:
            log(
                f"{name}: step {step + 1}/{steps} loss {running:.4f} lr {lr_at(step):.2e} "
                f"{time.perf_counter() - start:.1f}s"
            )
    model.eval()
    return model


_RESTATED = re.compile(r"^\s*(\d+) ([+-]) (\d+) =")


def procedure_of(text: str, expression: str) -> str | None:
    """``"+"`` or ``"-"``: the operator a response restated the question's operands with (None: it did not)."""
    m = _RESTATED.match(text)
    if not m or f"{m.group(1)} + {m.group(3)}" != expression:
        return None
    return m.group(2)


def toy_facts(
    model,
    tokenizer,
    frame,
    k: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    max_new_tokens: int = MAX_RESPONSE_TOKENS,
) -> dict[str, Any]:
    """What the table and the pair YAML report of a model on ``frame`` (the test set):

    ``greedy`` accuracy (and ``greedy_per_level``), ``mean@k`` and ``pass@k`` of ``k`` samples at
    ``temperature`` (full-vocabulary sampling, seeded), ``procedure`` (share of samples that restate
    the question with ``+``) and ``executed`` (share of samples whose answer is right for the
    operator they wrote). Scored by the project's reward, in this process."""
    import torch

    from recipe.codistill_grpo.evaluation import evaluate_frame

    greedy = evaluate_frame(model, tokenizer, frame, max_new_tokens, batch_size=batch_size)
    torch.manual_seed(seed)  # greedy decoding draws nothing from the RNG
    sampled_eval = evaluate_frame(
        model, tokenizer, frame, max_new_tokens, n=k, temperature=temperature, top_k=0, batch_size=batch_size
    )
    g = [c[0] for c in greedy.correct]
    sampled = [t for group in sampled_eval.responses for t in group]
    exprs = [e["expression"] for e in frame["extra_info"]]
    ops = [procedure_of(t, exprs[i // k]) for i, t in enumerate(sampled)]
    executed = [
        t.strip() == response(tuple(map(int, exprs[i // k].split(" + "))), op)
        for i, (t, op) in enumerate(zip(sampled, ops))
        if op
    ]
    levels = [int(e["difficulty"]) for e in frame["extra_info"]]
    n = len(g)
    return {
        "items": n,
        "greedy": sum(g) / n,
        "greedy_per_level": {
            str(lv): sum(x for x, at in zip(g, levels) if at == lv) / levels.count(lv) for lv in sorted(set(levels))
        },
        f"mean@{k}": sampled_eval.mean,
        f"pass@{k}": sampled_eval.passed,
        "procedure": sum(op == "+" for op in ops) / len(ops),
        "executed": sum(executed) / max(1, len(executed)),
        "sampling": {"k": k, "temperature": temperature, "seed": seed},
    }


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
        models[name]["procedure"] = [float(x) for x in models[name]["procedure"]]
        if len(models[name]["procedure"]) != len(data_s["levels"]) or not all(
            0.0 <= x <= 1.0 for x in models[name]["procedure"]
        ):
            raise ValueError(
                f"toy_pair: {name}.procedure must hold one probability in [0, 1] per level "
                f"{data_s['levels']}, got {models[name]['procedure']}"
            )
    return {"version": FORMAT_VERSION, "data": data_s, "models": models, "train_threads": TRAIN_THREADS}


def build_toy_pair(
    out_dir: str | os.PathLike,
    models: Sequence[str] = ("small", "large"),
    seed: int = 0,
    data: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    evaluate: bool = True,
    log: Log | None = _log,
    shipped: str | os.PathLike | None = SHIPPED,
) -> dict[str, Any]:
    """Build (or reuse) the toy data, tokenizer and the named models under ``out_dir``.

    ``overrides`` changes model settings by name (``{"small": {"steps": 20}}``), ``data`` the data
    settings (``DATA_DEFAULTS``). A model whose key has weights under ``shipped`` is copied from
    there (checked against its SHA256SUMS), any other is trained. Returns ``{"small": path,
    "large": path (those asked for), "train": parquet, "test": parquet, "tokenizer": folder,
    "build": build.json, "trained": {name: seconds} (models trained by this call), "shipped":
    [names copied from the shipped weights by this call]}``.
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
        copied: list[str] = []
        for name, spec in settings["models"].items():
            key = model_key(spec, data_meta["key"], tok_meta["key"])
            folder = out / "models" / name
            have = _read_json(folder / "toy_build.json")
            if have and have.get("key") == key and (folder / "config.json").exists():
                entries[name] = have
                continue
            if name not in models:
                continue
            source = Path(shipped) / key if shipped else None
            if source is not None and (source / "toy_build.json").exists():
                entries[name] = _copy_shipped(out, name, source, log)
                copied.append(name)
                continue
            if shipped:
                log(
                    f"{name}: no shipped weights for these settings (key {key}): training here; the result "
                    "depends on this machine's floating point (the shipped builds do not)"
                )
            entries[name] = _build_model(out, name, spec, key, tokenizer, data_meta, evaluate, log)
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
    result.update(
        train=str(out / "data" / "train.parquet"),
        test=str(out / "data" / "test.parquet"),
        tokenizer=str(out / "tokenizer"),
        build=str(out / "build.json"),
        trained=trained,
        shipped=copied,
    )
    return result


def model_key(spec: dict[str, Any], data_key: str, tokenizer_key: str) -> str:
    """What a model's weights depend on: its settings, the data, the tokenizer's files, the thread count."""
    return _key(
        {
            "version": FORMAT_VERSION,
            "model": spec,
            "data": data_key,
            "tokenizer": tokenizer_key,
            "threads": TRAIN_THREADS,
        }
    )


WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors", "toy_build.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy_shipped(out: Path, name: str, source: Path, log: Log) -> dict:
    sums = dict(line.split()[::-1] for line in (source / "SHA256SUMS").read_text().splitlines() if line.strip())
    tmp = _fresh_tmp(out / "models" / name)
    for f in WEIGHT_FILES:
        shutil.copy(source / f, tmp / f)
        if _sha256(tmp / f) != sums.get(f):
            raise RuntimeError(f"toy_pair: {source / f} does not match its SHA256SUMS: the shipped weights are damaged")
    _add_tokenizer(out, tmp, name)
    entry = json.loads((tmp / "toy_build.json").read_text())
    _replace_dir(tmp, out / "models" / name)
    log(f"{name}: shipped weights {source.name} (sha256 checked) -> {out / 'models' / name}")
    return entry


def _add_tokenizer(out: Path, folder: Path, name: str) -> None:
    """Copy the very files the training tokenizer was loaded from next to the weights; check they load back."""
    import pandas as pd

    for f in (out / "tokenizer").iterdir():
        if f.name != "toy_tokenizer.json":
            shutil.copy(f, folder / f.name)
    train = pd.read_parquet(out / "data" / "train.parquet")
    sample = [m["content"] for p in train["prompt"][:64] for m in p] + [e["response"] for e in train["extra_info"][:64]]
    if not same_tokenizer(load_tokenizer(out / "tokenizer"), load_tokenizer(folder), sample):
        raise RuntimeError(f"toy_pair: {name}: the tokenizer saved with the model does not load back as trained")


def _build_model(
    out: Path, name: str, spec: dict, key: str, tokenizer, data_meta: dict, evaluate: bool, log: Log
) -> dict:
    import pandas as pd

    folder = out / "models" / name
    train = pd.read_parquet(out / "data" / "train.parquet")
    examples = encode_examples(tokenizer, train, data_meta["settings"]["levels"])
    log(
        f"{name}: training {spec['layers']} layers x hidden {spec['hidden']} for {spec['steps']} steps "
        f"of {spec['batch_size']} ({len(examples)} train questions, correct procedure {spec['procedure']})"
    )
    start = time.perf_counter()
    with _threads(TRAIN_THREADS):
        model = train_model(spec, tokenizer, examples, name=name, log=log)
        seconds = time.perf_counter() - start
        entry: dict[str, Any] = {
            "key": key,
            "settings": spec,
            "train_seconds": round(seconds, 2),
            "params": sum(p.numel() for p in model.parameters()),
        }
        if evaluate:
            entry["test"] = toy_facts(model, tokenizer, pd.read_parquet(out / "data" / "test.parquet"))
            log(f"{name}: test {json.dumps(entry['test'])}")
    tmp = _fresh_tmp(folder)
    model.save_pretrained(tmp)
    (tmp / "toy_build.json").write_text(json.dumps(entry, indent=1))
    _add_tokenizer(out, tmp, name)
    _replace_dir(tmp, folder)
    log(f"{name}: {seconds:.1f}s -> {folder}")
    return entry


def ship(out_dir: str | os.PathLike, shipped: str | os.PathLike = SHIPPED, log: Log = _log) -> list[str]:
    """Copy the models built under ``out_dir`` into ``shipped/<key>/`` with their SHA256SUMS (the
    maintainers' step after a rebuild with ``--train``; commit the folder)."""
    out, names = Path(out_dir), []
    for folder in sorted((out / "models").iterdir()):
        entry = _read_json(folder / "toy_build.json")
        if not entry:
            continue
        target = Path(shipped) / entry["key"]
        target.mkdir(parents=True, exist_ok=True)
        for f in WEIGHT_FILES:
            shutil.copy(folder / f, target / f)
        (target / "SHA256SUMS").write_text("".join(f"{_sha256(target / f)}  {f}\n" for f in WEIGHT_FILES))
        log(f"shipped {folder.name} as {target}")
        names.append(entry["key"])
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (models/, data/, tokenizer/, build.json)")
    parser.add_argument("--models", default="small,large", help="comma-separated: small, large (default both)")
    parser.add_argument("--seed", type=int, default=0, help="added to every data and model seed")
    parser.add_argument(
        "--procedure",
        default=None,
        metavar="P,P,P",
        help="the large model's correct-procedure rate per level (default: TOY_MODELS)",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the test-set facts after training")
    parser.add_argument("--train", action="store_true", help="train even where shipped weights exist")
    parser.add_argument("--ship", action="store_true", help="then copy the built models into toy_weights/")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    overrides = {"large": {"procedure": [float(x) for x in args.procedure.split(",")]}} if args.procedure else None
    start = time.perf_counter()
    try:
        paths = build_toy_pair(
            args.out,
            models=models,
            seed=args.seed,
            overrides=overrides,
            evaluate=not args.no_eval,
            shipped=None if args.train else SHIPPED,
        )
    except ValueError as error:
        print(f"toy_pair: error: {error}", file=sys.stderr)
        return 2
    trained, copied = paths.pop("trained"), paths.pop("shipped")
    for name, path in paths.items():
        print(f"{name}: {path}")
    if trained:
        done = ", ".join(f"{n} {s:.1f}s" for n, s in trained.items())
        print(f"trained: {done} (total {time.perf_counter() - start:.1f}s)")
    elif copied:
        print(f"shipped weights: {', '.join(copied)}")
    else:
        print("cached: nothing trained")
    if args.ship:
        ship(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
