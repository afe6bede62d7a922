#!/usr/bin/env python
"""Build the tiny CPU model pair (small + large, one shared tokenizer) and tiny math data.

    python scripts/make_tiny_pair.py --out /tmp/tiny
writes /tmp/tiny/models/{small,large} and /tmp/tiny/data/{train,test}.parquet.
"""

import argparse

from recipe.codistill_grpo.cpu.tiny_pair import build_tiny_data, build_tiny_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-eval", type=int, default=16)
    args = parser.parse_args()
    models = build_tiny_pair(f"{args.out}/models", seed=args.seed)
    data = build_tiny_data(f"{args.out}/data", n_train=args.n_train, n_eval=args.n_eval, seed=args.seed)
    for name, path in {**models, **data}.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
