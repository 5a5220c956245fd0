"""What the model returns, consumed by the losses (train) and the exporter (serve)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

__all__ = ["ModelOutput", "SequenceEncoding", "TargetEmbedder"]


@dataclass
class SequenceEncoding:
    """One sequence's encoder pass, for the self-supervised loss (paper eq. 2-3).

    hidden:     ``B x T x d_ssl`` encoder output per position, projected to the SSL space
    mask:       ``B x T`` bool, True at valid items
    target_ids: ``B x T`` long, mapped ids of the sequence's target field (0 = padding)
    mlm_mask:   ``B x T`` bool, positions that were masked in the input (MLM), else None
    """

    hidden: Tensor
    mask: Tensor
    target_ids: Tensor
    mlm_mask: Tensor | None = None


@dataclass
class ModelOutput:
    """logits: ``B x H`` (spec label order, before sigmoid, on the *sampled* data's
    scale); sequences: per sequence name, the encoder pass for the SSL loss;
    keep_logit: ``B``, the sampled-scale logit that any of the spec's keep labels is 1
    (the exact down-sampling correction needs it), None when nothing is down-sampled."""

    logits: Tensor
    sequences: dict[str, SequenceEncoding]
    keep_logit: Tensor | None = None


class TargetEmbedder(Protocol):
    """Embeds SSL targets (positives and sampled negatives) into the SSL space."""

    def embed_targets(self, sequence: str, ids: Tensor) -> Tensor:
        """``ids`` of any shape ``(...)`` -> ``(..., d_ssl)``."""
        ...

    def num_target_ids(self, sequence: str) -> int:
        """Number of rows of the target field's table (ids ``1..n-1`` are real/OOV)."""
        ...
