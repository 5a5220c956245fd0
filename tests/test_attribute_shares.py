"""Attribute-share tokens (model/attribute_shares.py, train/attribute_shares.py).

The smoothed log shares against a float64 loop; the counts of a real Parquet world against
pyarrow's own reading of the raw columns; the token is the projected table row of the
candidate's id; bad entries get a spec error naming them; a trained run saves the tables;
``auto`` stands for the spec's (candidate-shared key, small-vocabulary target) pairs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dhen_cvr.config import load_experiment_config
from dhen_cvr.data.reader import ParquetBatchStream
from dhen_cvr.data.spec import SpecError, load_data_spec
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.model.cvr_model import CVRModel, ServedCVRModel, flat_inputs
from dhen_cvr.runtime import load_trained_model
from dhen_cvr.runtime.checkpoint import load_checkpoint
from dhen_cvr.serve.artefact import export_artefact, load_artefact, served_spec
from dhen_cvr.train import train
from dhen_cvr.train.attribute_shares import fit_attribute_shares
from helpers_model import random_batch, tiny_config, tiny_spec
from train_world import tiny_config as run_config

ENTRY = {"sequence": "match", "key": "match_advertiser", "target": "match_action"}


def _model(**entry: object) -> CVRModel:
    return CVRModel(tiny_spec(), tiny_config(attribute_shares=[{**ENTRY, **entry}]))


def test_log_shares_match_a_float64_loop() -> None:
    model = _model(smoothing=3.0)
    shares = model.attribute_shares
    assert shares is not None
    rows, values = shares.share_table(0).shape
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 6, (rows, values), generator=g).double()
    shares.set_counts([counts])
    n = counts.numpy().copy()
    n[0, :], n[:, 0] = 0, 0
    total = n.sum()
    prior = [n[:, v].sum() / total for v in range(values)]
    for k in range(1, rows):
        row_total = n[k].sum()
        for v in range(1, values):
            if prior[v] == 0:
                expected = 0.0
            else:
                share = (n[k, v] + 3.0 * prior[v]) / (row_total + 3.0)
                expected = math.log(share) - math.log(prior[v])
            assert shares.share_table(0)[k, v].item() == pytest.approx(expected, abs=1e-5)
    assert shares.share_table(0)[0].abs().sum() == 0  # padding row


def test_token_is_the_projected_row_of_the_candidate_id() -> None:
    model = _model()
    shares = model.attribute_shares
    assert shares is not None and shares.candidate_names == ["ad_advertiser"]
    shares.set_counts([torch.rand(shares.share_table(0).shape) * 10])
    batch = random_batch(model.data_spec)
    token, logits = shares(batch.categorical)  # B x 1 x D, B x H
    assert token is not None and logits is not None and not logits.abs().sum()  # zero init
    ids = batch.categorical["ad_advertiser"]
    expected = shares.projections[0](shares.share_table(0)[ids])
    torch.testing.assert_close(token[:, 0], expected)
    assert "shares:match.match_advertiser->match_action" in model.token_names
    out = model(batch)
    assert out.logits.shape[0] == batch.dense.shape[0] and torch.isfinite(out.logits).all()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"sequence": "nope"}, "unknown sequence 'nope'"),
        ({"key": "match_nope"}, "needs two different fields of sequence 'match'"),
        ({"sequence": "org", "key": "org_action", "target": "org_item"}, "no candidate feature"),
    ],
)
def test_bad_entries_name_what_is_wrong(entry: dict[str, str], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _model(**entry)


def test_counts_of_a_real_world_match_the_raw_columns(tiny_world: Path) -> None:
    spec = load_data_spec(tiny_world)
    config = tiny_config(
        embedding_dim=8,
        attribute_shares=[
            {**ENTRY, "sequence": "conv", "key": "conv_advertiser", "target": "conv_action"}
        ],
    )
    model = CVRModel(spec, config)
    days = sorted(tiny_world.glob("dt=*"))[:2]
    counts = fit_attribute_shares(model, spec, days, batch_size=333)[0].numpy()
    expected = np.zeros_like(counts)
    for day in days:
        table = pq.read_table(sorted(day.glob("*.parquet")))
        adv = np.concatenate(table.column("conv_advertiser").to_numpy(zero_copy_only=False))
        act = np.concatenate(table.column("conv_action").to_numpy(zero_copy_only=False))
        np.add.at(expected, (adv.astype(int) + 1, act.astype(int) + 1), 1)  # ids 0.. -> 1..
    assert expected.sum() > 100
    np.testing.assert_array_equal(counts, expected)
    shares = model.attribute_shares
    assert shares is not None and shares.share_table(0)[1:].abs().sum() > 0


@pytest.mark.slow
def test_a_trained_run_saves_and_exports_its_tables(tiny_world: Path, tmp_path: Path) -> None:
    config = run_config(
        "model.attribute_shares=[{sequence: conv, key: conv_advertiser, target: conv_action}]"
    )
    result = train(config, tiny_world, "1", tmp_path / "run", show_progress=False)
    assert result.checkpoint is not None
    state = load_checkpoint(result.checkpoint).model_state
    assert state["attribute_shares.share_0"][1:].abs().sum() > 0  # fitted, not the zeros
    assert state["attribute_shares.logit_weights.0.weight"].abs().sum() > 0  # trained
    served = load_artefact(export_artefact(tmp_path / "run", tmp_path / "art"))
    eager = ServedCVRModel(load_trained_model(tmp_path / "run").model, probabilities=True).eval()
    spec = served_spec(eager.model)
    day = sorted(tiny_world.glob("dt=*"))[1]
    batch = next(iter(ParquetBatchStream([day], spec, batch_size=64, shuffle=False)))
    inputs = flat_inputs(spec, batch)
    with torch.no_grad():
        torch.testing.assert_close(served.rows(*inputs), eager(*inputs), rtol=1e-5, atol=1e-5)


# tiny_spec by hand: org_item / ads_item / conv_item share ``item`` with ad_id, ads_advertiser
# / match_advertiser share ``advertiser`` with ad_advertiser; org_action (vocab 3: 5 rows with
# padding and OOV), match_action and conv_action (vocab 4: 6 rows) are the small fields; the
# ads sequence has no small field and search none that a candidate shares.
AUTO_ENTRIES = [
    "org.org_item->org_action",
    "match.match_advertiser->match_action",
    "conv.conv_item->conv_action",
]


def test_auto_is_every_candidate_key_against_every_small_field() -> None:
    model = CVRModel(tiny_spec(), tiny_config(attribute_shares="auto"))
    assert model.attribute_shares is not None
    assert [c.name for c in model.attribute_shares.configs] == AUTO_ENTRIES
    narrow = tiny_config(attribute_shares="auto", sequence={"match_split_max_rows": 5})
    shares = CVRModel(tiny_spec(), narrow).attribute_shares
    assert shares is not None and [c.name for c in shares.configs] == AUTO_ENTRIES[:1]
    none = tiny_config(attribute_shares="auto", sequence={"match_split_max_rows": 4})
    assert CVRModel(tiny_spec(), none).attribute_shares is None


def test_auto_builds_the_same_model_as_its_entries_written_out() -> None:
    listed = [
        dict(zip(("sequence", "key", "target"), e.replace("->", ".").split("."), strict=True))
        for e in AUTO_ENTRIES
    ]
    torch.manual_seed(0)
    auto = CVRModel(tiny_spec(), tiny_config(attribute_shares="auto")).state_dict()
    torch.manual_seed(0)
    explicit = CVRModel(tiny_spec(), tiny_config(attribute_shares=listed)).state_dict()
    assert auto.keys() == explicit.keys()
    for name, value in auto.items():
        torch.testing.assert_close(value, explicit[name], msg=name)


def test_auto_is_accepted_from_the_command_line_and_nothing_else_is() -> None:
    config = load_experiment_config("tiny", ["model.attribute_shares=auto"])
    assert config.model.attribute_shares == "auto"
    with pytest.raises(DhenCvrError, match=r"attribute_shares: .*a list of entries or 'auto'"):
        load_experiment_config("tiny", ["model.attribute_shares=all"])
