"""A tiny small/large model pair, a real tokenizer they share, and tiny math data.

Everything here is built on the fly, offline and deterministically, for the CPU smoke run
and the tests: two randomly initialised Qwen2-architecture causal LMs of different widths
(and, like Qwen2.5-Math-1.5B/7B, different padded embedding sizes) sharing one byte-level
BPE ``Qwen2Tokenizer`` (loads back from disk exactly as built) with a Qwen-style chat
template, and arithmetic prompts with boxed answers written as the same verl parquet that
``scripts/prepare_data.py`` writes.

    python -m recipe.codistill_grpo.cpu.stand_in --kind tiny --out /tmp/tiny
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
EOS_LOGIT_WEIGHT = 2.0
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# name -> (hidden, intermediate, layers, heads, kv heads, vocab padding multiple)
# Head size 32 in both (hidden / heads): vLLM's CPU attention supports head sizes 32, 64, 80, ...
# only (8 and 16 fail at engine start), and platform=cpu generates with vLLM. The large model keeps
# grouped-query attention (2 heads, 1 KV head).
TINY_SIZES = {
    "small": (32, 64, 2, 1, 1, 8),
    "large": (64, 128, 2, 2, 1, 256),
}


def _tokenizer_corpus() -> list[str]:
    rng = random.Random(0)
    lines = [INSTRUCTION, "The answer is \\boxed{42}.", "user", "assistant", "system"]
    for _ in range(400):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice(["+", "-", "*"])
        lines.append(f"What is {a} {op} {b}? {a} {op} {b} = \\boxed{{{eval(f'{a}{op}{b}')}}}")
    return lines


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 384, split_digits: bool = False):
    """Byte-level BPE (a few hundred tokens) as a ``Qwen2Tokenizer``, identical after save and load.

    A model folder whose ``config.json`` says ``model_type: qwen2`` is loaded by
    ``AutoTokenizer.from_pretrained`` (and so by verl) as a ``Qwen2Tokenizer``, which keeps the
    vocabulary and merges but rebuilds the normalizer, pre-tokenizer and decoder from its own
    class (NFC, Qwen's split regex with one digit per piece, byte level). Returning a
    ``Qwen2Tokenizer`` built from the trained vocabulary and merges makes what the builder holds
    in memory tokenize exactly like what any reader loads from disk.

    ``split_digits=False`` (the tiny pair) trains the merges on byte-level words, as this
    function always has: the vocabulary keeps its multi-digit tokens (``Ġ53``), which Qwen's
    splitting never produces when encoding but a model can still sample; the tiny pair's
    vocabulary, and so its random models, stay what they were. ``split_digits=True`` trains the
    merges under Qwen's own splitting, so every token in the vocabulary can come out of encoding.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    if split_digits:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus() if corpus is None else corpus, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        extra_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def _padded(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def build_model(size: str, vocab_len: int, eos_id: int, pad_id: int, seed: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, inter, layers, heads, kv_heads, pad_multiple = TINY_SIZES[size]
    config = Qwen2Config(
        vocab_size=_padded(vocab_len, pad_multiple),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    # A random model almost never samples EOS, so every response would run to the length limit and
    # end-to-end tests would only see all-ones response masks. One large lm_head weight on EOS ends
    # some sampled 16-token responses early (with the head-size-32 models, weight 1.0 ended none of
    # test_hf_rollout's 24 sampled responses; 2.0 ends some, not all).
    with torch.no_grad():
        model.lm_head.weight[eos_id].zero_()
        model.lm_head.weight[eos_id, 0] = EOS_LOGIT_WEIGHT
    return model


def build_tiny_pair(out_dir: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """Write ``out_dir/small`` and ``out_dir/large`` (model + tokenizer each). Returns the paths."""
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    paths = {}
    for i, size in enumerate(("small", "large")):
        path = out / size
        model = build_model(size, len(tokenizer), eos_id, pad_id, seed=seed + i)
        model.generation_config.eos_token_id = eos_id
        model.generation_config.pad_token_id = pad_id
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[size] = str(path)
    return paths


def tiny_math_rows(n: int, split: str, seed: int, data_source: str = "tiny_arith") -> list[dict]:
    """Arithmetic prompts in verl's RLHFDataset row layout."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        op = rng.choice(["+", "-"])
        answer = str(a + b if op == "+" else a - b)
        rows.append(
            {
                "data_source": data_source,
                "prompt": [{"role": "user", "content": f"What is {a} {op} {b}? {INSTRUCTION}"}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": {"split": split, "index": i},
            }
        )
    return rows


def build_tiny_data(out_dir: str | os.PathLike, n_train: int = 64, n_eval: int = 16, seed: int = 0) -> dict[str, str]:
    """Write ``train.parquet`` and ``test.parquet`` of tiny arithmetic prompts. Returns the paths."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n, s in (("train", n_train, seed), ("test", n_eval, seed + 1)):
        path = out / f"{split}.parquet"
        pd.DataFrame(tiny_math_rows(n, split, s)).to_parquet(path)
        paths[split] = str(path)
    (out / "manifest.json").write_text(json.dumps({"rows": {"train": n_train, "test": n_eval}, "seed": seed}))
    return paths
