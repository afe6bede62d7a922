"""The tiny pair must look like a real pair: one vocabulary, different padded vocab sizes."""

from transformers import AutoConfig, AutoTokenizer


def test_pair_shares_tokenizer_but_not_vocab_size(tiny_pair):
    small_tok = AutoTokenizer.from_pretrained(tiny_pair["small"])
    large_tok = AutoTokenizer.from_pretrained(tiny_pair["large"])
    assert small_tok.get_vocab() == large_tok.get_vocab()
    small_cfg = AutoConfig.from_pretrained(tiny_pair["small"])
    large_cfg = AutoConfig.from_pretrained(tiny_pair["large"])
    assert small_cfg.vocab_size != large_cfg.vocab_size
    assert min(small_cfg.vocab_size, large_cfg.vocab_size) >= len(small_tok)
    assert small_cfg.hidden_size < large_cfg.hidden_size
    # verl's continuous-token builder needs the Qwen newline to be one token
    assert len(small_tok.encode("\n")) == 1


def test_tiny_data_rows_have_boxed_answers(tiny_data):
    import pandas as pd

    df = pd.read_parquet(tiny_data["train"])
    assert set(df.columns) >= {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    row = df.iloc[0]
    question = row["prompt"][0]["content"]
    a, op, b = question.split("?")[0].removeprefix("What is ").split()
    expected = int(a) + int(b) if op == "+" else int(a) - int(b)
    assert row["reward_model"]["ground_truth"] == str(expected)
    assert "\\boxed{}" in question


def test_tiny_models_sometimes_end_early(tiny_pair):
    """Sampled responses must have varied lengths, so end-to-end runs exercise real response masks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_pair["small"])
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    for size in ("small", "large"):
        model = AutoModelForCausalLM.from_pretrained(tiny_pair[size])
        torch.manual_seed(0)
        out = model.generate(prompt.repeat(32, 1), do_sample=True, max_new_tokens=16, eos_token_id=eos, pad_token_id=0)
        ended = (out[:, prompt.shape[1] :] == eos).any(dim=1)
        assert 0 < int(ended.sum()) < 32, (size, int(ended.sum()))


def test_tokenizer_in_memory_equals_tokenizer_loaded_from_model_folder(tiny_pair, tiny_data):
    """A model trained with the builder's tokenizer must see the same ids when verl loads it from disk."""
    import pandas as pd

    from recipe.codistill_grpo.cpu.tiny_pair import build_tokenizer

    built = build_tokenizer()
    loaded = AutoTokenizer.from_pretrained(tiny_pair["small"])
    assert type(built) is type(loaded)
    rows = pd.read_parquet(tiny_data["train"])
    texts = [m["content"] for p in rows["prompt"] for m in p] + ["53 + 12 = \\boxed{65}", "x\n\ny 1234567"]
    for text in texts:
        assert built(text)["input_ids"] == loaded(text)["input_ids"], text
    chat = [{"role": "user", "content": texts[0]}]
    assert built.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == loaded.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False
    )
    # like the real Qwen2.5 tokenizer: one digit per token, so numbers tokenize the same wherever they stand
    assert loaded.tokenize(" 53") == ["Ġ", "5", "3"]
