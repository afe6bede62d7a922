"""CPU rollout backend ``hf`` for verl 0.9.1: a batching HF causal LM behind verl's rollout-replica interface.

verl 0.9.1 ships only GPU rollout engines (vllm, sglang, trtllm). On a CPU-only host (tests, the
smoke run) this module registers a fourth backend, ``actor_rollout_ref.rollout.name=hf``, with the
three pieces verl's hybrid-engine path talks to:

* ``HFRolloutServer``: a Ray actor holding a plain ``transformers`` causal LM; verl's agent loop
  calls its token-in/token-out ``generate(prompt_ids, sampling_params, request_id, ...)`` once per
  sample, concurrently; ``update_weights(state_dict)`` loads new weights; sleep/wake are no-ops
  (nothing to free on CPU).
* ``HFReplica``: the ``RolloutReplica`` that launches one server per replica (TP=1 on CPU).
* ``HFServerAdapter``: the ``BaseRollout`` living inside the actor worker; verl's default "naive"
  checkpoint engine hands it the actor's full tensors after each update and it pushes them to the
  server, so the rollout always samples from the current small actor.

Batching. ``generate`` only queues its request; one batcher task per event loop collects the
queued requests into a batch, which closes when it holds ``max_batch_size`` requests, when no new
request has arrived for ``batch_wait_ms``, or ``batch_max_wait_ms`` after its first request. The
batch runs in a worker thread: the prompts are left-padded (position ids count real tokens only),
one prefill fills a KV cache, and one decode loop picks every row's next token. A row stops at EOS
(the EOS token is its last token, as with ``model.generate``) or at its own ``max_tokens`` and is
then dropped from the batch and the cache. Requests that arrive while a batch runs form the next
one. Knobs, with their defaults in ``BATCH_KNOBS``, are read from
``actor_rollout_ref.rollout.engine_kwargs.hf`` (e.g.
``+actor_rollout_ref.rollout.engine_kwargs.hf.max_batch_size=32``).

Sampling and seeding. Rows are independent: each request's tokens depend only on its prompt, its
own sampling parameters and its seed, never on the other rows of its batch (up to float rounding
of the batched matmuls, far below the sampling resolution). A sampled request gets the seed
``_request_seed`` computes when the request arrives, from (base seed = ``rollout.seed`` +
1_000_003 * replica rank, prompt ids, training step, k = how many requests for the same prompt
came before it in this step; the counters restart at each weight update), so a run resumed from a
checkpoint draws the samples the uninterrupted run drew. Each row has its own ``torch.Generator``
seeded with that seed, and draws its token with ``torch.multinomial`` from the softmax of the
temperature-scaled, top-k- then top-p-filtered logits (HF's warpers): the same draws as the
pre-batching server, which ran ``model.generate(do_sample=True)`` alone after
``torch.manual_seed(seed)``. Greedy requests (temperature 0) take the argmax and use no seed.
Log-probs (when ``sampling_params["logprobs"]``) are the log-softmax of the temperature-scaled
logits at the chosen tokens, without the top-k/top-p filtering: the quantity verl's actor
recomputes (``logits / temperature``, log-softmax); greedy rows use the unscaled logits.
``repetition_penalty`` other than 1 is refused.

Registration touches verl's two rollout registries (``_ROLLOUT_REGISTRY`` has no register
function in 0.9.1, so the entry is added to the dict). The recipe's verl plugin loads the module
in every process when ``VERL_PLATFORM=cpu``; it is never used on the GPU path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import zlib
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

logger = logging.getLogger(__name__)

BACKEND_NAME = "hf"
# batching knobs, ``actor_rollout_ref.rollout.engine_kwargs.hf.<name>`` (module docstring)
BATCH_KNOBS = {"max_batch_size": 64, "batch_wait_ms": 10.0, "batch_max_wait_ms": 100.0}


def server_actor_name(replica_rank: int, node_rank: int = 0) -> str:
    return f"codistill_hf_server_{replica_rank}_{node_rank}"


def _cfg_get(cfg, key, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    getter = getattr(cfg, "get", None)
    if callable(getter):
        try:
            return getter(key, default)
        except Exception:
            pass
    return getattr(cfg, key, default)


@dataclass
class _Request:
    """One queued ``generate`` call, with its sampling parameters resolved."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float  # <= 0: greedy
    top_p: float
    top_k: int  # <= 0: off
    want_logprobs: bool
    seed: int | None  # None for greedy requests
    future: asyncio.Future | None = None


