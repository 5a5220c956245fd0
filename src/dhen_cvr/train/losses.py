"""Training losses (paper section 3.2; DESIGN section 4).

The objective is ``Σ_h w_h * BCE_h + Σ_S α_S * L(S)``: a masked, sample-weighted BCE per
head (:class:`MultiTaskBCELoss`) plus the self-supervised sequence term
(:mod:`dhen_cvr.train.ssl`, re-exported here).

With ``formulation="esmm"`` (beyond the paper, its section 6; ESMM, arXiv 1804.07931)
every head other than the click head is a CVR tower and is trained through
``pCTCVR_h = pCTR * pCVR_h`` on the impression label; :func:`dhen_cvr.model.probabilities.esmm_probabilities`
gives what is served and evaluated in that formulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dhen_cvr.config.loss import LossConfig
from dhen_cvr.model.probabilities import esmm_click_index
from dhen_cvr.train.ssl import (
    MaskedItemLoss,
    NextActionLoss,
    SampledNegatives,
    build_ssl_loss,
    sample_negatives,
)

__all__ = [
    "MaskedItemLoss",
    "MultiTaskBCELoss",
    "NextActionLoss",
    "SampledNegatives",
    "build_ssl_loss",
    "keep_bce",
    "sample_negatives",
]


def keep_bce(logit: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Sample-weighted mean BCE of the any-keep-label head (``B`` each): it learns
    ``a_s = P_s(any keep label | x)`` for the exact down-sampling correction (DESIGN 10)."""
    dtype = torch.promote_types(logit.dtype, torch.float32)
    w = weight.to(dtype)
    nll = F.binary_cross_entropy_with_logits(logit.to(dtype), target.to(dtype), reduction="none")
    return (nll * w).sum() / w.sum().clamp_min(torch.finfo(dtype).tiny)


class MultiTaskBCELoss(nn.Module):
    """``Σ_h w_h * BCE_h`` where ``BCE_h`` is the sample-weighted mean over the rows whose
    label mask is 1 (a head with no such row contributes 0).

    ``formulation="esmm"``: for every head but ``click_head`` the BCE is on
    ``p = sigmoid(a_click) * sigmoid(a_h)``, computed in log space
    (``log p = logsigmoid(a_click) + logsigmoid(a_h)``, ``log(1-p) = log1mexp(log p)``,
    with ``log p`` clamped to ``<= -eps`` of the dtype, capping one row's loss near
    ``-log(eps)``). The label masks are applied as given: in this formulation a
    conversion label should be defined on every impression, not only on clicks.
    """

    head_weight: Tensor

    def __init__(
        self,
        head_names: Sequence[str],
        head_weights: dict[str, float] | None = None,
        *,
        formulation: Literal["independent", "esmm"] = "independent",
        click_head: str = "click",
    ) -> None:
        super().__init__()
        head_weights = head_weights or {}
        unknown = sorted(set(head_weights) - set(head_names))
        if unknown:
            raise ValueError(
                f"head_weights name unknown heads {unknown}; heads: {list(head_names)}"
            )
        self.head_names = list(head_names)
        self.formulation = formulation
        self.click_index = esmm_click_index(head_names, click_head) if formulation == "esmm" else -1
        weights = [float(head_weights.get(h, 1.0)) for h in self.head_names]
        self.register_buffer("head_weight", torch.tensor(weights), persistent=False)

    @classmethod
    def from_config(cls, config: LossConfig, head_names: Sequence[str]) -> MultiTaskBCELoss:
        return cls(
            head_names,
            config.head_weights,
            formulation=config.formulation,
            click_head=config.esmm_click_head,
        )

    def forward(
        self, logits: Tensor, labels: Tensor, label_mask: Tensor, weight: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """logits, labels, label_mask: ``B x H``; weight: ``B``. Returns the weighted total
        and each head's (unweighted by ``w_h``) mean BCE, all computed in float32+."""
        total, per_head = self.head_means(logits, labels, label_mask, weight)
        return total, dict(zip(self.head_names, per_head.unbind(0), strict=True))

    def head_means(
        self, logits: Tensor, labels: Tensor, label_mask: Tensor, weight: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` with the per-head means as one ``H`` tensor (the training
        loop's form: no per-head Python work)."""
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logits = logits.to(dtype)
        row_weight = label_mask.to(dtype) * weight.to(dtype)[:, None]  # B x H
        defined = row_weight > 0
        labels = torch.where(defined, labels.to(dtype), torch.zeros_like(logits))
        nll = self._negative_log_likelihood(logits, labels)
        weighted = torch.where(defined, nll * row_weight, torch.zeros_like(nll))
        denominator = row_weight.sum(0).clamp_min(torch.finfo(dtype).tiny)
        per_head = weighted.sum(0) / denominator  # H
        total = (per_head * self.head_weight.to(dtype)).sum()
        return total, per_head

    def _negative_log_likelihood(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``B x H`` per-entry BCE of the formulation's probability."""
        independent = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        if self.formulation == "independent":
            return independent
        c = self.click_index
        log_p = F.logsigmoid(logits) + F.logsigmoid(logits[:, c : c + 1])  # log pCTCVR
        log_p = log_p.clamp(max=-torch.finfo(logits.dtype).eps)
        product = -(labels * log_p + (1 - labels) * _log1mexp(log_p))
        is_click = torch.arange(logits.shape[1], device=logits.device) == c
        return torch.where(is_click, independent, product)


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both sides of ``-log 2`` (Mächler
    2012); each branch sees only inputs where it is finite, so gradients stay finite."""
    cut = -math.log(2.0)
    near_zero = torch.log(-torch.expm1(x.clamp(min=cut)))
    far = torch.log1p(-torch.exp(x.clamp(max=cut)))
    return torch.where(x > cut, near_zero, far)
