"""Command-line helper shared by the scripts that pass hydra overrides through after ``--``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def parse_with_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``argv`` with ``parser`` up to the first ``--``; what follows it is returned untouched.

    ``script.py --pair toy --steps 4 -- trainer.n_gpus_per_node=8 +x=1`` gives
    ``(Namespace(pair='toy', steps=4), ['trainer.n_gpus_per_node=8', '+x=1'])``: the overrides go to
    hydra (``compose_config`` or the entry point), never through argparse, so they may start with ``-``
    or ``+`` and look like options. ``argv`` defaults to ``sys.argv[1:]``; a second ``--`` is an override.

    Returns:
        (the parsed namespace, the hydra overrides after ``--``; empty without ``--``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:cut]), argv[cut + 1 :]
