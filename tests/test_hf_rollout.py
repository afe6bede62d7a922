"""The batching ``hf`` rollout server on its own (in-process, no Ray), against independent references.

References are plain ``transformers`` calls written here: ``model.generate`` of one prompt alone,
and one forward of prompt + response for the log-probs.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from recipe.codistill_grpo.cpu.hf_rollout import HFRolloutServer

SAMPLED = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "repetition_penalty": 1.0}
GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "repetition_penalty": 1.0}


def _server(tiny_pair, response_length=12, prompt_length=48, seed=0, **hf_kwargs) -> HFRolloutServer:
    config = OmegaConf.create(
        {
            "response_length": response_length,
            "prompt_length": prompt_length,
            "seed": seed,
            "engine_kwargs": {"hf": hf_kwargs},
        }
    )
    return HFRolloutServer(config, OmegaConf.create({"path": tiny_pair["small"]}), replica_rank=0)


def _prompts(n=5, seed=0, lengths=(3, 17, 9, 30, 1)) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 380) for _ in range(lengths[i % len(lengths)])] for i in range(n)]


async def _batched(srv, requests):
    """All requests queued before the batcher runs: one batch (up to max_batch_size)."""
    return await asyncio.gather(*(srv.generate(p, dict(sp)) for p, sp in requests))


def _alone(srv, requests):
    return [asyncio.run(srv.generate(p, dict(sp))) for p, sp in requests]


@pytest.fixture(scope="module")
def hf_model(tiny_pair):
    model = AutoModelForCausalLM.from_pretrained(tiny_pair["small"], dtype=torch.float32)
    return model.eval()


def _reference_log_probs(model, prompt, response, temperature):
    """log-softmax(logits / T) at the response tokens, from one forward of prompt + response."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logits = logits[len(prompt) - 1 : len(prompt) + len(response) - 1]
    if temperature > 0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


@pytest.mark.parametrize("params", [SAMPLED, GREEDY, {**SAMPLED, "temperature": 0.7, "top_p": 0.9, "top_k": 20}])
def test_batched_request_equals_request_alone(tiny_pair, params):
    prompts = _prompts()
    # a repeated prompt: its copies are the 0th and 1st sample of that prompt in both servers
    requests = [(p, params) for p in prompts] + [(prompts[1], params)]
    batched_srv = _server(tiny_pair)
    batched = asyncio.run(_batched(batched_srv, requests))
    assert batched_srv.batch_sizes == [len(requests)]
    alone_srv = _server(tiny_pair)
    alone = _alone(alone_srv, requests)
    assert alone_srv.batch_sizes == [1] * len(requests)
    for b, a in zip(batched, alone):
        assert b.token_ids == a.token_ids
        assert torch.allclose(torch.tensor(b.log_probs), torch.tensor(a.log_probs), atol=1e-5, rtol=0)
        assert b.stop_reason == "completed"
    if params is SAMPLED:
        assert batched[1].token_ids != batched[-1].token_ids, "the copies of a prompt must be different samples"


def test_mixed_parameters_in_one_batch(tiny_pair):
    """Greedy, sampled and filtered requests, with and without log-probs and with their own
    max_tokens, in one batch: each gets what it gets alone."""
    prompts = _prompts(6, seed=1)
    params = [
        GREEDY,
        SAMPLED,
        {**SAMPLED, "temperature": 0.6, "top_p": 0.8},
        {**SAMPLED, "top_k": 5, "logprobs": False},
        {**SAMPLED, "max_tokens": 3},
        {**GREEDY, "max_tokens": 5, "logprobs": False},
    ]
    requests = list(zip(prompts, params))
    srv = _server(tiny_pair)
    batched = asyncio.run(_batched(srv, requests))
    assert srv.batch_sizes == [len(requests)]
    alone = _alone(_server(tiny_pair), requests)
    for (_, sp), b, a in zip(requests, batched, alone):
        assert b.token_ids == a.token_ids
        assert (b.log_probs is None) == (not sp["logprobs"])
        if sp["logprobs"]:
            assert torch.allclose(torch.tensor(b.log_probs), torch.tensor(a.log_probs), atol=1e-5, rtol=0)
    assert len(batched[4].token_ids) <= 3 and len(batched[5].token_ids) <= 5


def test_greedy_equals_hf_generate_alone(tiny_pair, hf_model):
    srv = _server(tiny_pair)
    prompts = _prompts(6, seed=2)
    outs = asyncio.run(_batched(srv, [(p, GREEDY) for p in prompts]))
    eos = hf_model.generation_config.eos_token_id
    for p, o in zip(prompts, outs):
        ref = hf_model.generate(
            torch.tensor([p]), do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=0
        )[0, len(p) :].tolist()
        assert o.token_ids == ref


