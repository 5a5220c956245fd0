"""What a model config amounts to on a feature spec: module tree, parameters, FLOPs.

:func:`describe_model` builds the model on the ``meta`` device (no memory, no weights) and
runs one example through it under :class:`torch.utils.flop_counter.FlopCounterMode`, so a
config can be related to the paper's "340M parameters" before anything is trained.
FLOPs are ``2 x`` multiply-adds of matrix products (linear layers, attention, batched
matmuls); element-wise work, norms and embedding lookups are not counted. Sequences are
counted at full length (every sequence holds its ``max_len`` items), the worst case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dhen_cvr.data.batch import NUM_TIME_FEATURES, Batch, SequenceBatch
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.model.config import ModelConfig
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.model.dhen import DHENLayer

__all__ = [
    "CrossingSummary",
    "LayerSummary",
    "ModelDescription",
    "describe_model",
    "format_description",
]

# The model's top-level parts, in forward order: attribute name -> label.
_PARTS = {
    "features": "feature tokens",
    "sequences": "sequence encoders",
    "backbone": "DHEN backbone",
    "heads": "heads",
}


@dataclass
class CrossingSummary:
    """One crossing module of a DHEN layer."""

    name: str
    params: dict[str, Any]
    num_params: int
    flops: int


@dataclass
class LayerSummary:
    """One DHEN layer: its modules, ensemble, and the layer's own weights (norm, ensemble)."""

    ensemble: str
    modules: list[CrossingSummary]
    own_params: int


@dataclass
class ModelDescription:
    """Sizes of a :class:`CVRModel` built from a config on a spec (see module docstring)."""

    dim: int
    token_names: list[str]
    layers: list[LayerSummary]
    embedding_tables: dict[str, tuple[int, int]]  # table -> (rows, width)
    dense_params: dict[str, int]  # part label -> weights outside embedding tables
    flops: dict[str, int]  # part label -> forward FLOPs per example
    sequence_lengths: dict[str, int]
    ssl_targets: dict[str, str]  # sequence -> the field its self-supervised loss predicts
    head_names: list[str]
    served_head_names: list[str]
    dropped_categories: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.token_names)

    @property
    def embedding_params(self) -> int:
        return sum(rows * width for rows, width in self.embedding_tables.values())

    @property
    def dense_param_total(self) -> int:
        return sum(self.dense_params.values())

    @property
    def total_params(self) -> int:
        return self.embedding_params + self.dense_param_total

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _full_length_batch(model: CVRModel, device: torch.device) -> Batch:
    """One example with every sequence at its full kept length (values are irrelevant)."""
    spec = model.spec
    long = torch.long
    sequences = {}
    for s in spec.sequences:
        T = model.sequence_max_lens[s.name]
        sequences[s.name] = SequenceBatch(
            ids={f.name: torch.ones(1, T, dtype=long, device=device) for f in s.fields},
            time=torch.zeros(1, T, NUM_TIME_FEATURES, device=device),
            mask=torch.ones(1, T, dtype=torch.bool, device=device),
            lengths=torch.full((1,), T, dtype=long, device=device),
        )
    H = len(model.head_names)
    return Batch(
        dense=torch.zeros(1, len(model.data_spec.dense), device=device),
        pretrained={f.name: torch.zeros(1, f.dim, device=device) for f in spec.pretrained},
        categorical={f.name: torch.ones(1, dtype=long, device=device) for f in spec.categorical},
        sequences=sequences,
        labels=torch.zeros(1, H, device=device),
        label_mask=torch.ones(1, H, device=device),
        inclusion_prob=torch.ones(1, device=device),
        weight=torch.ones(1, device=device),
    )


