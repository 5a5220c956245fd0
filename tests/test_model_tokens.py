"""Feature tokens: min-max scaling, token layout, shared tables, dropping categories."""

from __future__ import annotations

import math

import pytest
import torch

from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.data.stats import MinMaxStats, transform_dense
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.model.tokens import DenseScaler, EmbeddingTables, FeatureTokenizer
from helpers_model import random_batch, tiny_config, tiny_spec, tiny_spec_dict


def test_dense_scaler_matches_formula_in_float64() -> None:
    scaler = DenseScaler(["a", "b", "c"], [False, True, False])
    # stats listed in a different order and with an extra feature: matched by name
    scaler.set_stats(MinMaxStats(["c", "x", "b", "a"], [5.0, 0, 0.5, -2.0], [5.0, 1, 3.0, 2.0],
                           [False, False, True, False]))  # fmt: skip
    x = torch.tensor([[-3.0, 0.0, 5.0], [0.0, 10.0, 7.0], [1.0, -4.0, 1.0], [9.0, 1e6, 5.0]])
    got = scaler(x)
    for i, row in enumerate(x.tolist()):
        a, b, _ = row
        want = [
            min(max((a + 2.0) / 4.0, 0.0), 1.0),
            min(max((math.log1p(max(b, 0.0)) - 0.5) / 2.5, 0.0), 1.0),
            0.0,  # constant feature (max == min)
        ]
        assert got[i].tolist() == pytest.approx(want, abs=1e-6)


def test_dense_scaler_agrees_with_transform_dense() -> None:
    g = torch.Generator().manual_seed(0)
    stats = MinMaxStats(["a", "b", "c"], [-1.0, 0.2, 3.0], [4.0, 2.5, 3.0], [False, True, False])
    scaler = DenseScaler(stats.names, stats.log1p)
    scaler.set_stats(stats)
    x = torch.randn(50, 3, generator=g) * 6
    torch.testing.assert_close(scaler(x), transform_dense(x, stats))


def test_dense_scaler_rejects_mismatched_stats() -> None:
    scaler = DenseScaler(["a", "b"], [False, True])
    with pytest.raises(ValueError, match=r"lack feature\(s\) \['b'\]"):
        scaler.set_stats(MinMaxStats(["a"], [0.0], [1.0], [False]))
    with pytest.raises(ValueError, match="log1p flags"):
        scaler.set_stats(MinMaxStats(["a", "b"], [0.0, 0.0], [1.0, 1.0], [False, False]))


def test_token_layout_and_shapes() -> None:
    spec = tiny_spec()
    tables = EmbeddingTables(spec, default_dim=8)
    tok = FeatureTokenizer(spec, tables, dim=8)
    assert tok.token_names == [
        "dense:demographic", "dense:counting", "dense:rates",
        "pretrained:user_emb", "pretrained:ad_emb",
        "categorical:gender", "categorical:interest", "categorical:ad_id",
        "categorical:ad_advertiser", "categorical:hour",
    ]  # fmt: skip
    assert tok.candidate_indices == [4, 7, 8]
    assert tok.candidate_token == 7  # the ad's first id feature
    batch = random_batch(spec, batch_size=5)
    x = tok(tables, batch.dense, batch.pretrained, batch.categorical)
    assert x.shape == (5, 10, 8)
    # the counting group holds n_click and n_conv: a 2 -> D linear
    assert tok.dense_proj[1].in_features == 2
    # ad_advertiser's table is 8 wide = D: no projection; others 8 wide too
    assert isinstance(tok.categorical_proj[3], torch.nn.Identity)


def test_shared_tables_are_created_once_with_their_width() -> None:
    spec = tiny_spec()
    tables = EmbeddingTables(spec, default_dim=12)
    assert set(tables.tables) == set(spec.embedding_tables())
    item = tables.table(spec.categorical[2])  # ad_id -> table 'item'
    assert item.num_embeddings == 52 and item.embedding_dim == 12
    assert tables.width(spec.categorical[3]) == 8  # spec override
    assert torch.count_nonzero(item.weight[0]) == 0  # padding row
    model = CVRModel(spec, tiny_config(embedding_dim=12))
    params = {id(p) for p in model.parameters()}
    assert id(model.tables.tables["item"].weight) in params
    tok = model.features
    assert isinstance(tok.categorical_proj[2], torch.nn.Linear)  # ad_id: 12 -> D=8


def test_conflicting_table_widths_are_rejected() -> None:
    raw = tiny_spec_dict()
    raw["features"][7]["embedding_dim"] = 16  # ad_id, table 'item'
    EmbeddingTables(FeatureSpec.from_dict(raw), default_dim=8)  # one override: the table's
    raw["features"][12]["fields"][0]["embedding_dim"] = 12  # org_item, also table 'item'
    with pytest.raises(ValueError, match="share table 'item'"):
        EmbeddingTables(FeatureSpec.from_dict(raw), default_dim=8)


@pytest.mark.parametrize(
    "category", ["demographic", "counting", "categorical", "pretrained", "sequence", "candidate"]
)
def test_dropping_a_category_removes_exactly_its_tokens(category: str) -> None:
    spec = tiny_spec()
    full = CVRModel(spec, tiny_config())
    dropped = CVRModel(spec, tiny_config(drop_categories=[category]))
    removed = set(full.token_names) - set(dropped.token_names)
    features = {f.name for f in spec.features if f.category.value == category}
    dense_groups = {f.group or f.category.value for f in spec.dense if f.category.value == category}
    kept_groups = {f.group or f.category.value for f in spec.dense if f.category.value != category}
    expected = {
        n
        for n in full.token_names
        if n.split(":")[1] in features
        or (n.startswith("dense:") and n.split(":")[1] in dense_groups - kept_groups)
    }
    assert removed == expected and removed
    assert [n for n in full.token_names if n not in removed] == dropped.token_names
    # the full batch (all dense columns) still feeds the ablated model
    out = dropped(random_batch(spec))
    assert out.logits.shape == (6, 3) and torch.isfinite(out.logits).all()
    if category == "sequence":
        assert out.sequences == {}


def test_dense_columns_follow_the_full_spec_when_a_category_is_dropped() -> None:
    spec = tiny_spec()
    model = CVRModel(spec, tiny_config(drop_categories=["demographic"]))
    batch = random_batch(spec)
    tok = model.features
    x_full = tok(model.tables, batch.dense, batch.pretrained, batch.categorical)
    kept = batch.dense[:, 1:]  # age (demographic) is column 0
    x_kept = tok(model.tables, kept, batch.pretrained, batch.categorical)
    torch.testing.assert_close(x_full, x_kept)
    with pytest.raises(ValueError, match=r"Batch.dense has 1 columns"):
        tok(model.tables, batch.dense[:, :1], batch.pretrained, batch.categorical)
