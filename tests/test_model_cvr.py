"""The full CVR model: shapes, gradients, determinism, export, autocast, configs, heads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dhen_cvr.data.spec import SpecError
from dhen_cvr.data.stats import MinMaxStats
from dhen_cvr.model.config import ConfigError, ModelConfig, load_model_config
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.model.heads import MultiTaskHeads
from dhen_cvr.model.output import TargetEmbedder
from helpers_model import SEQUENCE_NAMES, random_batch, tiny_config, tiny_spec

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _tiny_yaml_config(**sequence: object) -> ModelConfig:
    """configs/tiny.yaml (the real module mix: mlp, transformer, masknet) on the test spec."""
    cfg = load_model_config(CONFIGS / "tiny.yaml")
    return cfg.model_copy(update={"sequence": cfg.sequence.model_copy(update=sequence)})


def _model(config: ModelConfig | None = None, seed: int = 0) -> CVRModel:
    torch.manual_seed(seed)
    return CVRModel(tiny_spec(), config or _tiny_yaml_config())


def test_output_shapes_and_names() -> None:
    model = _model()
    batch = random_batch(tiny_spec(), batch_size=5, seq_len=7)
    out = model(batch)
    assert out.logits.shape == (5, 3)
    assert model.head_names == ["click", "checkout", "add_to_cart"]
    assert model.served_head_names == ["checkout", "add_to_cart"]
    per_sequence = len(model.config.sequence.tokens)  # tiny.yaml: last, target_attention, match
    assert len(model.token_names) == 10 + per_sequence * len(SEQUENCE_NAMES)
    assert model.context.num_tokens == len(model.token_names)
    assert model.token_names[model.context.candidate_index or 0] == "categorical:ad_id"
    assert list(out.sequences) == SEQUENCE_NAMES
    for name, enc in out.sequences.items():
        seq = batch.sequences[name]
        assert enc.hidden.shape == (5, 7, model.config.ssl_dim)
        assert enc.mask.equal(seq.mask) and enc.mlm_mask is None
        target = model.spec.sequences[SEQUENCE_NAMES.index(name)].target.name
        assert enc.target_ids.equal(seq.ids[target])
    embedder: TargetEmbedder = model
    assert embedder.num_target_ids("org") == 52  # 'item' table: 50 buckets + pad + OOV
    assert embedder.num_target_ids("search") == 32
    assert embedder.embed_targets("org", torch.ones(2, 3, 4, dtype=torch.long)).shape == (
        2, 3, 4, model.config.ssl_dim,
    )  # fmt: skip
    assert model.sequence_max_lens == dict.fromkeys(SEQUENCE_NAMES, 12)


def test_ssl_targets_choose_the_field_each_sequence_predicts() -> None:
    """``sequence.ssl_targets`` overrides the spec's target field per sequence: the SSL
    targets, their table and their embedding follow it; other sequences keep theirs."""
    targets = {"org": "org_action", "ads": "ads_advertiser"}
    torch.manual_seed(0)
    model = CVRModel(tiny_spec(), tiny_config(sequence={"ssl_targets": targets}))
    batch = random_batch(tiny_spec(), batch_size=4, seq_len=7)
    out = model(batch)
    for name, field in targets.items():
        assert out.sequences[name].target_ids.equal(batch.sequences[name].ids[field])
    assert out.sequences["search"].target_ids.equal(batch.sequences["search"].ids["search_query"])
    assert model.num_target_ids("org") == 3 + 2  # the action vocabulary + pad + OOV
    assert model.num_target_ids("ads") == 20 + 2  # the advertiser table, not the item one
    assert model.embed_targets("org", torch.ones(2, 5, dtype=torch.long)).shape == (2, 5, 8)
    assert model.data_spec.sequences[1].target.name == "org_item"  # the batches' spec as given


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({"orgs": "org_action"}, "ssl_targets names unknown sequences ['orgs']; known: "),
        ({"org": "ads_item"}, "'ads_item' is not a field of sequence 'org'; its fields: "),
    ],
)
def test_ssl_targets_name_what_is_wrong(targets: dict[str, str], message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        CVRModel(tiny_spec(), tiny_config(sequence={"ssl_targets": targets}))


@pytest.mark.parametrize("mode", ["causal", "mlm"])
def test_gradients_reach_every_parameter(mode: str) -> None:
    causal = mode == "causal"
    model = _model(_tiny_yaml_config(causal=causal, tokens=["last", "target_attention", "mean"]))
    model.train()
    batch = random_batch(tiny_spec(), batch_size=6, seq_len=8, empty_rows=(0, 3))
    mlm = None
    if not causal:
        g = torch.Generator().manual_seed(0)
        mlm = {
            n: (torch.rand(s.mask.shape, generator=g) < 0.3) & s.mask
            for n, s in batch.sequences.items()
        }
    out = model(batch, mlm)
    loss = out.logits.sum()
    for name, enc in out.sequences.items():
        loss = loss + enc.hidden.sum() + model.embed_targets(name, enc.target_ids).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not missing and not zero, (missing, zero)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_all_padding_batch_is_finite() -> None:
    model = _model().eval()
    batch = random_batch(tiny_spec(), batch_size=4, seq_len=5, all_empty=True)
    out = model(batch)
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(e.hidden).all() for e in out.sequences.values())


def test_identical_outputs_under_a_seed() -> None:
    batch = random_batch(tiny_spec(), seed=3)
    a, b, c = _model(seed=11), _model(seed=11), _model(seed=12)
    for m in (a, b, c):
        m.train()  # BatchNorm batch statistics; dropout is 0 in tiny.yaml
    torch.testing.assert_close(a(batch).logits, b(batch).logits, rtol=0, atol=0)
    assert not torch.allclose(a(batch).logits, c(batch).logits)


def test_dense_stats_are_buffers_that_change_the_output(tmp_path: Path) -> None:
    spec = tiny_spec()
    names = [f.name for f in spec.dense]
    stats = MinMaxStats(
        names, [0.0, 0.0, 0.0, 0.0], [50.0, 4.0, 4.0, 50.0], [False, True, True, False]
    )
    model = _model().eval()
    batch = random_batch(spec)
    before = model(batch).logits
    model.set_dense_stats(stats)
    after = model(batch).logits
    assert not torch.allclose(before, after)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    fresh = _model(seed=5).eval()
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    torch.testing.assert_close(fresh(batch).logits, after)
    built = CVRModel(spec, _tiny_yaml_config(), dense_stats=stats)
    assert built.features.scaler.maximum.tolist() == [50.0, 4.0, 4.0, 50.0]


def test_bfloat16_autocast_runs_close_to_float32() -> None:
    model = _model().eval()
    batch = random_batch(tiny_spec(), batch_size=8, seq_len=10)
    ref = model(batch).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert out.logits.dtype == torch.bfloat16 or out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits.float()).all()
    assert (out.logits.float() - ref).abs().max() < 0.1
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        loss = out.logits.float().sum() + sum(
            e.hidden.float().sum() for e in out.sequences.values()
        )
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_heads_are_independent_mlps() -> None:
    torch.manual_seed(0)
    heads = MultiTaskHeads(in_dim=7, names=["a", "b", "c"], hidden=[5, 4, 3]).double()
    z = torch.randn(6, 7, dtype=torch.float64)
    got = heads(z)
    assert got.shape == (6, 3)
    first_w = heads.first.weight.detach().view(3, 5, 7)  # type: ignore[union-attr]
    first_b = heads.first.bias.detach().view(3, 5)  # type: ignore[union-attr]
    for h in range(3):
        for b in range(6):
            a = [max(0.0, sum(first_w[h, o, i].item() * z[b, i].item() for i in range(7))
                     + first_b[h, o].item()) for o in range(5)]  # fmt: skip
            for w, bias in zip(heads.weights, heads.biases, strict=True):
                w, bias = w.detach()[h], bias.detach()[h]
                a = [max(0.0, sum(a[i] * w[i, o].item() for i in range(len(a))) + bias[o].item())
                     for o in range(w.shape[1])]  # fmt: skip
            want = sum(x * y for x, y in zip(a, heads.out_weight[h].tolist(), strict=True))
            want += heads.out_bias[h].item()
            assert got[b, h].item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    # changing head b's weights leaves heads a and c alone
    with torch.no_grad():
        heads.weights[0][1].add_(1.0)
    new = heads(z)
    torch.testing.assert_close(new[:, [0, 2]], got[:, [0, 2]])
    linear = MultiTaskHeads(in_dim=7, names=["a", "b"], hidden=[])
    assert linear(z.float()).shape == (6, 2)


def test_paper_config_is_appendix_a() -> None:
    cfg = load_model_config(CONFIGS / "paper.yaml")
    assert cfg.dim == 64 and cfg.head_hidden == [128, 128, 128]
    assert cfg.sequence.max_len_cap == 500 and cfg.sequence.causal
    layers = cfg.dhen.layers
    assert [[m.name for m in layer.modules] for layer in layers] == [
        ["mlp", "transformer"],
        ["mlp", "masknet"],
    ]
    assert all(layer.ensemble == "sum" for layer in layers)
    mlp1, trans = (m.params.model_dump() for m in layers[0].modules)
    mlp2, mask = (m.params.model_dump() for m in layers[1].modules)
    assert mlp1["hidden"] == mlp2["hidden"] == [1024]
    assert {k: trans[k] for k in ("layers", "heads", "width", "ffn", "dropout")} == {
        "layers": 2, "heads": 4, "width": 256, "ffn": 512, "dropout": 0.0,
    }  # fmt: skip
    assert {k: mask[k] for k in ("blocks", "layout", "hidden", "dropout")} == {
        "blocks": 2, "layout": "parallel", "hidden": 256, "dropout": 0.005,
    }  # fmt: skip


def test_study_configs_load() -> None:
    studies = sorted((CONFIGS / "studies").glob("*.yaml"))
    overlays = [p for p in studies if "\nvariants:" not in p.read_text()]  # not study files
    assert len(overlays) >= 9  # Figure 5 and Table 1 configs
    for path in overlays:
        load_model_config(path)


def test_bad_configs_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train: {}\n")
    with pytest.raises(ConfigError, match="no top-level 'model:' section"):
        load_model_config(path)
    path.write_text("model:\n  dim: 8\n  dimm: 3\n  dhen: {layers: [{modules: [{name: mlp}]}]}\n")
    with pytest.raises(ConfigError, match=r"model\.dimm: Extra inputs are not permitted"):
        load_model_config(path)
    path.write_text("model:\n  dhen: {layers: [{modules: [{name: nope}]}]}\n")
    with pytest.raises(ConfigError, match="unknown crossing module 'nope'"):
        load_model_config(path)
    path.write_text(
        "model:\n  drop_categories: [colour]\n  dhen: {layers: [{modules: [{name: mlp}]}]}\n"
    )
    with pytest.raises(ConfigError, match="unknown feature category"):
        load_model_config(path)
    with pytest.raises(ValueError, match="not divisible by heads"):
        tiny_config(sequence={"d_model": 10, "heads": 4})
