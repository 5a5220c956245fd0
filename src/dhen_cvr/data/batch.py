"""The typed batch every model, loss and metric consumes (DESIGN sections 2-3).

Shapes: ``B`` examples, ``T`` = a sequence's padded length (<= its ``max_len``),
``H`` heads in spec label order. Sequences are *right-padded*, oldest item first, so the
newest item of row ``b`` sits at ``lengths[b] - 1`` and a causal encoder never attends
to padding from a valid position.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

__all__ = ["NUM_TIME_FEATURES", "Batch", "SequenceBatch"]

# Per item: log(t[i] - t[i-1] + 1) (paper 3.1; 0 for the first item) and
# log(request_time - t[i] + 1) (age of the item at the impression; its newest value is
# the gap between the newest item and the request, DESIGN 3.1).
NUM_TIME_FEATURES = 2


@dataclass
class SequenceBatch:
    """One behaviour sequence for a batch.

    ids:     field name -> LongTensor ``B x T`` of mapped ids (0 = padding)
    time:    FloatTensor ``B x T x 2`` time features (0 at padding)
    mask:    BoolTensor ``B x T``, True at valid items
    lengths: LongTensor ``B``, number of valid items (0 for an empty sequence)
    """

    ids: dict[str, Tensor]
    time: Tensor
    mask: Tensor
    lengths: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SequenceBatch:
        return SequenceBatch(
            ids={k: v.to(device, non_blocking=non_blocking) for k, v in self.ids.items()},
            time=self.time.to(device, non_blocking=non_blocking),
            mask=self.mask.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> SequenceBatch:
        return SequenceBatch(
            ids={k: v.pin_memory() for k, v in self.ids.items()},
            time=self.time.pin_memory(),
            mask=self.mask.pin_memory(),
            lengths=self.lengths.pin_memory(),
        )


@dataclass
class Batch:
    """A collated batch of impressions.

    dense:         FloatTensor ``B x n_dense``, raw values in spec order (the model
                   applies min-max with fitted stats, so serving sends raw values too)
    pretrained:    name -> FloatTensor ``B x dim``
    categorical:   name -> LongTensor ``B`` of mapped ids
    sequences:     name -> :class:`SequenceBatch`
    labels:        FloatTensor ``B x H`` in {0, 1}
    label_mask:    FloatTensor ``B x H``, 1 where the head's label is defined
    inclusion_prob: FloatTensor ``B``, probability the row survived down-sampling
                   (1 = kept for sure / unknown); evaluation weights rows by 1 / it
    weight:        FloatTensor ``B`` sample weights (1 by default)
    oracle:        FloatTensor ``B x H`` true probabilities where the data has them
                   (NaN elsewhere), never a model input; None when no column exists
    """

    dense: Tensor
    pretrained: dict[str, Tensor]
    categorical: dict[str, Tensor]
    sequences: dict[str, SequenceBatch]
    labels: Tensor
    label_mask: Tensor
    inclusion_prob: Tensor
    weight: Tensor
    oracle: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def mv(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            dense=mv(self.dense),
            pretrained={k: mv(v) for k, v in self.pretrained.items()},
            categorical={k: mv(v) for k, v in self.categorical.items()},
            sequences={k: v.to(device, non_blocking) for k, v in self.sequences.items()},
            labels=mv(self.labels),
            label_mask=mv(self.label_mask),
            inclusion_prob=mv(self.inclusion_prob),
            weight=mv(self.weight),
            oracle=None if self.oracle is None else mv(self.oracle),
            extras={k: mv(v) for k, v in self.extras.items()},
        )

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return Batch(
            dense=self.dense.pin_memory(),
            pretrained={k: v.pin_memory() for k, v in self.pretrained.items()},
            categorical={k: v.pin_memory() for k, v in self.categorical.items()},
            sequences={k: v.pin_memory() for k, v in self.sequences.items()},
            labels=self.labels.pin_memory(),
            label_mask=self.label_mask.pin_memory(),
            inclusion_prob=self.inclusion_prob.pin_memory(),
            weight=self.weight.pin_memory(),
            oracle=None if self.oracle is None else self.oracle.pin_memory(),
            extras={k: v.pin_memory() for k, v in self.extras.items()},
        )

    def select(self, index: Tensor) -> Batch:
        """Rows ``index`` of every tensor (used for tests and for splitting batches)."""

        def seq(s: SequenceBatch) -> SequenceBatch:
            return SequenceBatch(
                ids={k: v[index] for k, v in s.ids.items()},
                time=s.time[index],
                mask=s.mask[index],
                lengths=s.lengths[index],
            )

        return replace(
            self,
            dense=self.dense[index],
            pretrained={k: v[index] for k, v in self.pretrained.items()},
            categorical={k: v[index] for k, v in self.categorical.items()},
            sequences={k: seq(v) for k, v in self.sequences.items()},
            labels=self.labels[index],
            label_mask=self.label_mask[index],
            inclusion_prob=self.inclusion_prob[index],
            weight=self.weight[index],
            oracle=None if self.oracle is None else self.oracle[index],
            extras={k: v[index] for k, v in self.extras.items()},
        )


# A compile-time guard that the fields above stay in sync with ``to``/``pin_memory``.
assert {f.name for f in fields(Batch)} == {
    "dense", "pretrained", "categorical", "sequences", "labels", "label_mask",
    "inclusion_prob", "weight", "oracle", "extras",
}  # fmt: skip
