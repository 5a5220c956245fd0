"""Properties of the synthetic world: rates, sampling, time order, counts, truth, signal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dhen_cvr.data.spec import load_spec
from dhen_cvr.data.synth import CONVERSION_TYPES, WorldConfig, WorldSummary, synthesize, world_spec
from dhen_cvr.data.writer import day_dirs

DAY = 86_400
CONFIG = WorldConfig(users=600, days=5, impressions_per_day=30_000, seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorldSummary]:
    out = tmp_path_factory.mktemp("synth") / "world"
    return out, synthesize(out, CONFIG)


def _day(root: Path, day: str, columns: list[str] | None = None) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(p, columns=columns) for p in sorted((root / f"dt={day}").glob("*.parquet"))
    )


def _all(root: Path, columns: list[str] | None = None) -> pa.Table:
    return pa.concat_tables(_day(root, d, columns) for d in CONFIG.day_names)


def _converting(t: pa.Table) -> np.ndarray:
    return np.any([t[h].to_numpy() > 0 for h in CONVERSION_TYPES], axis=0)


def _flat(t: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index per item, item values, lengths) of a list column."""
    arr = t[column].combine_chunks()
    lengths = pc.list_value_length(arr).to_numpy()
    return np.repeat(np.arange(len(t)), lengths), arr.flatten().to_numpy(), lengths


def test_rates_before_sampling(world: tuple[Path, WorldSummary]) -> None:
    out, summary = world
    recorded = WorldSummary.model_validate_json((out / "_world.json").read_text())
    assert recorded == summary
    for day in summary.days:
        assert 0.005 <= day.rate("click") <= 0.05, day
        for conv in CONVERSION_TYPES:
            assert 0 < day.positives[conv] < day.positives["click"], (day.day, conv)


def test_sampling_rate_matches_observed_keep_rate(world: tuple[Path, WorldSummary]) -> None:
    out, summary = world
    t = _all(out, [*CONVERSION_TYPES, "sample_rate"])
    converting = _converting(t)
    rate = t["sample_rate"].to_numpy()
    assert np.all(rate[converting] == 1.0)
    assert np.all(rate[~converting] == CONFIG.negative_rate)
    # Every converting impression is kept; non-converting ones at the stored rate.
    population_converting = sum(d.impressions - d.non_converting for d in summary.days)
    assert converting.sum() == population_converting
    observed = (~converting).sum() / sum(d.non_converting for d in summary.days)
    assert observed == pytest.approx(CONFIG.negative_rate, rel=0.10)


def test_sequences_are_before_the_impression_and_ordered(world: tuple[Path, WorldSummary]) -> None:
    out, _ = world
    spec = load_spec(out / "_spec.yaml")
    t = _all(out)
    ts = t["ts"].to_numpy()
    for seq in spec.sequences:
        row, item_ts, lengths = _flat(t, seq.timestamp)
        assert len(item_ts) > 0, seq.name
        assert np.all(item_ts < ts[row]), seq.name
        assert lengths.max() <= seq.max_len
        same_row = row[1:] == row[:-1]
        assert np.all(np.diff(item_ts)[same_row] >= 0), f"{seq.name} not oldest-first"
        for field in seq.fields:  # every field has one value per item
            assert np.array_equal(pc.list_value_length(t[field.name]).to_numpy(), lengths)


@pytest.mark.parametrize(
    ("feature", "sequence", "days", "filter_field", "filter_value"),
    [
        ("n_match_7d", "match", 7, None, None),
        ("n_match_30d", "match", 30, None, None),
        ("n_conv_7d", "conv", 7, None, None),
        ("n_conv_30d", "conv", 30, None, None),
        ("n_match_adv_30d", "match", 30, "match_advertiser", "advertiser_id"),
        ("n_ads_click_7d", "ads", 7, "ads_action", 0),
    ],
)
def test_counting_features_equal_counts_over_the_sequences(
    world: tuple[Path, WorldSummary],
    feature: str,
    sequence: str,
    days: int,
    filter_field: str | None,
    filter_value: str | int | None,
) -> None:
    out, _ = world
    t = _all(out)
    ts = t["ts"].to_numpy()
    row, item_ts, lengths = _flat(t, f"{sequence}_ts")
    hit = item_ts >= ts[row] - days * DAY
    if filter_field is not None:
        values = t[filter_field].combine_chunks().flatten().to_numpy()
        target = t[filter_value].to_numpy()[row] if isinstance(filter_value, str) else filter_value
        hit &= values == target
    recount = np.bincount(row, weights=hit, minlength=len(t))
    # The sequence holds the whole window unless it was cut to max_len inside the window.
    oldest = np.full(len(t), -np.inf)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    oldest[lengths > 0] = item_ts[first[lengths > 0]]
    covered = (lengths < CONFIG.max_seq_len) | (oldest < ts - days * DAY)
    assert covered.mean() > 0.5
    stored = t[feature].to_numpy()
    np.testing.assert_array_equal(stored[covered], recount[covered])
    assert np.all(stored[~covered] >= recount[~covered])
    assert stored.max() > 0


