"""Request-level scoring: one user's sequences encoded once against N candidates equals the
per-row path on the user's row repeated N times (the serving shortcut, DESIGN 7)."""

from __future__ import annotations

import pytest
import torch

from dhen_cvr.data.batch import Batch, SequenceBatch
from dhen_cvr.model.cvr_model import CVRModel
from helpers_model import random_batch, tiny_config, tiny_spec

CONFIGS = {
    "gated+match": {"tokens": ["last", "target_attention", "match", "mean"]},
    "softmax": {"tokens": ["last", "target_attention"], "target_attention": "softmax"},
    "bidirectional": {"tokens": ["target_attention", "match"], "causal": False},
}


def _request(batch: Batch, user: int) -> dict[str, SequenceBatch]:
    """Row ``user``'s sequences as one-row batches."""
    index = torch.tensor([user])
    return {name: batch.select(index).sequences[name] for name in batch.sequences}


def _repeated(batch: Batch, user: int) -> dict[str, SequenceBatch]:
    """Row ``user``'s sequences repeated on every row (what a per-row server sends)."""
    n = len(batch)
    index = torch.full((n,), user)
    return {name: batch.select(index).sequences[name] for name in batch.sequences}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("user", [0, 3])  # row 0 has empty sequences
def test_request_scoring_equals_the_per_row_path(name: str, user: int) -> None:
    torch.manual_seed(0)
    spec = tiny_spec()
    model = CVRModel(spec, tiny_config(sequence=CONFIGS[name])).eval()
    batch = random_batch(spec, batch_size=9, seq_len=8, seed=5, empty_rows=(0,))
    # make some candidates match the user's items so the match counts are not all zero
    ads = batch.sequences["ads"].ids["ads_advertiser"][user]
    batch.categorical["ad_advertiser"][:3] = ads[0].clamp(min=1)
    with torch.no_grad():
        per_row = model.encode(
            batch.dense, batch.pretrained, batch.categorical, _repeated(batch, user), ssl=False
        )
        request = model.score_candidates(
            batch.dense, batch.pretrained, batch.categorical, _request(batch, user)
        )
    torch.testing.assert_close(request.logits, per_row.logits, rtol=1e-5, atol=1e-5)
    assert per_row.keep_logit is not None and request.keep_logit is not None
    torch.testing.assert_close(request.keep_logit, per_row.keep_logit, rtol=1e-5, atol=1e-5)


def test_request_needs_one_user_row() -> None:
    spec = tiny_spec()
    model = CVRModel(spec, tiny_config()).eval()
    batch = random_batch(spec, batch_size=4, seq_len=5)
    with pytest.raises(ValueError, match="one user row"):
        model.score_candidates(batch.dense, batch.pretrained, batch.categorical, batch.sequences)
