"""Served probabilities from head logits, by loss formulation (paper section 2.2; ESMM,
arXiv 1804.07931): in the ESMM formulation every head other than the click head is a CVR
tower trained through ``pCTCVR_h = pCTR * pCVR_h`` on the impression label."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["esmm_click_index", "esmm_probabilities"]


def esmm_probabilities(logits: Tensor, head_names: Sequence[str], click_head: str) -> Tensor:
    """``B x H`` logits -> ``B x H`` probabilities in the ESMM formulation: the click column
    is ``sigmoid(click)``, every other column ``sigmoid(click) * sigmoid(logit_h)``."""
    click = esmm_click_index(head_names, click_head)
    probs = torch.sigmoid(logits)
    is_click = torch.arange(len(head_names), device=logits.device) == click
    return torch.where(is_click, probs, probs * probs[:, click : click + 1])


def esmm_click_index(head_names: Sequence[str], head: str) -> int:
    """Column of the click head in ``head_names`` (``ValueError`` if absent)."""
    if head not in head_names:
        raise ValueError(f"ESMM click head {head!r} is not one of the heads {list(head_names)}")
    return list(head_names).index(head)
