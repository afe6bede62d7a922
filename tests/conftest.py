"""Shared fixtures: the tiny model pair and tiny math data, built once per test session."""

from __future__ import annotations

import pytest

from recipe.codistill_grpo.cpu.tiny_pair import build_tiny_data, build_tiny_pair


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> dict[str, str]:
    """{'small': path, 'large': path}: two tiny Qwen2 models sharing one tokenizer."""
    return build_tiny_pair(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, str]:
    """{'train': parquet, 'test': parquet}: arithmetic prompts in verl's RLHFDataset layout."""
    return build_tiny_data(tmp_path_factory.mktemp("tiny_data"))