def test_oracle_auc_on_held_out_day(world: tuple[Path, WorldSummary]) -> None:
    out, summary = world
    held_out = CONFIG.day_names[-1]
    t = _day(out, held_out)
    weight = 1.0 / t["sample_rate"].to_numpy()
    for head in CONVERSION_TYPES:
        auc = roc_auc_score(
            t[head].to_numpy(), t[f"oracle_{head}"].to_numpy(), sample_weight=weight
        )
        assert 0.75 <= auc <= 0.95, (head, auc)
        population = summary.days[-1].oracle_roc_auc[head]
        assert population is not None and 0.75 <= population <= 0.95, (head, population)


def _onehot(x: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n)[x]


def _vectors(t: pa.Table, column: str) -> np.ndarray:
    arr = t[column].combine_chunks()
    return arr.flatten().to_numpy().reshape(len(t), -1)


def _non_sequence_features(t: pa.Table) -> np.ndarray:
    """Demographic, predicted interest, pre-trained, candidate and context features, plus
    the user x ad embedding product (so the linear model gets the obvious cross)."""
    c = CONFIG
    user, ad = _vectors(t, "user_emb"), _vectors(t, "ad_emb")
    return np.concatenate(
        [
            (t["user_age"].to_numpy()[:, None] - 40) / 15,
            _onehot(t["user_gender"].to_numpy(), 3),
            _onehot(t["user_country"].to_numpy(), c.n_countries),
            _onehot(t["user_pred_interest"].to_numpy(), c.n_topics),
            _onehot(t["ad_topic"].to_numpy(), c.n_topics),
            _onehot(t["hour"].to_numpy(), 24),
            4 * user,
            4 * ad,
            16 * user * ad,
        ],
        axis=1,
    )


def _sequence_aggregates(t: pa.Table) -> np.ndarray:
    """Simple pooled aggregates of S_match and S_conv: sizes, last-7-day and last-2-day
    counts, and (decayed) counts at the candidate's advertiser."""
    ts, advertiser = t["ts"].to_numpy(), t["advertiser_id"].to_numpy()
    out = []
    for seq in ("match", "conv"):
        row, item_ts, lengths = _flat(t, f"{seq}_ts")
        _, adv, _ = _flat(t, f"{seq}_advertiser")
        _, action, _ = _flat(t, f"{seq}_action")
        age = (ts[row] - item_ts) / DAY
        same = adv == advertiser[row]

        def per_row(values: np.ndarray, row: np.ndarray = row) -> np.ndarray:
            return np.bincount(row, weights=values.astype(np.float64), minlength=len(t))

        out += [
            np.log1p(lengths),
            np.log1p(per_row(age < 7)),
            np.log1p(per_row(age < 2)),
            np.log1p(per_row(same)),
            per_row(same * np.exp(-age)),
            per_row(same * (action == 1) * np.exp(-age)),
        ]
    return np.stack(out, axis=1)