class HFRolloutServer:
    """One HF model serving token-in/token-out generation for one rollout replica (CPU).

    Concurrent ``generate`` calls are queued and answered in batches: one left-padded prefill and
    one KV-cached decode loop per batch (see the module docstring).
    """

    def __init__(self, config, model_config, replica_rank: int = 0, node_rank: int = 0):
        from transformers import AutoModelForCausalLM
        from verl.utils.fs import copy_to_local

        torch.set_num_threads(1)
        self.config = config
        self.replica_rank = replica_rank
        self.node_rank = node_rank
        path = _cfg_get(model_config, "local_path") or _cfg_get(model_config, "path")
        self.model_path = copy_to_local(path)
        override = dict(_cfg_get(model_config, "override_config", {}) or {})
        attn = override.get("attn_implementation", "sdpa")
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_path, torch_dtype=torch.float32, attn_implementation=attn
        )
        self.model.eval()
        self.eos_token_id = self.model.generation_config.eos_token_id
        self.pad_token_id = self.model.generation_config.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id[0] if isinstance(self.eos_token_id, list) else self.eos_token_id
        eos = self.eos_token_id
        self._eos_ids = frozenset(() if eos is None else (eos if isinstance(eos, (list, tuple)) else [eos]))
        self.global_steps: int | None = None
        self.weight_version = 0
        self._lock = threading.Lock()
        self._base_seed = int(_cfg_get(config, "seed", 0) or 0) + 1_000_003 * replica_rank
        self._prompt_counts: dict[int, int] = {}

        knobs = dict(_cfg_get(_cfg_get(config, "engine_kwargs", {}) or {}, BACKEND_NAME, {}) or {})
        unknown = set(knobs) - set(BATCH_KNOBS)
        if unknown:
            raise ValueError(f"rollout.engine_kwargs.hf: unknown keys {sorted(unknown)}, known: {sorted(BATCH_KNOBS)}")
        knobs = {**BATCH_KNOBS, **knobs}
        self.max_batch_size = int(knobs["max_batch_size"])
        self.batch_wait_s = float(knobs["batch_wait_ms"]) / 1000.0
        self.batch_max_wait_s = float(knobs["batch_max_wait_ms"]) / 1000.0
        if self.max_batch_size < 1 or self.batch_wait_s < 0 or self.batch_max_wait_s < 0:
            raise ValueError(
                "rollout.engine_kwargs.hf: need max_batch_size >= 1, batch_wait_ms >= 0 and "
                f"batch_max_wait_ms >= 0, got {knobs}"
            )
        # the request queue and its batcher task belong to one event loop (Ray's, or one asyncio.run in tests)
        self._pending: list[_Request] = []
        self._wakeup: asyncio.Event | None = None
        self._batcher: asyncio.Task | None = None
        self._batcher_loop: asyncio.AbstractEventLoop | None = None
        self.batch_sizes: list[int] = []  # size of every batch run, for tests and debugging

    def _request_seed(self, prompt_ids: list[int]) -> int:
        """Seed of one sampled request: a function of (base seed, prompt, step, k-th request of that prompt).

        So a run resumed from a checkpoint draws the same samples as the uninterrupted run (the
        k-th copy of a prompt in a group gets the k-th sample; the counters restart at each weight
        update, i.e. each training step).
        """
        key = zlib.crc32(np.asarray(prompt_ids, dtype=np.int64).tobytes())
        k = self._prompt_counts.get(key, 0)
        self._prompt_counts[key] = k + 1
        step = -1 if self.global_steps is None else int(self.global_steps)
        return (self._base_seed * 2_654_435_761 + key * 40_503 + (step + 2) * 7_919 + k * 104_729) % (2**63 - 1)

    def get_server_address(self):
        return server_actor_name(self.replica_rank, self.node_rank), 0

    def _make_request(self, prompt_ids: list[int], sampling_params: dict[str, Any]) -> _Request:
        params = dict(sampling_params)
        prompt_len = len(prompt_ids)
        if prompt_len == 0:
            raise ValueError("rollout.name=hf: empty prompt")
        response_length = int(_cfg_get(self.config, "response_length"))
        prompt_length = int(_cfg_get(self.config, "prompt_length"))
        max_tokens = params.pop("max_tokens", None) or params.pop("max_new_tokens", None)
        if max_tokens is None:
            max_tokens = min(response_length, prompt_length + response_length - prompt_len)
        max_tokens = max(1, int(max_tokens))
        temperature = float(params.get("temperature", 1.0) or 0.0)
        top_p = float(params.get("top_p", 1.0) if params.get("top_p") is not None else 1.0)
        top_k = int(params.get("top_k", -1) if params.get("top_k") is not None else -1)
        repetition_penalty = params.get("repetition_penalty")
        if repetition_penalty is not None and float(repetition_penalty) != 1.0:
            raise ValueError(f"rollout.name=hf does not implement repetition_penalty={repetition_penalty}")
        if temperature > 0.0 and not 0.0 <= top_p <= 1.0:  # checked here: an error in a batch fails all of it
            raise ValueError(f"rollout.name=hf: top_p must be in [0, 1], got {top_p}")
        # seeds are drawn in arrival order, as before batching: the k-th copy of a prompt gets the k-th seed
        seed = self._request_seed(prompt_ids) if temperature > 0.0 else None
        return _Request(
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            want_logprobs=bool(params.get("logprobs", False)),
            seed=seed,
        )

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str = "",
        image_data=None,
        video_data=None,
        **kwargs,
    ) -> TokenOutput:
        if image_data is not None or video_data is not None:
            raise ValueError("rollout.name=hf (CPU backend) is text-only: got image/video inputs")
        req = self._make_request([int(t) for t in prompt_ids], sampling_params)
        loop = asyncio.get_running_loop()
        req.future = loop.create_future()
        if self._batcher_loop is not loop or self._batcher is None or self._batcher.done():
            self._pending = []  # requests of an earlier loop can no longer be answered
            self._wakeup = asyncio.Event()
            self._batcher_loop = loop
            self._batcher = loop.create_task(self._batch_loop())
        self._pending.append(req)
        self._wakeup.set()
        return await req.future

    async def _batch_loop(self):
        """Collect queued requests into a batch, run it in a worker thread, answer each, repeat.

        A batch closes when it holds ``max_batch_size`` requests, when no request has arrived for
        ``batch_wait_ms``, or ``batch_max_wait_ms`` after its first request, whichever comes first.
        Requests arriving while a batch runs queue up for the next one.
        """
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup
        while True:
            while not self._pending:
                wakeup.clear()
                await wakeup.wait()
            hard_deadline = loop.time() + self.batch_max_wait_s
            while len(self._pending) < self.max_batch_size:
                remaining = min(self.batch_wait_s, hard_deadline - loop.time())
                if remaining <= 0:
                    break
                wakeup.clear()
                try:
                    await asyncio.wait_for(wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [r for r in self._pending[: self.max_batch_size] if not r.future.done()]
            del self._pending[: self.max_batch_size]
            if not batch:
                continue
            try:
                outputs = await asyncio.to_thread(self._generate_batch, batch)
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            for r, out in zip(batch, outputs):
                if not r.future.done():
                    r.future.set_result(out)

    def _select_tokens(self, logits: torch.Tensor, reqs: list[_Request], gens: list[torch.Generator | None]):
        """Next token (and its log-prob) of every row; rows grouped by sampling parameters.

        Greedy rows: argmax of the logits, log-prob from the unscaled logits. Sampled rows: HF's
        warpers (temperature, then top-k, then top-p) and one ``torch.multinomial`` draw from the
        row's own generator, i.e. exactly what ``model.generate(do_sample=True)`` does for a batch of
        one after ``torch.manual_seed(seed)``; the log-prob is the log-softmax of the
        temperature-scaled logits (no top-k/top-p), the quantity verl's actor recomputes.
        """
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

        n = logits.shape[0]
        tokens = torch.empty(n, dtype=torch.long)
        logprobs = torch.zeros(n, dtype=torch.float32)
        groups: dict[tuple, list[int]] = {}
        for j, r in enumerate(reqs):
            key = (0.0, 0, 1.0) if r.temperature <= 0.0 else (r.temperature, max(0, r.top_k), r.top_p)
            groups.setdefault(key, []).append(j)
        want_any = any(r.want_logprobs for r in reqs)
        for (temperature, top_k, top_p), rows in groups.items():
            idx = torch.tensor(rows, dtype=torch.long)
            scores = logits[idx] if len(rows) < n else logits
            if temperature <= 0.0:
                chosen = torch.argmax(scores, dim=-1)
            else:
                if temperature != 1.0:
                    scores = scores / temperature
                filtered = scores
                if top_k > 0:
                    filtered = TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1)(None, filtered)
                if top_p < 1.0:
                    filtered = TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1)(None, filtered)
                probs = torch.softmax(filtered, dim=-1)
                chosen = torch.empty(len(rows), dtype=torch.long)
                for i, j in enumerate(rows):
                    chosen[i] = torch.multinomial(probs[i : i + 1], num_samples=1, generator=gens[j])[0, 0]
            tokens[idx] = chosen
            if want_any:
                logprobs[idx] = torch.log_softmax(scores, dim=-1).gather(-1, chosen[:, None]).squeeze(-1)
        return tokens, logprobs

    def _generate_batch(self, reqs: list[_Request]) -> list[TokenOutput]:
        """One left-padded prefill and one KV-cached decode loop for all of ``reqs``.

        A row stops at EOS (kept as its last token) or at its own ``max_tokens``; finished rows are
        dropped from the batch and the KV cache, so they neither run on nor get more tokens.
        """
        from transformers import DynamicCache

        n = len(reqs)
        width = max(len(r.prompt_ids) for r in reqs)
        input_ids = torch.full((n, width), int(self.pad_token_id), dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(reqs):
            input_ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attention_mask[i, width - len(r.prompt_ids) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        gens = [None if r.seed is None else torch.Generator().manual_seed(r.seed) for r in reqs]
        token_ids: list[list[int]] = [[] for _ in reqs]
        log_probs: list[list[float]] = [[] for _ in reqs]
        active = list(range(n))  # batch row -> request

        with self._lock, torch.no_grad():
            global_steps = self.global_steps
            self.batch_sizes.append(n)
            cache = DynamicCache(config=self.model.config)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            next_pos = position_ids[:, -1] + 1
            while True:
                logits = out.logits[:, -1, :].to(dtype=torch.float32)
                del out
                tokens, lps = self._select_tokens(logits, [reqs[i] for i in active], [gens[i] for i in active])
                keep = []
                for row, i in enumerate(active):
                    tok = int(tokens[row])
                    token_ids[i].append(tok)
                    if reqs[i].want_logprobs:
                        log_probs[i].append(float(lps[row]))
                    if tok not in self._eos_ids and len(token_ids[i]) < reqs[i].max_tokens:
                        keep.append(row)
                if not keep:
                    break
                if len(keep) < len(active):
                    sel = torch.tensor(keep, dtype=torch.long)
                    cache.batch_select_indices(sel)
                    attention_mask, next_pos, tokens = attention_mask[sel], next_pos[sel], tokens[sel]
                    active = [active[row] for row in keep]
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
                out = self.model(
                    input_ids=tokens[:, None],
                    attention_mask=attention_mask,
                    position_ids=next_pos[:, None],
                    past_key_values=cache,
                    use_cache=True,
                )
                next_pos = next_pos + 1

        return [
            TokenOutput(
                token_ids=token_ids[i],
                log_probs=log_probs[i] if r.want_logprobs else None,
                stop_reason="completed",
                extra_fields={"global_steps": global_steps},
            )
            for i, r in enumerate(reqs)
        ]

    def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Load the actor's full weights; names are HF parameter names. Returns the new weight version."""
        with self._lock:
            missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
            tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
            missing = [k for k in missing if k not in tied]
            if unexpected or missing:
                raise ValueError(
                    f"hf rollout weight update does not match the model: "
                    f"missing={missing[:4]} unexpected={unexpected[:4]}"
                )
        self.global_steps = global_steps
        self.weight_version += 1
        self._prompt_counts.clear()
        return self.weight_version

    def get_weight_version(self) -> int:
        return self.weight_version

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    # Memory management and request control: nothing to free or abort on CPU.
    async def wake_up(self, tags: list[str] | None = None):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False):
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


class HFReplica(RolloutReplica):
    """Rollout replica backed by one ``HFRolloutServer`` Ray actor (CPU, TP=1)."""

    async def launch_servers(self):
        assert len(self.workers) == self.world_size, (
            f"worker number {len(self.workers)} not equal to world size {self.world_size}"
        )
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=server_actor_name(self.replica_rank, 0),
                num_cpus=0,
                max_concurrency=self.max_concurrency,
            )
            .remote(
                config=self.config,
                model_config=self.model_config,
                replica_rank=self.replica_rank,
                node_rank=0,
            )
        )
        self.servers = [server]
        address, _ = await server.get_server_address.remote()
        self._server_handle = server
        self._server_address = address

    def rollout_worker_use_gpu(self) -> bool:
        return False


class HFServerAdapter(BaseRollout):
    """Lives in each actor worker; pushes the actor's full weights to its replica's HF server."""

    def __init__(self, config, model_config, device_mesh, *args, replica_rank: int = -1, **kwargs):
        super().__init__(config, model_config, device_mesh)
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        self.is_leader = rank % rollout_world_size == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank, 0))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        global_steps: int | None = None,
        **kwargs,
    ):
        if wire_format != "named_tensors":
            raise ValueError(f"rollout.name=hf supports only wire_format='named_tensors', got {wire_format!r}")
        state = {}
        for name, tensor in weights:
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            state[name] = tensor.detach().to("cpu", copy=True)
        if self.is_leader:
            await self._server_handle().update_weights.remote(state, global_steps)


def register() -> None:
    """Add the ``hf`` backend to verl's rollout registries (idempotent)."""
    _ROLLOUT_REGISTRY[(BACKEND_NAME, "async")] = f"{__name__}.HFServerAdapter"
    RolloutReplicaRegistry.register(BACKEND_NAME, lambda: HFReplica)


register()
