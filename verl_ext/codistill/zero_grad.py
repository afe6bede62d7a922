"""Which sequences cannot change the weights: their policy-loss term is identically zero.

verl's PPO token loss is ``w * f(ratio, A)`` with ``f = 0`` whenever ``A = 0`` (both clip branches
are ``-A * ratio``-shaped), so a sequence whose every valid token has ``A * w = 0`` contributes
exactly zero loss and exactly zero gradient, as long as nothing else (an entropy bonus, a KL loss)
is added per token.
"""

from __future__ import annotations

import torch

__all__ = ["zero_gradient_rows"]


@torch.no_grad()
def zero_gradient_rows(
    advantages: torch.Tensor, response_mask: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows whose loss term is identically zero.

    ``skip[i] = not any_t (m[i,t] and A[i,t] != 0 and w[i,t] != 0)`` (an empty response is skipped).

    Args:
        advantages: ``(bs, T)`` the advantages the loss uses (``A_s``, or ``A_l`` for the large model).
        response_mask: ``(bs, T)``.
        weights: ``(bs, T)`` the importance weights the loss multiplies by (None: all 1).

    Returns:
        ``(bs,)`` bool.
    """
    live = (advantages != 0) & response_mask.bool()
    if weights is not None:
        live &= weights != 0
    return ~live.any(dim=-1)
