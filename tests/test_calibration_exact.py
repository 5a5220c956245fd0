"""The down-sampling correction, checked against the truth of a simulated log.

Rows are kept when *any* conversion happened, else at rate r (the paper's sampling, the
synthetic world's). With the sampled-data probabilities computed exactly from the true
ones, the any-keep-label map must give the truth back; the per-head map must not (it
under-predicts, most in the top decile). On a large simulated sample the corrected sums
match the labels within 2%. The intercept fit behind recalibration solves its equation.
"""

from __future__ import annotations

import numpy as np
import pytest

from dhen_cvr.eval.calibration import (
    correct_for_any_label_sampling,
    correct_for_negative_sampling,
)
from dhen_cvr.train.recalibrate import fit_intercepts

R = 0.05


def _truth(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True P(y_h | x) for 3 conversion types that share a click: ``N x 3`` and P(any)."""
    rng = np.random.default_rng(seed)
    p_click = 1 / (1 + np.exp(-rng.normal(-3.5, 1.2, n)))
    q = 1 / (1 + np.exp(-rng.normal(-2.0, 1.0, (n, 3))))  # P(type | click), independent
    p = p_click[:, None] * q
    any_conv = p_click * (1 - np.prod(1 - q, axis=1))
    return p, any_conv


def _sampled_scale(p: np.ndarray, any_conv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kept = any_conv + R * (1 - any_conv)  # P(kept | x)
    return p / kept[:, None], any_conv / kept


def test_any_label_map_recovers_the_truth_exactly() -> None:
    p, a = _truth(10_000, seed=0)
    p_s, a_s = _sampled_scale(p, a)
    np.testing.assert_allclose(correct_for_any_label_sampling(p_s, a_s[:, None], R), p, rtol=1e-12)
    naive = correct_for_negative_sampling(p_s, R)
    ratio = naive.sum(0) / p.sum(0)
    assert (ratio < 0.97).all(), ratio  # the per-head map is biased low ...
    top = np.argsort(-naive[:, 0])[:1000]
    assert naive[top, 0].sum() / p[top, 0].sum() < ratio[0]  # ... most where bids are decided


def test_single_keep_label_is_the_familiar_formula() -> None:
    p_s = np.linspace(0.001, 0.999, 50)
    np.testing.assert_allclose(
        correct_for_any_label_sampling(p_s, p_s, R), correct_for_negative_sampling(p_s, R)
    )


def test_corrected_sums_match_labels_on_a_large_sample() -> None:
    rng = np.random.default_rng(1)
    n = 2_000_000
    p, _ = _truth(n, seed=2)
    y = rng.random((n, 3)) < p  # independent labels given x
    any_y = y.any(axis=1)
    keep = any_y | (rng.random(n) < R)
    pi = np.where(any_y, 1.0, R)[keep]
    # the exact sampled-scale probabilities of the kept rows' x, from the labels' own law
    a = 1 - np.prod(1 - p, axis=1)  # P(any) for independent labels
    p_s, a_s = _sampled_scale(p, a)
    served = correct_for_any_label_sampling(p_s[keep], a_s[keep][:, None], R)
    w = 1 / pi
    calibration = (w[:, None] * served).sum(0) / (w[:, None] * y[keep]).sum(0)
    assert np.all(np.abs(calibration - 1) < 0.02), calibration


def test_fit_intercepts_solves_the_score_equation() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(-3, 1.5, (5000, 3))
    labels = (
        rng.random((5000, 3)) < 1 / (1 + np.exp(-(logits + np.array([0.4, -0.3, 0.0]))))
    ).astype(float)
    weights = np.ones_like(labels)
    weights[:100, 2] = 0  # undefined labels do not count
    b = fit_intercepts(logits, labels, weights)
    p = 1 / (1 + np.exp(-(logits + b)))
    np.testing.assert_allclose((weights * p).sum(0), (weights * labels).sum(0), rtol=1e-8)
    # a column without positives is left alone
    assert fit_intercepts(logits, np.zeros_like(labels), weights).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("shift", [-2.0, 0.0, 1.5])
def test_fit_intercepts_finds_a_known_shift(shift: float) -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(-2.5, 1.0, (200_000, 1))
    labels = (rng.random(base.shape) < 1 / (1 + np.exp(-base))).astype(float)
    b = fit_intercepts(base - shift, labels, np.ones_like(labels))
    assert b[0] == pytest.approx(shift, abs=0.03)


def test_fit_intercepts_with_a_scale_solves_the_esmm_equation() -> None:
    """ESMM: p = s sigmoid(l + b) with s the click probability; Σ w s σ(l + b) = Σ w y."""
    rng = np.random.default_rng(5)
    logits = rng.normal(-1.0, 1.0, (20_000, 2))
    scale = 1 / (1 + np.exp(-rng.normal(-2.0, 1.0, (20_000, 2))))
    labels = (rng.random(logits.shape) < scale * 0.3).astype(float)
    weights = rng.uniform(0.5, 2.0, logits.shape)
    b = fit_intercepts(logits, labels, weights, scale=scale)
    p = scale / (1 + np.exp(-(logits + b)))
    np.testing.assert_allclose((weights * p).sum(0), (weights * labels).sum(0), rtol=1e-8)
    # a target the scaled probabilities cannot reach (more positives than Σ w s) is left alone
    assert fit_intercepts(logits, np.ones_like(labels), weights, scale=scale).tolist() == [0, 0]