@pytest.mark.parametrize("temperature, top_p, top_k", [(1.0, 1.0, -1), (0.7, 0.9, 20)])
def test_samples_follow_the_per_request_seed_rule(tiny_pair, hf_model, temperature, top_p, top_k):
    """A batched sampled request draws what ``model.generate`` draws alone after
    ``torch.manual_seed(seed)``, seed from (base seed, prompt, step, k): the pre-batching rule."""
    params = {**SAMPLED, "temperature": temperature, "top_p": top_p, "top_k": top_k}
    srv = _server(tiny_pair)
    prompts = _prompts(5, seed=3)
    outs = asyncio.run(_batched(srv, [(p, params) for p in prompts]))
    seeds = _server(tiny_pair)
    eos = hf_model.generation_config.eos_token_id
    for p, o in zip(prompts, outs):
        torch.manual_seed(seeds._request_seed(p))
        ref = hf_model.generate(
            torch.tensor([p]),
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=max(0, top_k),
            max_new_tokens=12,
            eos_token_id=eos,
            pad_token_id=0,
        )[0, len(p) :].tolist()
        assert o.token_ids == ref


@pytest.mark.parametrize("params", [SAMPLED, {**SAMPLED, "temperature": 0.6, "top_p": 0.7}, GREEDY])
def test_log_probs_equal_a_plain_forward(tiny_pair, hf_model, params):
    srv = _server(tiny_pair)
    prompts = _prompts(5, seed=4)
    outs = asyncio.run(_batched(srv, [(p, params) for p in prompts]))
    for p, o in zip(prompts, outs):
        ref = _reference_log_probs(hf_model, p, o.token_ids, params["temperature"])
        assert len(o.log_probs) == len(o.token_ids)
        assert torch.allclose(torch.tensor(o.log_probs), ref, atol=1e-5, rtol=0), (o.log_probs, ref.tolist())


def test_eos_ends_a_response_others_run_to_max_tokens(tiny_pair):
    srv = _server(tiny_pair, response_length=16)
    eos = srv.eos_token_id
    prompts = _prompts(24, seed=5)
    outs = asyncio.run(_batched(srv, [(p, SAMPLED) for p in prompts]))
    ended = [o for o in outs if eos in o.token_ids]
    for o in outs:
        if eos in o.token_ids:
            assert o.token_ids.index(eos) == len(o.token_ids) - 1, "tokens after EOS"
            assert len(o.token_ids) <= 16 and len(o.log_probs) == len(o.token_ids)
        else:
            assert len(o.token_ids) == 16 and len(o.log_probs) == 16
    assert 0 < len(ended) < len(outs), "the tiny model should end some, not all, responses early"
    assert any(len(o.token_ids) < 16 for o in ended)

    # a model whose greedy answer is EOS at once: residual stream = embedding = ones, lm_head reads
    # only the EOS row; every response is exactly [eos] (EOS included, nothing after it)
    state = {k: torch.zeros_like(v) for k, v in srv.model.state_dict().items()}
    state["model.embed_tokens.weight"].fill_(1.0)
    state["model.norm.weight"].fill_(1.0)
    state["lm_head.weight"][eos] = 1.0
    srv.update_weights(state, global_steps=1)
    outs = asyncio.run(_batched(srv, [(p, GREEDY) for p in prompts[:4]]))
    assert [o.token_ids for o in outs] == [[eos]] * 4
    assert all(len(o.log_probs) == 1 for o in outs)


def test_max_tokens_and_length_limits(tiny_pair):
    srv = _server(tiny_pair, response_length=10, prompt_length=20)
    # all-zero weights: all-zero logits, greedy picks token 0 (not EOS) every time, so every row runs
    # to its own limit, in one batch
    srv.update_weights({k: torch.zeros_like(v) for k, v in srv.model.state_dict().items()}, global_steps=0)
    p_short, p_long = [5] * 4, [7] * 15  # default budget: min(10, 20 + 10 - len(prompt)) = 10 and 10
    p_over = [9] * 26  # 20 + 10 - 26 = 4 tokens
    requests = [
        (p_short, {**GREEDY, "max_tokens": 3}),
        (p_long, GREEDY),
        (p_over, GREEDY),
        (p_short, {**GREEDY, "max_new_tokens": 2}),
        ([9] * 40, GREEDY),  # no room left: still one token, as before
    ]
    outs = asyncio.run(_batched(srv, requests))
    assert srv.batch_sizes == [5]
    assert [o.token_ids for o in outs] == [[0] * 3, [0] * 10, [0] * 4, [0] * 2, [0]]
    assert [len(o.log_probs) for o in outs] == [3, 10, 4, 2, 1]


