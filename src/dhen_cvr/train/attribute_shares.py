"""Fit the model's attribute-share tables on the training days (model/attribute_shares.py).

One pass over the days counts, per entry, the ``(key id, target id)`` pairs of the logged
sequence items (the ids the model sees, after the spec's mapping). Every process counts
every row, so all ranks install the same tables without a collective.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dhen_cvr.data.reader import ParquetBatchStream, make_loader
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.model.cvr_model import CVRModel

__all__ = ["fit_attribute_shares"]


@torch.no_grad()
def fit_attribute_shares(
    model: CVRModel, spec: FeatureSpec, days: list[Path], batch_size: int
) -> list[torch.Tensor]:
    """Count the pairs over ``days`` and install them in ``model``; returns the counts."""
    shares = model.attribute_shares
    if shares is None or not shares.configs:
        return []
    counts = [
        torch.zeros_like(shares.share_table(i), dtype=torch.float64)
        for i in range(len(shares.configs))
    ]
    stream = ParquetBatchStream(days, spec, batch_size=batch_size, shuffle=False)
    for batch in make_loader(stream):
        for i, config in enumerate(shares.configs):
            seq = batch.sequences[config.sequence]
            key = seq.ids[config.key][seq.mask]
            target = seq.ids[config.target][seq.mask]
            flat = key * counts[i].shape[1] + target
            counts[i].view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
    shares.set_counts(counts)
    return counts
