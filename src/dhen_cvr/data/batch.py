"""The typed batch every model, loss and metric consumes (DESIGN sections 2-3).

Shapes: ``B`` examples, ``T`` = a sequence's padded length (<= its ``max_len``),
``H`` heads in spec label order. Sequences are *right-padded*, oldest item first, so the
newest item of row ``b`` sits at ``lengths[b] - 1`` and a causal encoder never attends
to padding from a valid position.

The fields are declared once, on the dataclasses; every per-field operation (device
moves, pinning, row selection, and the reader's concatenation and collation of decoded
blocks) goes through :func:`combine_fields`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["NUM_TIME_FEATURES", "Batch", "SequenceBatch", "combine_fields", "map_fields"]

_T = TypeVar("_T")
_Out = TypeVar("_Out")

SEQUENCES = "sequences"  # the field of nested per-sequence containers


def combine_fields(
    items: Sequence[Any],
    leaf: Callable[[list[Any]], Any],
    sequence: Callable[[list[Any]], Any] | None = None,
    *,
    out: Callable[..., _Out],
) -> _Out:
    """Build ``out(**fields)`` from containers of the same dataclass type (a
    :class:`Batch`, a decoded row block, a :class:`SequenceBatch`): each array field,
    and each value of a dict field, is ``leaf([that value of every item])``; the
    ``sequences`` dict's values are ``sequence([...])``; a field that is None in the
    first item stays None."""
    first = items[0]
    values: dict[str, Any] = {}
    for f in fields(first):
        value = getattr(first, f.name)
        if value is None:
            values[f.name] = None
        elif f.name == SEQUENCES:
            assert sequence is not None, "a container with sequences needs ``sequence``"
            values[f.name] = {k: sequence([getattr(i, f.name)[k] for i in items]) for k in value}
        elif isinstance(value, dict):
            values[f.name] = {k: leaf([getattr(i, f.name)[k] for i in items]) for k in value}
        else:
            values[f.name] = leaf([getattr(i, f.name) for i in items])
    return out(**values)


def map_fields(item: _T, fn: Callable[[Any], Any]) -> _T:
    """A copy of ``item`` (a :class:`Batch` or :class:`SequenceBatch`) with ``fn``
    applied to every tensor, nested sequences included."""

    def nested(seqs: list[Any]) -> Any:
        return map_fields(seqs[0], fn)

    return combine_fields([item], lambda v: fn(v[0]), nested, out=type(item))


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
        return map_fields(self, lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> SequenceBatch:
        return map_fields(self, lambda v: v.pin_memory())


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
        return map_fields(self, lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return map_fields(self, lambda v: v.pin_memory())

    def select(self, index: Tensor) -> Batch:
        """Rows ``index`` of every tensor (used for tests and for splitting batches)."""
        return map_fields(self, lambda v: v[index])