def test_same_seed_prompt_step_k_same_sample_across_servers(tiny_pair):
    """Resume exactness: a fresh server at the same step draws the same k-th samples, whatever
    the batches look like (here one batch vs. prompts interleaved in small batches)."""
    prompts = _prompts(3, seed=6)
    group = [p for p in prompts for _ in range(4)]  # n=4 copies of each prompt, verl's order
    a = _server(tiny_pair, max_batch_size=64)
    b = _server(tiny_pair, max_batch_size=3)
    state = {k: v.clone() for k, v in a.model.state_dict().items()}
    for srv in (a, b):
        srv.update_weights(state, global_steps=5)
    out_a = asyncio.run(_batched(a, [(p, SAMPLED) for p in group]))
    out_b = asyncio.run(_batched(b, [(p, SAMPLED) for p in group]))
    assert a.batch_sizes == [12] and b.batch_sizes == [3, 3, 3, 3]
    assert [o.token_ids for o in out_a] == [o.token_ids for o in out_b]
    # the k-th copies differ, and another step draws other samples
    assert len({tuple(o.token_ids) for o in out_a[:4]}) > 1
    c = _server(tiny_pair)
    c.update_weights(state, global_steps=6)
    out_c = asyncio.run(_batched(c, [(p, SAMPLED) for p in group]))
    assert [o.token_ids for o in out_c] != [o.token_ids for o in out_a]


def test_requests_arriving_during_a_batch_form_the_next_one(tiny_pair):
    srv = _server(tiny_pair, max_batch_size=4)
    prompts = _prompts(7, seed=7)

    async def staggered():
        first = [asyncio.create_task(srv.generate(p, dict(GREEDY))) for p in prompts[:5]]
        await asyncio.sleep(0)
        later = [asyncio.create_task(srv.generate(p, dict(GREEDY))) for p in prompts[5:]]
        return await asyncio.gather(*first, *later)

    outs = asyncio.run(staggered())
    assert sum(srv.batch_sizes) == 7 and max(srv.batch_sizes) <= 4
    alone = _alone(_server(tiny_pair), [(p, GREEDY) for p in prompts])
    assert [o.token_ids for o in outs] == [o.token_ids for o in alone]


def test_a_batch_waits_for_late_requests_until_full(tiny_pair):
    """With long waits, requests sent apart in time still share one batch once it is full."""
    srv = _server(tiny_pair, max_batch_size=3, batch_wait_ms=60_000, batch_max_wait_ms=60_000)
    prompts = _prompts(3, seed=8)

    async def apart():
        tasks = [asyncio.create_task(srv.generate(prompts[0], dict(GREEDY)))]
        await asyncio.sleep(0.05)
        tasks.append(asyncio.create_task(srv.generate(prompts[1], dict(SAMPLED))))
        await asyncio.sleep(0.05)
        tasks.append(asyncio.create_task(srv.generate(prompts[2], dict(GREEDY))))
        return await asyncio.gather(*tasks)

    outs = asyncio.run(apart())
    assert srv.batch_sizes == [3]
    alone = _alone(_server(tiny_pair), [(prompts[0], GREEDY), (prompts[1], SAMPLED), (prompts[2], GREEDY)])
    assert [o.token_ids for o in outs] == [o.token_ids for o in alone]


def test_engine_kwargs_knobs(tiny_pair):
    srv = _server(tiny_pair, max_batch_size=8, batch_wait_ms=2.5, batch_max_wait_ms=40)
    assert srv.max_batch_size == 8 and srv.batch_wait_s == pytest.approx(0.0025)
    assert srv.batch_max_wait_s == pytest.approx(0.04)
    default = _server(tiny_pair)
    assert (default.max_batch_size, default.batch_wait_s, default.batch_max_wait_s) == (64, 0.01, 0.1)
    with pytest.raises(ValueError, match="unknown keys"):
        _server(tiny_pair, max_batch=8)
    with pytest.raises(ValueError, match="max_batch_size >= 1"):
        _server(tiny_pair, max_batch_size=0)


def test_unsupported_parameters_are_refused(tiny_pair):
    srv = _server(tiny_pair)
    with pytest.raises(ValueError, match="repetition_penalty"):
        asyncio.run(srv.generate([5, 6], {**SAMPLED, "repetition_penalty": 1.1}))
    with pytest.raises(ValueError, match="top_p"):
        asyncio.run(srv.generate([5, 6], {**SAMPLED, "top_p": 1.5}))
    with pytest.raises(ValueError, match="text-only"):
        asyncio.run(srv.generate([5, 6], dict(SAMPLED), image_data=[object()]))