def _flops_by_module(model: CVRModel) -> dict[str, int]:
    """Module path (``CVRModel.backbone.layers.0``) -> forward FLOPs of one example."""
    model.eval()
    batch = _full_length_batch(model, next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(batch)
    return {path: sum(ops.values()) for path, ops in counter.get_flop_counts().items()}


def describe_model(config: ModelConfig, spec: FeatureSpec) -> ModelDescription:
    """Build ``CVRModel(spec, config)`` on the meta device and measure it."""
    with torch.device("meta"):
        model = CVRModel(spec, config)
    flops = _flops_by_module(model)
    root = type(model).__name__

    layers = []
    for i, (layer_cfg, layer) in enumerate(
        zip(config.dhen.layers, model.backbone.layers, strict=True)
    ):
        assert isinstance(layer, DHENLayer)
        modules = []
        for j, (module_cfg, module) in enumerate(
            zip(layer_cfg.modules, layer.crossings, strict=True)
        ):
            modules.append(
                CrossingSummary(
                    name=module_cfg.name,
                    params=module_cfg.params.model_dump(),
                    num_params=_count(module),
                    flops=flops.get(f"{root}.backbone.layers.{i}.crossings.{j}", 0),
                )
            )
        own = _count(layer) - sum(m.num_params for m in modules)
        layers.append(LayerSummary(ensemble=layer_cfg.ensemble, modules=modules, own_params=own))

    tables = {
        name: (emb.num_embeddings, emb.embedding_dim)
        for name, emb in model.tables.tables.items()
        if isinstance(emb, nn.Embedding)
    }
    return ModelDescription(
        dim=config.dim,
        token_names=list(model.token_names),
        layers=layers,
        embedding_tables=tables,
        dense_params={label: _count(getattr(model, attr)) for attr, label in _PARTS.items()},
        flops={label: flops.get(f"{root}.{attr}", 0) for attr, label in _PARTS.items()},
        sequence_lengths=model.sequence_max_lens,
        ssl_targets={s.name: s.target.name for s in model.spec.sequences},
        head_names=model.head_names,
        served_head_names=model.served_head_names,
        dropped_categories=list(config.drop_categories),
    )


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def format_description(desc: ModelDescription) -> str:
    """A human-readable report (the ``dhen-cvr describe`` output)."""
    out: list[str] = []
    out.append(
        f"tokens: L = {desc.num_tokens} x D = {desc.dim} "
        f"(flattened {desc.num_tokens * desc.dim})"
        + (f", dropped categories {desc.dropped_categories}" if desc.dropped_categories else "")
    )
    for name in desc.token_names:
        out.append(f"  {name}")
    if desc.sequence_lengths:
        lens = ", ".join(f"{k}={v}" for k, v in desc.sequence_lengths.items())
        out.append(f"sequence lengths kept: {lens}")
        targets = ", ".join(f"{k}={v}" for k, v in desc.ssl_targets.items())
        out.append(f"self-supervised targets (model.sequence.ssl_targets): {targets}")
    out.append("")
    out.append("DHEN backbone: Y = Norm(Ensemble(m_1(X), ..., m_k(X)) + X) per layer")
    for i, layer in enumerate(desc.layers, start=1):
        out.append(
            f"  layer {i} (ensemble={layer.ensemble}, own params {_human(layer.own_params)})"
        )
        for m in layer.modules:
            out.append(
                f"    {m.name:<12} params {_human(m.num_params):>8}  "
                f"FLOPs {_human(m.flops):>8}  {_params_text(m.params)}"
            )
    served = set(desc.served_head_names)
    heads = ", ".join(n if n in served else f"{n} (not served)" for n in desc.head_names)
    out.append(f"heads: {heads}")
    out.append("")
    out.append(f"parameters: {_human(desc.total_params)} ({desc.total_params:,})")
    out.append(f"  embedding tables {_human(desc.embedding_params):>10}")
    for name, (rows, width) in desc.embedding_tables.items():
        out.append(f"    {name:<20} {rows:>10,} x {width:<4} = {_human(rows * width)}")
    out.append(f"  dense weights    {_human(desc.dense_param_total):>10}")
    for label, n in desc.dense_params.items():
        out.append(f"    {label:<20} {_human(n):>10}")
    out.append("")
    out.append(f"forward FLOPs per example (sequences at full length): {_human(desc.total_flops)}")
    for label, n in desc.flops.items():
        share = n / desc.total_flops if desc.total_flops else 0.0
        out.append(f"  {label:<22} {_human(n):>10}  {share:6.1%}")
    return "\n".join(out)
