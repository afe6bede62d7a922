"""recipe/codistill_grpo/cli.py: argparse up to the first ``--``, hydra overrides after it."""

from __future__ import annotations

import argparse

import pytest

from recipe.codistill_grpo.cli import parse_with_overrides


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--pair", required=True)
    p.add_argument("--steps", type=int, default=1)
    return p


def test_overrides_after_the_double_dash_pass_untouched():
    args, overrides = parse_with_overrides(_parser(), ["--pair", "toy", "--", "a.b=1", "+c=2", "--steps", "--"])
    assert (args.pair, args.steps) == ("toy", 1)
    assert overrides == ["a.b=1", "+c=2", "--steps", "--"]  # option-like words and a second -- are overrides


def test_without_double_dash_no_overrides():
    args, overrides = parse_with_overrides(_parser(), ["--steps", "3", "--pair", "p"])
    assert (args.pair, args.steps, overrides) == ("p", 3, [])


def test_argparse_errors_stay_argparse_errors(capsys):
    with pytest.raises(SystemExit) as e:
        parse_with_overrides(_parser(), ["--", "--pair", "toy"])  # --pair after -- is an override
    assert e.value.code == 2 and "--pair" in capsys.readouterr().err
