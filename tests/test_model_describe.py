"""``describe_model`` / ``dhen-cvr describe``: parameter split and FLOPs vs hand counts."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from dhen_cvr.cli import app
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.model.crossing import CrossingModule
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.model.describe import describe_model, format_description
from dhen_cvr.model.dhen import DHENLayer
from helpers_model import SEQUENCE_NAMES, tiny_config, tiny_spec

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_parameter_split_matches_the_built_model() -> None:
    spec, cfg = tiny_spec(), tiny_config()
    desc = describe_model(cfg, spec)
    model = CVRModel(spec, cfg)
    assert desc.total_params == sum(p.numel() for p in model.parameters())
    assert desc.embedding_params == sum(
        p.numel() for p in model.tables.parameters()
    ) == sum(rows * 8 for name, rows in spec.embedding_tables().items() if name != "advertiser") + 22 * 8  # fmt: skip
    assert desc.token_names == model.token_names and desc.num_tokens == 20
    assert [[m.name for m in layer.modules] for layer in desc.layers] == [["mlp", "mlp"], ["mlp"]]
    # per-module parameters and FLOPs agree with the crossing modules' own counter
    for layer_desc, layer in zip(desc.layers, model.backbone.layers, strict=True):
        assert isinstance(layer, DHENLayer)
        for module, crossing in zip(layer_desc.modules, layer.crossings, strict=True):
            assert isinstance(crossing, CrossingModule)
            assert module.num_params == sum(p.numel() for p in crossing.parameters())
            assert module.flops == crossing.flops_per_example() > 0
    assert desc.served_head_names == ["checkout", "add_to_cart"]


def test_flops_match_a_hand_count() -> None:
    """Sequence encoders and heads, counted by hand (2 x multiply-adds of every matmul)."""
    spec = tiny_spec(max_len=12)
    cfg = tiny_config(sequence={"tokens": ["last"], "max_len_cap": 10})
    desc = describe_model(cfg, spec)
    d, ffn, layers, D, ssl, T = 16, 32, 2, 8, 8, 10
    widths = {"search": 8, "org": 16, "ads": 16, "match": 16, "conv": 16}  # fields x 8
    per_layer = 2 * T * d * 3 * d + 2 * 2 * T * T * d + 2 * T * d * d + 2 * 2 * T * d * ffn
    seq = sum(
        2 * T * (widths[s] + 2) * d + layers * per_layer + 2 * d * D + 2 * T * d * ssl
        for s in SEQUENCE_NAMES
    )
    assert desc.flops["sequence encoders"] == seq
    L = 10 + 5  # feature tokens + one token per sequence
    H, (h1, h2) = 3 + 1, cfg.head_hidden  # 3 labels + the any-keep-label head
    assert desc.flops["heads"] == 2 * (L * D * H * h1 + H * h1 * h2 + H * h2)
    dense_tokens = 2 * D * (1 + 2 + 1) + 2 * D * (6 + 4)  # dense groups + pretrained
    assert desc.flops["feature tokens"] == dense_tokens  # categoricals are 8 wide: no proj
    assert desc.total_flops == sum(desc.flops.values())


def test_format_and_cli(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.yaml"
    tiny_spec().save(spec_path)
    text = format_description(describe_model(tiny_config(), tiny_spec()))
    assert "tokens: L = 20 x D = 8" in text and "click (not served)" in text
    runner = CliRunner()
    result = runner.invoke(
        app, ["describe", "--config", str(CONFIGS / "paper.yaml"), "--spec", str(spec_path)]
    )
    assert result.exit_code == 0, result.output
    for needle in ("layer 1 (ensemble=sum", "transformer", "masknet", "embedding tables",
                   "forward FLOPs per example", "sequence:conv:target_attention"):  # fmt: skip
        assert needle in result.output
    missing = runner.invoke(app, ["describe", "--config", str(tmp_path / "nope.yaml")])
    assert isinstance(missing.exception, DhenCvrError)
    assert "not found" in str(missing.exception)


def test_cli_preset_name_overrides_and_default_spec() -> None:
    """``--config tiny`` is the preset; no ``--spec``: the synthetic world's spec."""
    sets = ["--set", "model.dim=24", "--set", "model.sequence.ssl_targets={org: org_topic}"]
    result = CliRunner().invoke(app, ["describe", "--config", "tiny", *sets])
    assert result.exit_code == 0, result.output
    assert "spec: synthetic world" in result.output and "categorical:ad_id" in result.output
    assert "x D = 24" in result.output
    assert "self-supervised targets (model.sequence.ssl_targets): search=search_query," in (
        result.output
    )
    assert "org=org_topic, ads=ads_item," in result.output  # the override, then the spec's


def test_describe_does_not_allocate_weights() -> None:
    """Built on the meta device: a huge table costs nothing."""
    raw = tiny_spec().model_dump(mode="json", exclude_none=True)
    raw["features"][7] = {**raw["features"][7], "hash_buckets": 10**9}
    for f in raw["features"]:
        for fld in f.get("fields", []):
            if fld.get("table") == "item":
                fld["hash_buckets"] = 10**9
    spec = type(tiny_spec()).from_dict(raw)
    desc = describe_model(tiny_config(), spec)
    assert desc.embedding_tables["item"] == (10**9 + 2, 8)
    assert torch.get_default_device().type == "cpu"
