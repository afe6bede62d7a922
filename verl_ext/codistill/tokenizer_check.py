"""Start-up check that the small and large models share one tokenizer.

Compares the token -> id maps (``get_vocab()``, added tokens included) and the special tokens
(``special_tokens_map`` and their ids), never ``config.vocab_size``: Qwen2.5-Math-1.5B and -7B pad
their embedding matrices to different sizes but share the tokenizer.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["TokenizerMismatchError", "assert_shared_tokenizer"]


class TokenizerMismatchError(ValueError):
    """The two models' tokenizers differ (one-line message naming both and the first difference)."""


def _load(path_or_tokenizer: Any) -> tuple[Any, str]:
    if isinstance(path_or_tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        path = os.fspath(path_or_tokenizer)
        return AutoTokenizer.from_pretrained(path), path
    name = getattr(path_or_tokenizer, "name_or_path", "") or type(path_or_tokenizer).__name__
    return path_or_tokenizer, name


def _first_vocab_difference(small: dict[str, int], large: dict[str, int]) -> tuple[str, Any, Any] | None:
    differing = [tok for tok, idx in small.items() if large.get(tok) != idx]
    differing += [tok for tok in large.keys() - small.keys()]
    if not differing:
        return None

    def order(tok: str) -> tuple[int, int]:
        # by the small model's id; tokens only the large vocab has come after, by their id
        return (0, small[tok]) if tok in small else (1, large[tok])

    tok = min(differing, key=order)
    return tok, small.get(tok), large.get(tok)


def assert_shared_tokenizer(small_path_or_tokenizer: Any, large_path_or_tokenizer: Any) -> None:
    """Raise ``TokenizerMismatchError`` unless both tokenizers map the same tokens to the same ids.

    Args:
        small_path_or_tokenizer, large_path_or_tokenizer: a local HF directory (or hub name) or a
            loaded tokenizer.

    Raises:
        TokenizerMismatchError: one line naming both tokenizers and the first differing token (lowest
            small-vocab id; then tokens only the large vocab has, by id) or special token.
    """
    small, small_name = _load(small_path_or_tokenizer)
    large, large_name = _load(large_path_or_tokenizer)
    where = f"small={small_name!r} and large={large_name!r}"

    diff = _first_vocab_difference(small.get_vocab(), large.get_vocab())
    if diff is not None:
        tok, small_id, large_id = diff
        raise TokenizerMismatchError(
            f"tokenizers differ: {where}: first differing token {tok!r} has id {small_id} in small, {large_id} in large"
        )

    small_special, large_special = small.special_tokens_map, large.special_tokens_map
    for key in sorted(small_special.keys() | large_special.keys()):
        a, b = small_special.get(key), large_special.get(key)
        if a != b:
            raise TokenizerMismatchError(
                f"tokenizers differ: {where}: special token {key} is {a!r} in small, {b!r} in large"
            )
    if list(small.all_special_ids) != list(large.all_special_ids):
        raise TokenizerMismatchError(
            f"tokenizers differ: {where}: special token ids {small.all_special_ids} in small, "
            f"{large.all_special_ids} in large"
        )
