"""Shared fixtures of the model tests: a tiny spec with every role, random batches, configs."""

from __future__ import annotations

from typing import Any

import torch

from dhen_cvr.data.batch import NUM_TIME_FEATURES, Batch, SequenceBatch
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.model.config import ModelConfig

SEQUENCE_NAMES = ["search", "org", "ads", "match", "conv"]


def tiny_spec_dict(max_len: int = 12) -> dict[str, Any]:
    """Every role and category; shared ``item``/``advertiser`` tables; 5 sequences."""

    def seq(name: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": name,
            "role": "sequence",
            "max_len": max_len,
            "timestamp": f"{name}_ts",
            "fields": fields,
        }

    item = {"hash_buckets": 50, "table": "item"}
    adv = {"vocab_size": 20, "table": "advertiser", "embedding_dim": 8}
    return {
        "name": "tiny",
        "request_time": "ts",
        "user_id": "user_id",
        "features": [
            {"name": "age", "role": "dense", "category": "demographic"},
            {"name": "n_click", "role": "dense", "category": "counting", "log1p": True},
            {"name": "n_conv", "role": "dense", "category": "counting", "log1p": True},
            {"name": "ctr_7d", "role": "dense", "category": "counting", "group": "rates"},
            {"name": "gender", "role": "categorical", "category": "demographic", "vocab_size": 3},
            {"name": "interest", "role": "categorical", "category": "categorical", "vocab_size": 9},
            {"name": "user_emb", "role": "pretrained", "category": "pretrained", "dim": 6},
            {"name": "ad_id", "role": "categorical", "category": "candidate", **item},
            {"name": "ad_advertiser", "role": "categorical", "category": "candidate", **adv},
            {"name": "ad_emb", "role": "pretrained", "category": "candidate", "dim": 4},
            {"name": "hour", "role": "categorical", "category": "context", "vocab_size": 24},
            seq("search", [{"name": "search_query", "hash_buckets": 30}]),
            seq("org", [{"name": "org_item", **item}, {"name": "org_action", "vocab_size": 3}]),
            seq("ads", [{"name": "ads_item", **item}, {"name": "ads_advertiser", **adv}]),
            seq(
                "match",
                [{"name": "match_advertiser", **adv}, {"name": "match_action", "vocab_size": 4}],
            ),
            seq("conv", [{"name": "conv_item", **item}, {"name": "conv_action", "vocab_size": 4}]),
        ],
        "labels": [
            {"name": "click", "serve": False},
            {"name": "checkout", "mask": "click"},
            {"name": "add_to_cart", "mask": "click"},
        ],
        "sampling": {"negative_rate": 0.05},
    }


def tiny_spec(max_len: int = 12) -> FeatureSpec:
    return FeatureSpec.from_dict(tiny_spec_dict(max_len))


def tiny_config(**overrides: Any) -> ModelConfig:
    """A small two-layer DHEN (``[mlp, mlp]``, ``[mlp]``) on ``D = 8`` tokens."""
    raw: dict[str, Any] = {
        "dim": 8,
        "embedding_dim": 8,
        "ssl_dim": 8,
        "sequence": {"d_model": 16, "layers": 2, "heads": 2, "ffn": 32},
        "dhen": {
            "layers": [
                {"modules": [{"name": "mlp", "hidden": [32]}, {"name": "mlp", "hidden": [16]}]},
                {"modules": [{"name": "mlp", "hidden": [32]}]},
            ]
        },
        "head_hidden": [16, 8],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return ModelConfig.model_validate(raw)


def random_batch(
    spec: FeatureSpec,
    batch_size: int = 6,
    seq_len: int = 10,
    seed: int = 0,
    empty_rows: tuple[int, ...] = (0,),
    all_empty: bool = False,
) -> Batch:
    """Random ids/values with right-padded sequences; ``empty_rows`` have no items at all."""
    g = torch.Generator().manual_seed(seed)
    B = batch_size

    def ids(num_rows: int, *shape: int) -> torch.Tensor:
        return torch.randint(1, num_rows, shape, generator=g)

    dense = torch.rand(B, len(spec.dense), generator=g) * 50.0
    sequences: dict[str, SequenceBatch] = {}
    for s in spec.sequences:
        lengths = torch.randint(0, seq_len + 1, (B,), generator=g)
        lengths[-1] = seq_len  # at least one full row
        lengths[list(empty_rows)] = 0
        if all_empty:
            lengths.zero_()
        mask = torch.arange(seq_len)[None] < lengths[:, None]
        time = torch.rand(B, seq_len, NUM_TIME_FEATURES, generator=g) * 10 * mask[..., None]
        sequences[s.name] = SequenceBatch(
            ids={f.name: ids(f.num_rows, B, seq_len) * mask for f in s.fields},
            time=time,
            mask=mask,
            lengths=lengths,
        )
    H = len(spec.labels)
    return Batch(
        dense=dense,
        pretrained={f.name: torch.randn(B, f.dim, generator=g) for f in spec.pretrained},
        categorical={f.name: ids(f.num_rows, B) for f in spec.categorical},
        sequences=sequences,
        labels=torch.randint(0, 2, (B, H), generator=g).float(),
        label_mask=torch.ones(B, H),
        inclusion_prob=torch.ones(B),
        weight=torch.ones(B),
    )
