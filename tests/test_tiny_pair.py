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
