"""The CPU shim pieces on their own: platform, backend normalisation, toy reward, HF rollout server."""

from __future__ import annotations

import asyncio

import pytest
import torch
from omegaconf import OmegaConf

from recipe.codistill_grpo.cpu.platform import PlatformCPU, normalize_backend
from tests.toy_reward import compute_score


def test_cpu_platform_registered():
    from verl.plugin.platform import PlatformRegistry

    assert PlatformRegistry.get("cpu") is PlatformCPU
    p = PlatformCPU()
    assert p.device_name == "cpu" and p.communication_backend_name() == "gloo" and p.ray_resource_name() == "GPU"
    assert p.current_device() == torch.device("cpu")
    assert p.is_platform_available(use_smi_check=True) is False  # only VERL_PLATFORM=cpu selects it
    mod = p.device_module
    assert mod.mem_get_info() == (0, 0) and mod.memory_allocated() == 0 and mod.empty_cache() is None
    state = mod.get_rng_state()
    a = torch.rand(3)
    mod.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


@pytest.mark.parametrize(
    "given, want",
    [("cpu:gloo,cpu:gloo", "gloo"), ("cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl"), ("gloo", "gloo"), (None, None)],
)
def test_normalize_backend(given, want):
    assert normalize_backend(given) == want


def test_toy_reward_hand_cases():
    # gt "12": chars {1, 2}
    assert compute_score("tiny_arith", "no digits here", "12") == 0.0
    assert compute_score("tiny_arith", "a 1 b", "12") == 0.25
    assert compute_score("tiny_arith", "21", "12") == 0.5
    assert compute_score("tiny_arith", "so \\boxed{12}", "12") == 1.0
    # gt "-3": chars {-, 3}
    assert compute_score("tiny_arith", "3", "-3") == 0.25
    with pytest.raises(ValueError, match="empty ground_truth"):
        compute_score("tiny_arith", "x", "")


def _server(tiny_pair):
    from recipe.codistill_grpo.cpu.hf_rollout import HFRolloutServer

    config = OmegaConf.create({"response_length": 6, "prompt_length": 32, "seed": 0})
    return HFRolloutServer(config, OmegaConf.create({"path": tiny_pair["small"]}), replica_rank=0)


def test_hf_server_sampling_is_reproducible_and_follows_weights(tiny_pair):
    prompt = [5, 6, 7, 8, 9]
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    a = _server(tiny_pair)
    b = _server(tiny_pair)
    first = [asyncio.run(a.generate(prompt, dict(params))) for _ in range(3)]
    second = [asyncio.run(b.generate(prompt, dict(params))) for _ in range(3)]
    assert [o.token_ids for o in first] == [o.token_ids for o in second]
    assert len({tuple(o.token_ids) for o in first}) > 1, "the k-th copies of a prompt must be different samples"
    assert all(len(o.token_ids) == 6 and len(o.log_probs) == 6 for o in first)
    assert all(lp <= 0.0 for o in first for lp in o.log_probs)

    # a weight update is applied exactly and restarts the per-step sample counters
    new_state = {k: torch.zeros_like(v) for k, v in a.model.state_dict().items()}
    assert a.update_weights(new_state, global_steps=1) == 1
    assert all(torch.equal(v, torch.zeros_like(v)) for v in a.model.state_dict().values())
    greedy = asyncio.run(a.generate(prompt, {"temperature": 0.0}))
    assert greedy.token_ids == [0] * 6  # all-zero logits: argmax is token 0
    assert greedy.extra_fields["global_steps"] == 1


def test_hf_server_rejects_mismatched_weights(tiny_pair):
    srv = _server(tiny_pair)
    with pytest.raises(ValueError, match="does not match the model"):
        srv.update_weights({"not.a.param": torch.zeros(1)})
