"""`truth_terms`: the latent terms of every row's true logits, written beside the data.

The oracle is recomputed from the written terms with the generator's formulas typed out
here (paper-independent: data/synth/truth.py is the source), so the columns are the very
terms the labels were drawn from; the flag consumes no randomness and leaves the spec alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhen_cvr.data.spec import load_spec
from dhen_cvr.data.synth import WorldConfig, synthesize

CONFIG = dict(users=300, days=2, impressions_per_day=20_000, seed=3)


def _read(root: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(root.glob("dt=*/*.parquet")))


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("truth")
    plain, truth = base / "plain", base / "truth"
    synthesize(plain, WorldConfig(**CONFIG))
    synthesize(truth, WorldConfig(**CONFIG, truth_terms=True))
    return plain, truth


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_truth_columns_reproduce_the_oracle(worlds: tuple[Path, Path]) -> None:
    t = _read(worlds[1])
    c = {n: t.column(n).to_numpy() for n in t.column_names if n.startswith("truth_")}
    click = -4.9 + (
        0.2 * c["truth_click_interest"]
        + 0.25 * c["truth_click_intent"]
        + 0.2 * c["truth_click_demographic"]
        + 0.3 * c["truth_click_advertiser_engagement"]
        + c["truth_click_ad_quality"]
        + c["truth_click_user_bias"]
        + c["truth_click_hour_effect"]
    )
    np.testing.assert_allclose(_sigmoid(click), t.column("oracle_click").to_numpy(), rtol=1e-9)
    shared = (
        c["truth_conv_user_bias"]
        + c["truth_conv_advertiser_quality"]
        + 0.1 * c["truth_conv_interest"]
        + 0.15 * c["truth_conv_intent"]
        + 0.3 * c["truth_conv_advertiser_engagement"]
        + 0.7 * c["truth_conv_funnel"]
        + 0.4 * c["truth_conv_home"]
    )
    age = (c["truth_conv_age"] - 40.0) / 15.0
    per_type = {
        "checkout": (-2.6, 0.3, 1.5),
        "add_to_cart": (-2.5, 0.0, 0.3),
        "signup": (-2.7, -0.4, 0.0),
    }
    for head, (bias, w_age, w_atc) in per_type.items():
        logit = (
            bias
            + c[f"truth_conv_log_mix_{head}"]
            + shared
            + w_age * age
            + w_atc * c["truth_conv_recent_atc"]
        )
        expected = _sigmoid(click) * _sigmoid(logit)
        np.testing.assert_allclose(expected, t.column(f"oracle_{head}").to_numpy(), rtol=1e-9)
    # the terms vary (a constant column would reproduce a constant oracle term trivially)
    assert all(np.std(v) > 0 for k, v in c.items() if k != "truth_conv_funnel")


def test_truth_terms_change_nothing_else(worlds: tuple[Path, Path]) -> None:
    plain, truth = (_read(w) for w in worlds)
    extra = sorted(set(truth.column_names) - set(plain.column_names))
    assert extra and all(n.startswith("truth_") for n in extra)
    assert truth.drop_columns(extra).equals(plain)
    spec_names = load_spec(worlds[1] / "_spec.yaml").source_columns()
    assert not [n for n in spec_names if n.startswith("truth_")]
    assert (worlds[0] / "_spec.yaml").read_text() == (worlds[1] / "_spec.yaml").read_text()
