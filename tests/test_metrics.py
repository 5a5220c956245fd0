"""Evaluation metrics vs scikit-learn, and the down-sampling correction (paper 5.1-5.2)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from dhen_cvr.eval.calibration import (
    calibration,
    correct_for_negative_sampling,
    correct_logits_for_negative_sampling,
    inclusion_weights,
)
from dhen_cvr.eval.metrics import (
    BinaryMetrics,
    StreamingBinaryMetrics,
    average_over_days,
    average_precision,
    calibration_standard_error,
    log_loss,
    mean_se,
    relative_lift,
    roc_auc,
)


def random_case(
    seed: int, n: int, distinct: int | None = None, weighted: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels correlated with scores; ``distinct`` rounds scores to force many ties;
    weights include exact zeros."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.5, 4.0, n)
    if distinct is not None:
        p = np.round(p * distinct) / distinct
    y = (rng.random(n) < np.clip(p * 1.5, 0, 1)).astype(np.int64)
    w = None
    if weighted:
        w = rng.exponential(1.0, n)
        w[rng.random(n) < 0.05] = 0.0
    return y, p, w


CASES = [
    (0, 50, None, False),
    (1, 2000, None, True),
    (2, 2000, 20, True),  # heavy ties
    (3, 5000, 3, False),  # almost all tied
    (4, 7, None, True),
]


@pytest.mark.parametrize(("seed", "n", "distinct", "weighted"), CASES)
def test_functions_equal_sklearn(seed: int, n: int, distinct: int | None, weighted: bool) -> None:
    y, p, w = random_case(seed, n, distinct, weighted)
    if len(np.unique(y)) < 2:
        y[:2] = [0, 1]
    assert roc_auc(y, p, w) == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w), abs=1e-9)
    assert average_precision(y, p, w) == pytest.approx(
        skm.average_precision_score(y, p, sample_weight=w), abs=1e-9
    )
    assert log_loss(y, p, w) == pytest.approx(
        skm.log_loss(y, p, sample_weight=w, labels=[0, 1]), abs=1e-9
    )


def test_hand_computed_auc_with_a_tie() -> None:
    # Positives at 0.9 and 0.5, negatives at 0.5 and 0.1: pairs (0.9>0.5, 0.9>0.1,
    # 0.5=0.5 -> 1/2, 0.5>0.1) -> 3.5 / 4.
    assert roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875, abs=1e-15)
    # AP: thresholds 0.9 (P=1, R=.5), 0.5 (P=2/3, R=1) -> .5 + .5 * 2/3.
    assert average_precision([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(5 / 6)


def test_scores_need_not_be_probabilities_for_ranking_metrics() -> None:
    y, p, w = random_case(9, 500)
    logits = np.log(p + 1e-3) - np.log1p(-p)
    assert roc_auc(y, logits, w) == pytest.approx(skm.roc_auc_score(y, logits, sample_weight=w))


def test_degenerate_inputs() -> None:
    p = np.array([0.2, 0.4, 0.4])
    assert math.isnan(roc_auc([1, 1, 1], p))  # sklearn raises here
    assert math.isnan(roc_auc([0, 0, 0], p))
    assert math.isnan(average_precision([0, 0, 0], p))  # sklearn warns and returns 0
    assert average_precision([1, 1, 1], p) == skm.average_precision_score([1, 1, 1], p) == 1.0
    assert log_loss([1, 1, 1], p) == pytest.approx(skm.log_loss([1, 1, 1], p, labels=[0, 1]))
    assert math.isnan(roc_auc([0, 1], [0.1, 0.9], [0.0, 1.0]))  # weight removes a class
    assert math.isnan(log_loss([0, 1], [0.1, 0.9], [0.0, 0.0]))
    assert math.isnan(roc_auc([], []))
    # A zero-weight row at the top score is ignored (no 0/0 precision).
    y0, p0, w0 = [0, 1, 0], [0.9, 0.5, 0.1], [0.0, 1.0, 1.0]
    assert average_precision(y0, p0, w0) == skm.average_precision_score(y0, p0, sample_weight=w0)
    # Clipping at float64 eps, as sklearn does.
    assert log_loss([1, 0], [0.0, 1.0]) == pytest.approx(skm.log_loss([1, 0], [0.0, 1.0]))


def test_bad_input_names_the_row() -> None:
    with pytest.raises(ValueError, match="labels must be 0 or 1; row 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="scores must be finite; row 0"):
        roc_auc([0, 1], [math.nan, 0.2])
    with pytest.raises(ValueError, match="weights must be finite and >= 0; row 1"):
        roc_auc([0, 1], [0.1, 0.2], [1.0, -1.0])
    with pytest.raises(ValueError, match=r"probabilities must be in \[0, 1\]; row 0"):
        log_loss([0, 1], [1.5, 0.2])
    with pytest.raises(ValueError, match="lengths differ"):
        roc_auc([0, 1], [0.1])


def test_streaming_in_chunks_and_merged_equals_sklearn() -> None:
    heads = ["click", "checkout"]
    y_all, p_all, w_all = [], [], []
    for seed in range(2):
        y, p, w = random_case(20 + seed, 3000, distinct=50)
        y_all.append(y)
        p_all.append(p)
        assert w is not None
        w_all.append(w)
    labels = np.stack(y_all, 1)
    preds = np.stack(p_all, 1)
    mask = np.ones_like(labels)
    mask[::3, 1] = 0  # the checkout head is undefined on every third row
    weights = w_all[0]

    # Two "ranks" each stream half of the rows in uneven chunks, then merge.
    ranks = [StreamingBinaryMetrics(), StreamingBinaryMetrics()]
    for start, stop in [(0, 700), (700, 1500), (1500, 2999), (2999, 3000)]:
        rank = ranks[start >= 1500]
        sl = slice(start, stop)
        rank.update_heads("d1", heads, preds[sl], labels[sl], mask[sl], weights[sl])
    merged = pickle.loads(pickle.dumps(ranks[0]))  # what all_gather_object does
    merged.merge(ranks[1])
    results = merged.compute()
    assert list(results) == [("click", "d1"), ("checkout", "d1")]

    for h, head in enumerate(heads):
        rows = mask[:, h] == 1
        y, p, w = labels[rows, h], preds[rows, h], weights[rows]
        m = results[(head, "d1")]
        assert m.roc_auc == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w), abs=1e-9)
        assert m.pr_auc == pytest.approx(
            skm.average_precision_score(y, p, sample_weight=w), abs=1e-9
        )
        assert m.log_loss == pytest.approx(skm.log_loss(y, p, sample_weight=w), abs=1e-9)
        assert m.calibration == pytest.approx(np.dot(w, p) / np.dot(w, y), rel=1e-12)
        assert (m.count, m.positives) == (rows.sum(), y.sum())


def test_histogram_mode_approximates_exact_mode() -> None:
    y, p, w = random_case(30, 20000)
    exact, approx = StreamingBinaryMetrics(), StreamingBinaryMetrics("histogram", bins=4096)
    for s in (exact, approx):
        s.update("cvr", "d1", p[:9000], y[:9000], None if w is None else w[:9000])
        s.update("cvr", "d1", p[9000:], y[9000:], None if w is None else w[9000:])
    e, a = exact.compute()[("cvr", "d1")], approx.compute()[("cvr", "d1")]
    assert a.roc_auc == pytest.approx(e.roc_auc, abs=2e-3)
    assert a.pr_auc == pytest.approx(e.pr_auc, abs=5e-3)
    # Sums are exact in both modes.
    assert (a.log_loss, a.calibration, a.count) == pytest.approx(
        (e.log_loss, e.calibration, e.count), rel=1e-12
    )
    with pytest.raises(ValueError, match="different mode"):
        exact.merge(approx)


def test_calibration_standard_error_equals_a_loop_in_both_modes() -> None:
    y, p, w = random_case(31, 5000)
    w = np.ones_like(p) if w is None else w
    r = np.dot(w, p) / np.dot(w, y)
    loop = math.sqrt(
        sum((wi * (pi - r * yi)) ** 2 for yi, pi, wi in zip(y, p, w, strict=True))
    ) / np.dot(w, y)
    for mode in ("exact", "histogram"):
        whole, halves = StreamingBinaryMetrics(mode), StreamingBinaryMetrics(mode)
        other = StreamingBinaryMetrics(mode)
        whole.update("h", "d", p, y, w)
        halves.update("h", "d", p[:1234], y[:1234], w[:1234])
        other.update("h", "d", p[1234:], y[1234:], w[1234:])
        halves.merge(other)  # as DDP ranks are merged
        for s in (whole, halves):
            assert s.compute()[("h", "d")].calibration_se == pytest.approx(loop, rel=1e-9)
    assert math.isnan(calibration_standard_error(0.0, 1.0, 1.0, 0.0, 0.0))  # no positive
    assert mean_se([0.3, 0.4, math.nan]) == pytest.approx(0.25)  # sqrt(0.09 + 0.16) / 2


def test_calibration_standard_error_matches_the_spread_of_down_sampled_days() -> None:
    """A calibrated model on many independent days of one population, negatives kept at
    rate 0.1 (weights 1 / pi): the reported standard error is the spread of the day's
    sum p / sum y, and 1.96 se covers the truth (1) on ~95% of days."""
    rng = np.random.default_rng(7)
    p = np.clip(rng.lognormal(np.log(0.01), 1.0, 20000), 0, 0.5)  # ~300 positives a day
    calibrations, errors = [], []
    for _ in range(400):
        y = (rng.random(p.size) < p).astype(np.float64)
        kept = (y == 1) | (rng.random(p.size) < 0.1)
        w = np.where(y == 1, 1.0, 10.0)[kept]
        s = StreamingBinaryMetrics()
        s.update("h", "d", p[kept], y[kept], w)
        m = s.compute()[("h", "d")]
        calibrations.append(m.calibration)
        errors.append(m.calibration_se)
    spread, se = float(np.std(calibrations)), float(np.mean(errors))
    assert 0.85 < se / spread < 1.15, (se, spread)
    covered = np.mean(np.abs(np.array(calibrations) - 1) <= 1.96 * np.array(errors))
    assert 0.91 < covered < 0.98, covered


def test_average_over_days_and_relative_lift() -> None:
    day1 = BinaryMetrics(0.8, 0.2, 0.3, 1.1, 100, 5)
    day2 = BinaryMetrics(0.7, 0.4, 0.5, math.nan, 50, 0)
    avg = average_over_days({("cvr", "d1"): day1, ("cvr", "d2"): day2})["cvr"]
    assert avg.roc_auc == pytest.approx(0.75) and avg.pr_auc == pytest.approx(0.3)
    assert avg.calibration == pytest.approx(1.1)  # NaN days skipped
    assert (avg.count, avg.positives) == (150, 5)
    assert avg.as_dict()["count"] == 150
    assert relative_lift(0.7218, 0.7) == pytest.approx(0.0218 / 0.7)
    assert math.isnan(relative_lift(0.5, 0.0)) and math.isnan(relative_lift(math.nan, 0.7))


# --------------------------------------------------------------------- calibration


def test_correction_equals_logit_shift_and_inverts_sampling() -> None:
    r = 0.05
    p_true = np.array([0.0, 1e-300, 1e-9, 1e-4, 0.01, 0.3, 0.9, 1 - 1e-12, 1.0])
    p_sampled = p_true / (p_true + (1 - p_true) * r)  # what a model of the sampled data sees
    back = correct_for_negative_sampling(p_sampled, r)
    assert np.all(np.isfinite(back))
    np.testing.assert_allclose(back, p_true, rtol=1e-9, atol=1e-300)

    interior = (p_sampled > 0) & (p_sampled < 1)
    logit = np.log(p_sampled[interior]) - np.log1p(-p_sampled[interior])
    shifted = correct_logits_for_negative_sampling(logit, r)
    np.testing.assert_allclose(shifted, logit - math.log(1 / r))
    np.testing.assert_allclose(1 / (1 + np.exp(-shifted)), back[interior], rtol=1e-9)

    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)  # torch works too
    assert torch.allclose(
        correct_for_negative_sampling(t, 0.5), torch.tensor([0, 1 / 3, 1.0]).double()
    )
    assert correct_for_negative_sampling(0.5, 1.0) == 0.5
    with pytest.raises(ValueError, match="negative_rate"):
        correct_for_negative_sampling(p_sampled, 0.0)


def test_calibrated_predictor_under_5pct_negative_sampling() -> None:
    rng = np.random.default_rng(0)
    n, r = 400_000, 0.05
    p_true = rng.beta(0.3, 10.0, n)
    y = (rng.random(n) < p_true).astype(np.int64)
    inclusion = np.where(y == 1, 1.0, r)
    kept = rng.random(n) < inclusion
    y, p_true, inclusion = y[kept], p_true[kept], inclusion[kept]
    p_sampled = p_true / (p_true + (1 - p_true) * r)  # a perfect model of the sampled data

    w = inclusion_weights(inclusion)
    served = correct_for_negative_sampling(p_sampled, r)
    assert calibration(y, served, w) == pytest.approx(1.0, abs=0.03)
    assert calibration(y, p_sampled) == pytest.approx(1.0, abs=0.03)  # sampled view
    assert calibration(y, p_sampled, w) > 3  # uncorrected scores over-predict
    assert calibration(y, served) < 0.3  # corrected scores without weights under-predict

    with pytest.raises(ValueError, match="row 1"):
        inclusion_weights([0.5, 0.0])
    assert math.isnan(calibration([0, 0], [0.1, 0.2]))