def test_sequences_carry_signal_a_pooled_linear_model_misses(
    world: tuple[Path, WorldSummary],
) -> None:
    """Logistic regression on non-sequence features is far below the oracle; adding
    pooled S_match / S_conv aggregates narrows the gap (any-conversion label)."""
    out, _ = world
    names = CONFIG.day_names
    train = pa.concat_tables(_day(out, d) for d in names[:3])
    test = pa.concat_tables(_day(out, d) for d in names[3:])

    def label(t: pa.Table) -> np.ndarray:
        return _converting(t).astype(int)

    def auc(features: Callable[[pa.Table], np.ndarray]) -> float:
        model = LogisticRegression(C=0.1, max_iter=3000)
        model.fit(features(train), label(train), sample_weight=1 / train["sample_rate"].to_numpy())
        score = model.decision_function(features(test))
        return float(
            roc_auc_score(label(test), score, sample_weight=1 / test["sample_rate"].to_numpy())
        )

    base = auc(_non_sequence_features)
    pooled = auc(lambda t: np.concatenate([_non_sequence_features(t), _sequence_aggregates(t)], 1))
    oracle_score = sum(test[f"oracle_{h}"].to_numpy() for h in CONVERSION_TYPES)
    oracle = roc_auc_score(
        label(test), oracle_score, sample_weight=1 / test["sample_rate"].to_numpy()
    )
    assert oracle - base > 0.08, (base, pooled, oracle)
    assert pooled - base > 0.02, (base, pooled, oracle)
    assert pooled < oracle - 0.05, (base, pooled, oracle)


def test_spec_loads_and_covers_every_non_oracle_column(world: tuple[Path, WorldSummary]) -> None:
    out, _ = world
    spec = load_spec(out / "_spec.yaml")
    assert spec == world_spec(CONFIG)
    written = set(pq.read_schema(next((out / f"dt={CONFIG.day_names[0]}").glob("*.parquet"))).names)
    oracle = {c for c in written if c.startswith(spec.oracle_prefix)}
    assert oracle == {f"oracle_{h}" for h in spec.label_names}
    assert written - oracle == set(spec.source_columns()) | {"user_id"}
    assert spec.sampling.negative_rate == CONFIG.negative_rate
    assert json.loads((out / "_world.json").read_text())["config"] == CONFIG.model_dump()


TINY = WorldConfig(users=80, days=2, impressions_per_day=3000, history_days=10, seed=3)


def _content(root: Path) -> dict[str, pa.Table]:
    return {d.name: pq.read_table(d) for d in day_dirs(root)}


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", TINY)
    synthesize(tmp_path / "b", TINY)
    synthesize(tmp_path / "c", TINY.model_copy(update={"seed": 4}))
    a, b, c = (_content(tmp_path / n) for n in "abc")
    assert a.keys() == b.keys() == c.keys()
    assert all(a[d].equals(b[d]) for d in a)
    assert not any(a[d].equals(c[d]) for d in a)


def test_no_sequence_topics_drops_only_the_topic_fields(tmp_path: Path) -> None:
    synthesize(tmp_path / "with", TINY)
    synthesize(tmp_path / "ids", TINY.model_copy(update={"sequence_topics": False}))
    spec = load_spec(tmp_path / "ids" / "_spec.yaml")
    fields = {s.name: [f.name for f in s.fields] for s in spec.sequences}
    assert fields["org"] == ["org_pin", "org_action"]
    assert fields["ads"] == ["ads_item", "ads_advertiser", "ads_action"]
    full, ids = _content(tmp_path / "with"), _content(tmp_path / "ids")
    assert full.keys() == ids.keys()
    for day in full:
        assert set(full[day].column_names) - set(ids[day].column_names) == {
            "org_topic",
            "ads_topic",
        }
        assert full[day].select(ids[day].column_names).equals(ids[day])  # the same rows and values


def test_chunked_users_write_one_part_per_chunk(tmp_path: Path) -> None:
    config = TINY.model_copy(update={"users_per_chunk": 30})
    synthesize(tmp_path / "w", config)
    for day in day_dirs(tmp_path / "w"):
        assert len(list(day.glob("part-*.parquet"))) == 3
        users = pq.read_table(day, columns=["user_id"])["user_id"].to_numpy()
        assert users.min() >= 0 and users.max() < config.users


def test_failure_leaves_no_output(tmp_path: Path) -> None:
    calls: list[str] = []

    def interrupt(message: str) -> None:
        calls.append(message)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "out", TINY, progress=interrupt)
    assert calls  # it was interrupted after writing a day
    assert list(tmp_path.iterdir()) == []
