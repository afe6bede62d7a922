"""Shared fixtures. Every test runs with CODISTILL_OUTPUT_DIR and CODISTILL_DATA_DIR in a session
temp folder, where the tiny model pair of ``platform=cpu`` is built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recipe.codistill_grpo.cpu.stand_in import ensure_cpu_pair

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def output_dir(tmp_path_factory) -> Path:
    """The session's CODISTILL_OUTPUT_DIR (and CODISTILL_DATA_DIR beside it)."""
    out = tmp_path_factory.mktemp("outputs")
    os.environ["CODISTILL_OUTPUT_DIR"] = str(out)
    os.environ["CODISTILL_DATA_DIR"] = str(out.parent / "data")
    return out


@pytest.fixture(scope="session")
def tiny_dir(output_dir) -> Path:
    """The tiny pair where platform=cpu looks for it: <output>/tiny/{models,data}."""
    ensure_cpu_pair("tiny", output_dir / "tiny")
    return output_dir / "tiny"


@pytest.fixture(scope="session")
def tiny_pair(tiny_dir) -> dict[str, str]:
    """{'small': path, 'large': path}: two tiny Qwen2 models sharing one tokenizer."""
    return {m: str(tiny_dir / "models" / m) for m in ("small", "large")}


@pytest.fixture(scope="session")
def tiny_data(tiny_dir) -> dict[str, str]:
    """{'train': parquet, 'test': parquet}: arithmetic prompts in verl's RLHFDataset layout."""
    return {s: str(tiny_dir / "data" / f"{s}.parquet") for s in ("train", "test")}
