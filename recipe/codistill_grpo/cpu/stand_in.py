"""The CPU stand-in pair of ``platform=cpu``: built on the fly where ``run.cpu_pair.dir`` points.

``tiny``: two random Qwen2 models sharing one tokenizer, and arithmetic data (``tiny_pair.py``);
``toy``: the same task family, warmed up to partial competence (``toy_pair.py``). Each build is
deterministic and cached: ``build.json`` records what built it, and a folder built by other code
or settings is rebuilt (a stale copy would silently run other models).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

KINDS = ("tiny", "toy")


def _tiny_key() -> str:
    from recipe.codistill_grpo.cpu import tiny_pair

    return hashlib.sha256(Path(tiny_pair.__file__).read_bytes()).hexdigest()[:16]


def ensure_cpu_pair(
    kind: str, folder: str | Path, models: tuple[str, ...] = ("small", "large"), settings: dict | None = None
) -> str:
    """Build the stand-in pair ``kind`` at ``folder`` unless an identical build is there; returns a line saying which.

    ``settings`` (the toy pair only): ``{"data": {...}, "models": {"small": {...}}}`` over
    ``toy_pair``'s defaults (``pair.cpu.build`` in the pair's YAML).
    """
    if kind not in KINDS:
        raise ValueError(f"run.cpu_pair.kind={kind!r} not in {list(KINDS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # two runs building the same pair wait for each other
        if kind == "toy":
            from recipe.codistill_grpo.cpu.toy_pair import build_toy_pair

            settings = dict(settings or {})
            build_toy_pair(folder, models=tuple(models), data=settings.get("data"), overrides=settings.get("models"))
            return f"toy pair ({', '.join(models)}) ready in {folder}"
        key = _tiny_key()
        info = folder / "build.json"
        try:
            built = json.loads(info.read_text()).get("key")
        except (OSError, ValueError):
            built = None
        if built == key and all((folder / "models" / m / "config.json").is_file() for m in ("small", "large")):
            return f"tiny pair cached in {folder}"
        from recipe.codistill_grpo.cpu.tiny_pair import build_tiny_data, build_tiny_pair

        build_tiny_pair(folder / "models")
        build_tiny_data(folder / "data")
        info.write_text(json.dumps({"kind": "tiny", "key": key}))
        return f"tiny pair built in {folder}"


def ensure_stand_in(cpu_pair, models: tuple[str, ...] = ("small", "large"), folder: str | Path | None = None) -> str:
    """:func:`ensure_cpu_pair` for a resolved ``run.cpu_pair`` node (kind, dir, settings), at ``folder``
    (default its ``dir``)."""
    from omegaconf import OmegaConf

    settings = cpu_pair.get("settings")
    settings = OmegaConf.to_container(settings) if settings is not None else None
    return ensure_cpu_pair(cpu_pair.kind, folder or cpu_pair.dir, models, settings)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Build a CPU stand-in pair (models/{small,large}, data/).")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--pair",
        help="the stand-in of configs/pair/PAIR.yaml under platform=cpu, with that "
        "file's build settings (pair.cpu.build) and, without --out, its folder",
    )
    which.add_argument("--kind", choices=KINDS, help="a stand-in with the builder's default settings")
    parser.add_argument("--out", help="folder of the pair (required with --kind)")
    parser.add_argument("--models", default="small,large", help="which models (the toy pair builds each on demand)")
    args = parser.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    if args.pair:
        from recipe.codistill_grpo.configuration import ConfigError, compose_config, resolved

        try:
            stand_in = resolved(compose_config(args.pair, "codistill", platform="cpu")).run.cpu_pair
        except ConfigError as e:
            parser.error(str(e))
        print(ensure_stand_in(stand_in, models, args.out))
        return 0
    if not args.out:
        parser.error("--out is required with --kind (or name a --pair)")
    print(ensure_cpu_pair(args.kind or "tiny", args.out, models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
