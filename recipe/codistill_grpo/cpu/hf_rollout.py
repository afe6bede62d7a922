"""CPU rollout backend ``hf`` for verl 0.9.1: HF ``generate`` behind verl's rollout-replica interface.

verl 0.9.1 ships only GPU rollout engines (vllm, sglang, trtllm). On a CPU-only host (tests, the
smoke run) this module registers a fourth backend, ``actor_rollout_ref.rollout.name=hf``, with the
three pieces verl's hybrid-engine path talks to:

* ``HFRolloutServer``: a Ray actor holding a plain ``transformers`` causal LM; verl's agent loop
  calls its token-in/token-out ``generate(prompt_ids, sampling_params, request_id, ...)``; sampled
  requests are seeded from (prompt, step, k-th copy of the prompt) so runs are reproducible and a
  resumed run draws the samples the uninterrupted run drew;
  ``update_weights(state_dict)`` loads new weights; sleep/wake are no-ops (nothing to free on CPU).
* ``HFReplica``: the ``RolloutReplica`` that launches one server per replica (TP=1 on CPU).
* ``HFServerAdapter``: the ``BaseRollout`` living inside the actor worker; verl's default "naive"
  checkpoint engine hands it the actor's full tensors after each update and it pushes them to the
  server, so the rollout always samples from the current small actor.

Registration touches verl's two rollout registries (``_ROLLOUT_REGISTRY`` has no register
function in 0.9.1, so the entry is added to the dict). The recipe's verl plugin loads the module
in every process when ``VERL_PLATFORM=cpu``; it is never used on the GPU path.

Test hook: when ``CODISTILL_ROLLOUT_DUMP_DIR`` is set, every weight update writes
``rollout_weights_step_{N}.pt`` (the server's full state dict after the update) there, so a test can
check that the rollout weights equal the small actor's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import zlib
from typing import Any, Generator, Optional

import numpy as np
import ray
import torch

from verl.workers.rollout.base import _ROLLOUT_REGISTRY, BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

logger = logging.getLogger(__name__)

BACKEND_NAME = "hf"
DUMP_DIR_ENV = "CODISTILL_ROLLOUT_DUMP_DIR"


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


class HFRolloutServer:
    """One HF model serving token-in/token-out generation for one rollout replica (CPU)."""

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
        self.global_steps: Optional[int] = None
        self.weight_version = 0
        self._lock = threading.Lock()
        self._base_seed = int(_cfg_get(config, "seed", 0) or 0) + 1_000_003 * replica_rank
        self._prompt_counts: dict[int, int] = {}

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

    def _generate_sync(self, prompt_ids: list[int], sampling_params: dict[str, Any], seed: Optional[int]) -> TokenOutput:
        params = dict(sampling_params)
        prompt_len = len(prompt_ids)
        response_length = int(_cfg_get(self.config, "response_length"))
        prompt_length = int(_cfg_get(self.config, "prompt_length"))
        max_tokens = params.pop("max_tokens", None) or params.pop("max_new_tokens", None)
        if max_tokens is None:
            max_tokens = min(response_length, prompt_length + response_length - prompt_len)
        max_tokens = max(1, int(max_tokens))
        temperature = float(params.get("temperature", 1.0) or 0.0)
        top_p = float(params.get("top_p", 1.0) if params.get("top_p") is not None else 1.0)
        top_k = int(params.get("top_k", -1) if params.get("top_k") is not None else -1)
        want_logprobs = bool(params.get("logprobs", False))

        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "return_dict_in_generate": True,
            "output_scores": want_logprobs,
        }
        if temperature <= 0.0:
            gen_kwargs["do_sample"] = False
        else:
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=max(0, top_k))

        input_ids = torch.tensor([prompt_ids], dtype=torch.long)
        with self._lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **gen_kwargs
            )
        response = out.sequences[0, prompt_len:]
        log_probs = None
        if want_logprobs:
            scores = torch.stack(out.scores, dim=0)[:, 0, :].float()  # (T, V), processed logits
            log_probs = torch.log_softmax(scores, dim=-1).gather(-1, response[:, None]).squeeze(-1).tolist()
        return TokenOutput(
            token_ids=response.tolist(),
            log_probs=log_probs,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
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
        prompt_ids = list(prompt_ids)
        temperature = sampling_params.get("temperature", 1.0)
        seed = self._request_seed(prompt_ids) if temperature and float(temperature) > 0 else None
        return await asyncio.to_thread(self._generate_sync, prompt_ids, sampling_params, seed)

    def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> int:
        """Load the actor's full weights; names are HF parameter names. Returns the new weight version."""
        with self._lock:
            missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
            tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
            missing = [k for k in missing if k not in tied]
            if unexpected or missing:
                raise ValueError(
                    f"hf rollout weight update does not match the model: missing={missing[:4]} unexpected={unexpected[:4]}"
                )
        self.global_steps = global_steps
        self.weight_version += 1
        self._prompt_counts.clear()
        dump_dir = os.environ.get(DUMP_DIR_ENV)
        if dump_dir:
            os.makedirs(dump_dir, exist_ok=True)
            step = -1 if global_steps is None else int(global_steps)
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            torch.save(state, os.path.join(dump_dir, f"rollout_weights_step_{step}_r{self.replica_rank}.pt"))
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
        global_steps: Optional[int] = None,
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
