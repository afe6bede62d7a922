"""CPU platform for verl 0.9.1: lets verl's real GPU trainer run on a machine with no accelerator.

Used only by CPU runs (``platform=cpu``: tests, the CPU smoke run, ``scripts/bench_step.py``); never
imported on the GPU path. The recipe's verl plugin (``recipe/codistill_grpo/plugin.py``) imports it
in every process (driver and Ray workers) when ``VERL_PLATFORM=cpu``, which ``configs/platform/cpu.yaml``
sets through ``run.env``.

What it does, and why (docs/design.md, "The CPU shim", lists the obstacles it gets past):

* registers ``PlatformCPU`` in ``verl.plugin.platform.PlatformRegistry`` under the name ``cpu``:
  device ``cpu``, collective backend ``gloo``, Ray resource ``GPU`` (the driver gives Ray one
  *logical* GPU so that verl's placement groups can be built), and a device module that stands
  in for ``torch.cuda`` (no-op memory/sync functions, RNG state from the CPU generator);
* patch 1: verl builds the process-group backend string as
  ``f"cpu:gloo,{device}:{backend}"``, which on this platform reads ``cpu:gloo,cpu:gloo`` and
  torch rejects as a duplicate device. ``torch.distributed.init_process_group`` is wrapped so
  that a backend string whose entries are all ``cpu:gloo`` becomes ``gloo``; every other call
  passes through unchanged;
* patch 2: verl's FSDP2 engine gives every forward-only model (the ``ref`` role, here the frozen
  teacher) ``CPUOffloadPolicy(pin_memory=True)``, and ``Tensor.pin_memory`` raises "Cannot access
  accelerator device" on a host without one. Pinning host memory only matters for copies to an
  accelerator, so ``Tensor.pin_memory`` returns the tensor itself when no accelerator is present.

Both patches are installed only when ``VERL_PLATFORM=cpu``.

verl's FSDP engine is registered for ``cuda``/``npu`` only; ``VERL_ENGINE_DEVICE=cuda`` (verl's
own switch) makes the engine registry hand out the FSDP engine, which then runs on CPU tensors.
"""

from __future__ import annotations

import functools
import os
import types
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed
from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM_NAME = "cpu"


def _noop(*args, **kwargs):
    return None


def _zero(*args, **kwargs) -> int:
    return 0


def _build_device_module() -> types.ModuleType:
    """A stand-in for ``torch.cuda`` backed by ``torch.cpu`` plus no-op memory functions."""
    mod = types.ModuleType("codistill_cpu_device")
    for name in ("Stream", "Event", "StreamContext", "stream", "current_stream", "synchronize", "set_device"):
        setattr(mod, name, getattr(torch.cpu, name))
    mod.is_available = lambda: True
    mod.device_count = lambda: 1
    mod.current_device = lambda: torch.device("cpu")
    mod.get_device_name = lambda *a, **k: "cpu"
    mod.empty_cache = _noop
    mod.ipc_collect = _noop
    mod.set_per_process_memory_fraction = _noop
    mod.reset_peak_memory_stats = _noop
    mod.memory_allocated = _zero
    mod.memory_reserved = _zero
    mod.max_memory_allocated = _zero
    mod.max_memory_reserved = _zero
    mod.mem_get_info = lambda *a, **k: (0, 0)
    mod.manual_seed = torch.manual_seed
    mod.manual_seed_all = torch.manual_seed
    mod.get_rng_state = lambda *a, **k: torch.get_rng_state()
    mod.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    mod.is_bf16_supported = lambda *a, **k: True
    return mod


_DEVICE_MODULE = _build_device_module()


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl platform for CPU-only hosts (gloo collectives, logical Ray ``GPU`` resource)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: only an explicit VERL_PLATFORM=cpu selects it.
        return False

    def current_device(self):
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def normalize_backend(backend: str | None) -> str | None:
    """``"cpu:gloo,cpu:gloo"`` -> ``"gloo"``; any other value is returned unchanged."""
    if isinstance(backend, str) and "," in backend:
        parts = {p.strip() for p in backend.split(",") if p.strip()}
        if parts == {"cpu:gloo"}:
            return "gloo"
    return backend


def _install_backend_normalisation() -> None:
    original = torch.distributed.init_process_group
    if getattr(original, "_codistill_cpu_shim", False):
        return

    @functools.wraps(original)
    def init_process_group(*args, **kwargs):
        if "backend" in kwargs:
            kwargs["backend"] = normalize_backend(kwargs["backend"])
        elif args:
            args = (normalize_backend(args[0]), *args[1:])
        return original(*args, **kwargs)

    init_process_group._codistill_cpu_shim = True
    torch.distributed.init_process_group = init_process_group


def _install_pin_memory_passthrough() -> None:
    original = torch.Tensor.pin_memory
    if getattr(original, "_codistill_cpu_shim", False) or torch.accelerator.is_available():
        return

    @functools.wraps(original)
    def pin_memory(self, *args, **kwargs):
        return self

    pin_memory._codistill_cpu_shim = True
    torch.Tensor.pin_memory = pin_memory


if os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME:
    _install_backend_normalisation()
    _install_pin_memory_passthrough()
