"""Answer extraction and normalisation shared by data preparation and the reward.

Pure string code (numpy only): no math-verify import, so ``scripts/prepare_data.py``
and the reward's parent process stay light. The same functions normalise the
ground truth once at preparation time and the model's answer at scoring time.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["bracket_depth", "find_last_boxed", "last_boxed_content", "normalize_answer", "valid_text"]

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_TOKEN_RE = re.compile(r"[^\s$]+")
_SURROGATES = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> tuple[str, bool]:
    """``(text with every lone surrogate replaced by U+FFFD, whether there was one)``.

    A Python ``str`` can hold the code points U+D800..U+DFFF (``surrogateescape`` decoding,
    ``chr(0xDFFF)``), which are not Unicode text: ``text.encode("utf-8")`` raises on them,
    and so would any later write of the string (a log line, a results JSON). The replacement
    is one character for one, so a span found in the result is the same span of ``text``.
    """
    cleaned, count = _SURROGATES.subn("\ufffd", text)
    return cleaned, count > 0


def _code_points(text: str) -> np.ndarray:
    """``[ord(c) for c in text]`` as uint32, vectorised; defined for every ``str`` (``surrogatepass``)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _group_ends(text: str) -> dict[int, int]:
    """``{index of an unescaped "{": index of the "}" closing it}`` for every group that closes.

    One pass over the braces (a stack), so the whole text costs ``O(len(text))``. Escaped
    ``\\{``/``\\}`` (a backslash right before) count as neither.
    """
    codes = _code_points(text)
    brace = (codes == ord("{")) | (codes == ord("}"))
    brace[1:] &= codes[:-1] != ord("\\")
    ends: dict[int, int] = {}
    stack: list[int] = []
    positions = np.flatnonzero(brace)
    for k, is_open in zip(positions.tolist(), (codes[positions] == ord("{")).tolist()):
        if is_open:
            stack.append(k)
        elif stack:
            ends[stack.pop()] = k
    return ends


def bracket_depth(text: str) -> int:
    """Deepest nesting of ``{[(`` / ``)]}`` in ``text``: ``max(cumsum(opens - closes))``, 0 if none.

    Brackets of all kinds count together (intervals mix them); a pathological-input guard,
    not a syntax check.
    """
    if not text:
        return 0
    codes = _code_points(text)
    opens = (codes == ord("{")) | (codes == ord("[")) | (codes == ord("("))
    closes = (codes == ord("}")) | (codes == ord("]")) | (codes == ord(")"))
    return int(max(0, np.cumsum(opens.astype(np.int32) - closes.astype(np.int32)).max()))


def find_last_boxed(text: str) -> tuple[int, int] | None:
    """Span ``(start, end)`` of the content of the last ``\\boxed{...}`` / ``\\fbox{...}``.

    Braces are balanced (nested groups such as ``\\boxed{\\frac{1}{2}}`` are kept whole).
    ``\\boxed 5`` (no braces) yields the single following token. An unclosed last box
    falls back to the previous closed one; ``None`` if there is no closed box.
    """
    ends = None  # the brace matching of the whole text, computed once (linear in its length)
    for match in reversed(list(_BOXED_RE.finditer(text))):
        start = match.end()
        if start >= len(text):
            continue
        if text[start] == "{":
            if ends is None:
                ends = _group_ends(text)
            end = ends.get(start, -1)
            if end >= 0:
                return start + 1, end
            continue
        if match.group(0)[-1].isspace():
            token = _TOKEN_RE.match(text, start)
            if token:
                return start, token.end()
    return None


def last_boxed_content(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{}`` in ``text`` (see ``find_last_boxed``), else ``None``."""
    span = find_last_boxed(text)
    return None if span is None else text[span[0] : span[1]]


_STRIP_COMMANDS = re.compile(r"\\(?:left|right|!|,|;|:|displaystyle)(?![a-zA-Z])")
_FRAC_VARIANTS = re.compile(r"\\[dt]frac(?![a-zA-Z])")
_SPACES = re.compile(r"\s+")


def normalize_answer(answer: str) -> str:
    """Light, semantics-preserving normalisation of a final answer string.

    Applied once to MATH ground truths at preparation time and to the extracted
    prediction before the exact-match shortcut. Removes surrounding ``$``/whitespace,
    a trailing period, spacing and sizing commands (``\\left``, ``\\right``, ``\\!``,
    ``\\,``, ``\\displaystyle``), maps ``\\dfrac``/``\\tfrac`` to ``\\frac`` and
    collapses runs of whitespace. Everything else (units, ``\\text{}``, degrees) is left
    to math-verify, which understands it.
    """
    s = answer.strip()
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    s = _STRIP_COMMANDS.sub("", s)
    s = _FRAC_VARIANTS.sub(r"\\frac", s)
    s = _SPACES.sub(" ", s).strip()
    if s.endswith(".") and not s.endswith("..."):
        s = s[:-1].rstrip()
    return s
