"""Shared-tokenizer start-up check: vocab maps and special tokens, not config.vocab_size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast

from verl_ext.codistill.tokenizer_check import TokenizerMismatchError, assert_shared_tokenizer


def word_level(vocab: dict[str, int], **specials) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **specials)


def test_tiny_pair_shares_its_tokenizer_despite_different_vocab_sizes(tiny_pair):
    small_cfg = AutoConfig.from_pretrained(tiny_pair["small"])
    large_cfg = AutoConfig.from_pretrained(tiny_pair["large"])
    assert small_cfg.vocab_size != large_cfg.vocab_size  # padded embeddings differ, like Qwen2.5-Math
    assert_shared_tokenizer(tiny_pair["small"], tiny_pair["large"])
    assert_shared_tokenizer(AutoTokenizer.from_pretrained(tiny_pair["small"]), Path(tiny_pair["large"]))


def test_extra_token_is_named_with_both_paths(tiny_pair, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_pair["large"])
    n = len(tok)
    tok.add_tokens(["<|new_tool|>"])
    other = tmp_path / "large_plus"
    tok.save_pretrained(other)
    with pytest.raises(TokenizerMismatchError) as info:
        assert_shared_tokenizer(tiny_pair["small"], str(other))
    msg = str(info.value)
    assert msg == (
        f"tokenizers differ: small={tiny_pair['small']!r} and large={str(other)!r}: first differing token "
        f"'<|new_tool|>' has id None in small, {n} in large"
    )
    assert isinstance(info.value, ValueError) and "\n" not in msg


def test_first_differing_token_is_the_lowest_id():
    small = word_level({"<unk>": 0, "a": 1, "b": 2, "c": 3, "d": 4})
    large = word_level({"<unk>": 0, "a": 1, "b": 2, "d": 3, "c": 4})
    small.name_or_path, large.name_or_path = "S", "L"
    with pytest.raises(TokenizerMismatchError, match=r"first differing token 'c' has id 3 in small, 4 in large$"):
        assert_shared_tokenizer(small, large)


def test_missing_token_in_large():
    small = word_level({"<unk>": 0, "a": 1, "b": 2})
    large = word_level({"<unk>": 0, "a": 1})
    with pytest.raises(TokenizerMismatchError, match=r"first differing token 'b' has id 2 in small, None in large"):
        assert_shared_tokenizer(small, large)


def test_special_tokens_are_compared():
    vocab = {"<unk>": 0, "<eos>": 1, "<end>": 2, "x": 3}
    small = word_level(vocab, eos_token="<eos>")
    large = word_level(vocab, eos_token="<end>")
    with pytest.raises(TokenizerMismatchError, match=r"special token eos_token is '<eos>' in small, '<end>' in large"):
        assert_shared_tokenizer(small, large)
    assert_shared_tokenizer(small, word_level(dict(vocab), eos_token="<eos>"))


def test_tokenizer_json_with_swapped_ids_on_disk(tiny_pair, tmp_path):
    src = Path(tiny_pair["large"])
    dst = tmp_path / "swapped"
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    data = json.loads((dst / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (dst / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerMismatchError, match=rf"first differing token {a!r} has id 100 in small, 101 in large"):
        assert_shared_tokenizer(tiny_pair["small"], dst)
