"""The project's one Hugging Face evaluator: batched ``generate`` on chat prompts, scored by the recipe's reward.

Used by the toy build (``cpu/toy_pair.toy_facts``), ``scripts/evaluate.py --backend hf`` (``HFGenerator``)
and ``tests/test_learning.py``. Prompts are rendered with the model's own chat template and the generation
prompt (as verl's agent loop does), tokenized without special tokens, left-padded, ``batch_size`` prompts
per ``generate`` call; greedy when ``temperature <= 0``, else ``n`` samples per prompt from torch's global
RNG (seed it before the call). Scoring is ``verl_ext.reward.math_reward.score_batch`` (the training reward)::

    mean@n = 1/N sum_i 1/n sum_j c_ij        pass@n = 1/N sum_i max_j c_ij        (greedy: n = 1)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl_ext.reward.math_reward import DEFAULT_TIMEOUT_S, score_batch

Ids = tuple[list[int], list[int]]  # (prompt ids without padding, response ids up to and including the first EOS)


def chat_prompts(tokenizer, prompts: Sequence[Sequence[dict]]) -> list[str]:
    """Apply the model's own chat template (as verl's agent loop does) with the generation prompt."""
    return [
        tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
        for messages in prompts
    ]


def hf_generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[dict]],
    max_tokens: int,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    batch_size: int = 64,
    return_ids: bool = False,
) -> list[list[str]] | tuple[list[list[str]], list[list[Ids]]]:
    """``n`` completions of each of the ``N`` chat ``prompts``: texts ``[N][n]`` (special tokens dropped).

    ``temperature <= 0``: greedy (``n`` copies of the argmax path); else sampling at ``temperature`` with
    ``top_p``/``top_k`` (None: the model's generation config; ``top_k=0``: the full vocabulary).
    ``return_ids``: also ``[N][n]`` token ids ``(prompt, response)`` as generated (response cut after EOS).
    """
    import torch

    prompts, sample, eos = list(prompts), temperature > 0, tokenizer.eos_token_id
    texts, ids = [], []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for s in range(0, len(prompts), batch_size):
            enc = tokenizer(
                chat_prompts(tokenizer, prompts[s : s + batch_size]),
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(model.device)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_tokens,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_p=top_p if sample else None,
                    top_k=top_k if sample else None,
                    num_return_sequences=n,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
            texts += [decoded[i * n : (i + 1) * n] for i in range(len(decoded) // n)]
            if return_ids:
                rows = [new[r].tolist() for r in range(new.shape[0])]
                rows = [r[: r.index(eos) + 1] if eos in r else r for r in rows]
                prompt = [enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist() for i in range(len(rows) // n)]
                ids += [[(prompt[i], rows[i * n + j]) for j in range(n)] for i in range(len(prompt))]
    finally:
        tokenizer.padding_side = side
    return (texts, ids) if return_ids else texts


@contextlib.contextmanager
def _quiet_math_verify():
    """math-verify warns on every call graded outside its process pool that it has no timeout."""
    logger = logging.getLogger("math_verify")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def score(
    responses: Sequence[Sequence[str]],
    golds: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT_S,
    num_workers: int | None = None,
    fallback_unboxed: bool = False,
) -> list[list[dict[str, Any]]]:
    """``score_batch`` of every response ``[N][n]`` against its item's gold ``[N]``, grouped ``[N][n]``
    (``num_workers=0``: graded in this process)."""
    flat = [r for group in responses for r in group]
    with _quiet_math_verify() if num_workers == 0 else contextlib.nullcontext():
        scored = score_batch(
            flat,
            [str(g) for g, group in zip(golds, responses) for _ in group],
            timeout=timeout,
            num_workers=num_workers,
            fallback_unboxed=fallback_unboxed,
        )
    out, at = [], 0
    for group in responses:
        out.append(scored[at : at + len(group)])
        at += len(group)
    return out


@dataclass
class Evaluation:
    """What ``evaluate_frame`` returns: per item ``responses`` and ``correct`` (0/1) of its ``n`` samples,
    and the token ids when asked for."""

    responses: list[list[str]]
    correct: list[list[float]]
    ids: list[list[Ids]] | None = None

    @property
    def mean(self) -> float:
        """mean@n (the greedy accuracy when n = 1), over all samples (every item has ``n``)."""
        flat = [x for c in self.correct for x in c]
        return sum(flat) / len(flat)

    @property
    def passed(self) -> float:
        """pass@n."""
        return sum(max(c) for c in self.correct) / len(self.correct)


def evaluate_frame(
    model,
    tokenizer,
    frame,
    max_tokens: int,
    n: int = 1,
    temperature: float = 0.0,
    top_k: int | None = None,
    batch_size: int = 64,
    num_workers: int | None = 0,
    return_ids: bool = False,
) -> Evaluation:
    """Generate (``hf_generate``) and score (``score``) every row of a verl RLHFDataset frame
    (``prompt``, ``reward_model.ground_truth``); greedy unless ``temperature > 0``."""
    out = hf_generate(
        model, tokenizer, frame["prompt"], max_tokens, n, temperature, None, top_k, batch_size, return_ids
    )
    responses, ids = out if return_ids else (out, None)
    golds = [r["ground_truth"] for r in frame["reward_model"]]
    scored = score(responses, golds, num_workers=num_workers)
    return Evaluation(responses, [[float(r["score"]) for r in group] for group in scored], ids)


class HFGenerator:
    """``scripts/evaluate.py``'s HF backend: a model loaded on CPU (or one GPU), ``n`` samples per prompt."""

    def __init__(self, model_dir: Path | str, dtype: str = "float32", device: str = "cpu", seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.seed = seed
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()

    def generate(
        self, prompts, n: int, temperature: float, top_p: float, max_tokens: int, item_ids: Sequence[int] = (0,)
    ) -> list[list[str]]:
        """``n`` completions per prompt in one batch; sampling seeded by ``seed + item_ids[0]`` (the batch's first
        item), so a resumed run with the same batches samples what an uninterrupted one did."""
        self.torch.manual_seed(self.seed + int(item_ids[0]))
        return hf_generate(
            self.model, self.tokenizer, prompts, max_tokens, n, temperature, top_p, batch_size=len(prompts)
        )
