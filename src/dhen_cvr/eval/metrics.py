"""Binary metrics per head and day (paper 5.2; DESIGN section 6).

ROC-AUC and PR-AUC (average precision) are computed exactly in ``O(N log N)``: sort by
score once, group tied scores, and walk the distinct thresholds (ties get the trapezoid,
i.e. the average rank). They equal ``sklearn.metrics.roc_auc_score`` and
``average_precision_score`` (with ``sample_weight``) to float rounding. Log loss matches
``sklearn.metrics.log_loss`` (probabilities clipped to ``[eps, 1 - eps]``, float64 eps).

Degenerate inputs give NaN instead of raising: ROC-AUC with only one class (sklearn
raises), AP with no positive (sklearn warns and returns 0), calibration with no positive,
anything on zero total weight. Rows with weight 0 are ignored, as sklearn does.

:class:`StreamingBinaryMetrics` takes one evaluation day in chunks. Log loss,
calibration and counts are running sums; exact AUC keeps the day's predictions,
labels and weights (about 17 bytes per row: 1e8 rows ~ 1.7 GB), fine at this library's
scale. ``mode="histogram"`` instead bins scores on a fixed logit grid (``bins`` buckets
over ``logit in [-16, 16]``; scores in one bucket count as tied), memory ``O(bins)``,
for days too large to hold; its AUC/AP are approximations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "BinaryMetrics",
    "OracleCalibration",
    "StreamingBinaryMetrics",
    "average_over_days",
    "average_precision",
    "calibration_standard_error",
    "log_loss",
    "mean_se",
    "relative_lift",
    "roc_auc",
]

_EPS = float(np.finfo(np.float64).eps)
_LOGIT_RANGE = 16.0


# --------------------------------------------------------------------------- functions


def roc_auc(y: npt.ArrayLike, p: npt.ArrayLike, w: npt.ArrayLike | None = None) -> float:
    """Exact (weighted) ROC-AUC of scores ``p`` for binary labels ``y``; NaN if a class is
    missing. ``p`` may be any finite score."""
    tps, fps = _threshold_counts(*_validate(y, p, w))
    return _auc(tps, fps)


def average_precision(y: npt.ArrayLike, p: npt.ArrayLike, w: npt.ArrayLike | None = None) -> float:
    """Exact (weighted) average precision ``Σ_k (R_k - R_{k-1}) P_k`` over distinct
    thresholds (sklearn's PR-AUC, no interpolation); NaN with no positive."""
    tps, fps = _threshold_counts(*_validate(y, p, w))
    return _average_precision(tps, fps)


def log_loss(y: npt.ArrayLike, p: npt.ArrayLike, w: npt.ArrayLike | None = None) -> float:
    """Weighted mean binary cross-entropy of probabilities ``p``; NaN on zero weight."""
    y_, p_, w_ = _validate(y, p, w, probabilities=True)
    total = float(w_.sum())
    return float(np.dot(w_, _row_log_loss(y_, p_))) / total if total > 0 else math.nan


def relative_lift(metric: float, baseline_metric: float) -> float:
    """``(metric - baseline) / baseline`` (e.g. 0.0218 for Table 3's 2.18% AUC lift);
    NaN when the baseline is 0 or either value is not finite."""
    if not (math.isfinite(metric) and math.isfinite(baseline_metric)) or baseline_metric == 0:
        return math.nan
    return (metric - baseline_metric) / baseline_metric


# --------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class BinaryMetrics:
    """One head on one day. ``count``/``positives`` are row counts (unweighted)."""

    roc_auc: float
    pr_auc: float
    log_loss: float
    calibration: float
    count: int
    positives: int
    calibration_top_decile: float = math.nan  # exact mode only
    calibration_se: float = math.nan  # standard error of ``calibration`` (ratio linearisation)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class StreamingBinaryMetrics:
    """Accumulates ``(prediction, label, weight)`` per ``(head, day)`` key, then computes
    :class:`BinaryMetrics` for each. Predictions are probabilities in ``[0, 1]``.

    The weights decide the population: sample weights for the sampled data, or
    ``weight / inclusion_prob`` with corrected probabilities
    (:mod:`dhen_cvr.eval.calibration`) for the full population, where calibration is
    meaningful. For DDP, gather each rank's object (e.g. ``all_gather_object``) and
    :meth:`merge` them: the result equals one process seeing all rows.
    """

    def __init__(self, mode: Literal["exact", "histogram"] = "exact", bins: int = 1 << 16):
        if mode not in ("exact", "histogram"):
            raise ValueError(f"mode must be 'exact' or 'histogram', got {mode!r}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.mode = mode
        self.bins = bins
        self._acc: dict[tuple[str, str], _Accumulator] = {}

    def update(
        self,
        head: str,
        day: str,
        predictions: npt.ArrayLike,
        labels: npt.ArrayLike,
        weights: npt.ArrayLike | None = None,
    ) -> None:
        """Add a chunk of 1-D arrays for one head and day."""
        y, p, w = _validate(labels, predictions, weights, probabilities=True)
        key = (head, day)
        if key not in self._acc:
            self._acc[key] = _Accumulator(self.bins if self.mode == "histogram" else 0)
        self._acc[key].add(y, p, w)

    def update_heads(
        self,
        day: str,
        head_names: Sequence[str],
        predictions: npt.ArrayLike,
        labels: npt.ArrayLike,
        label_mask: npt.ArrayLike | None = None,
        weights: npt.ArrayLike | None = None,
    ) -> None:
        """``B x H`` predictions/labels/mask and ``B`` weights: each head keeps the rows
        where its mask is nonzero."""
        p, y = np.asarray(predictions), np.asarray(labels)
        if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(head_names):
            raise ValueError(
                f"expected B x {len(head_names)} predictions and labels, got {p.shape} and {y.shape}"
            )
        m = np.ones(p.shape, dtype=bool) if label_mask is None else np.asarray(label_mask) != 0
        w = None if weights is None else np.asarray(weights)
        for h, head in enumerate(head_names):
            rows = m[:, h]
            self.update(head, day, p[rows, h], y[rows, h], None if w is None else w[rows])

    def merge(self, other: StreamingBinaryMetrics) -> None:
        """Add every row ``other`` has seen (same mode and bins)."""
        if (other.mode, other.bins) != (self.mode, self.bins):
            raise ValueError("cannot merge metrics with a different mode or bin count")
        for key, acc in other._acc.items():
            if key not in self._acc:
                self._acc[key] = _Accumulator(acc.bins)
            self._acc[key].merge(acc)

    def compute(self) -> dict[tuple[str, str], BinaryMetrics]:
        """``{(head, day): BinaryMetrics}`` in first-seen order."""
        return {key: acc.result() for key, acc in self._acc.items()}


def average_over_days(results: dict[tuple[str, str], BinaryMetrics]) -> dict[str, BinaryMetrics]:
    """Per head, the mean of each metric over days where it is finite (NaN if none), with
    ``count`` and ``positives`` summed (paper 5.2: the average next-day performance)."""
    by_head: dict[str, list[BinaryMetrics]] = {}
    for (head, _day), m in results.items():
        by_head.setdefault(head, []).append(m)

    def mean(ms: list[BinaryMetrics], name: str) -> float:
        finite = [v for v in (getattr(m, name) for m in ms) if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    out: dict[str, BinaryMetrics] = {}
    for head, ms in by_head.items():
        out[head] = BinaryMetrics(
            roc_auc=mean(ms, "roc_auc"),
            pr_auc=mean(ms, "pr_auc"),
            log_loss=mean(ms, "log_loss"),
            calibration=mean(ms, "calibration"),
            count=sum(m.count for m in ms),
            positives=sum(m.positives for m in ms),
            calibration_top_decile=mean(ms, "calibration_top_decile"),
            calibration_se=mean_se([m.calibration_se for m in ms]),
        )
    return out


def mean_se(standard_errors: Sequence[float]) -> float:
    """The standard error of the mean of independent estimates with these standard
    errors: ``sqrt(Σ se²) / n`` over the finite ones (NaN if none)."""
    finite = [se for se in standard_errors if math.isfinite(se)]
    return math.sqrt(sum(se * se for se in finite)) / len(finite) if finite else math.nan


def calibration_standard_error(
    sum_wy: float, sum_wp: float, sum_w2p2: float, sum_w2py: float, sum_w2y2: float
) -> float:
    """Standard error of the ratio ``R = Σ w p / Σ w y`` from its linearisation (rows as
    independent draws: label noise and the down-sampling's weights both count):
    ``sqrt(Σ (w (p - R y))²) / Σ w y``, from the running sums of ``w²p²``, ``w²py``, ``w²y²``.
    NaN without a positive."""
    if sum_wy <= 0:
        return math.nan
    r = sum_wp / sum_wy
    residual = max(sum_w2p2 - 2 * r * sum_w2py + r * r * sum_w2y2, 0.0)
    return math.sqrt(residual) / sum_wy


@dataclass
class _Accumulator:
    """One key's running sums plus either the raw rows (exact) or two histograms."""

    bins: int  # 0 = exact mode
    count: int = 0
    positives: int = 0
    sum_w: float = 0.0
    sum_wy: float = 0.0
    sum_wp: float = 0.0
    sum_wll: float = 0.0
    sum_w2p2: float = 0.0  # for the calibration's standard error
    sum_w2py: float = 0.0
    sum_w2y2: float = 0.0
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    pos_hist: np.ndarray | None = None
    neg_hist: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.bins:
            self.pos_hist = np.zeros(self.bins)
            self.neg_hist = np.zeros(self.bins)

    def add(self, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> None:
        self.count += len(y)
        self.positives += int(y.sum())
        self.sum_w += float(w.sum())
        self.sum_wy += float(np.dot(w, y))
        self.sum_wp += float(np.dot(w, p))
        self.sum_wll += float(np.dot(w, _row_log_loss(y, p)))
        w2 = w * w
        self.sum_w2p2 += float(np.dot(w2, p * p))
        self.sum_w2py += float(np.dot(w2, p * y))
        self.sum_w2y2 += float(np.dot(w2, y))  # y² = y
        if self.pos_hist is not None and self.neg_hist is not None:
            with np.errstate(divide="ignore"):
                logit = np.log(p) - np.log1p(-p)
            scaled = (logit + _LOGIT_RANGE) * (self.bins / (2 * _LOGIT_RANGE))
            b = np.clip(np.nan_to_num(scaled, nan=0.0), 0, self.bins - 1).astype(np.int64)
            self.pos_hist += np.bincount(b, weights=w * y, minlength=self.bins)
            self.neg_hist += np.bincount(b, weights=w * (1 - y), minlength=self.bins)
        else:
            self.chunks.append((y.astype(bool), p, w))

    def merge(self, other: _Accumulator) -> None:
        self.count += other.count
        self.positives += other.positives
        self.sum_w += other.sum_w
        self.sum_wy += other.sum_wy
        self.sum_wp += other.sum_wp
        self.sum_wll += other.sum_wll
        self.sum_w2p2 += other.sum_w2p2
        self.sum_w2py += other.sum_w2py
        self.sum_w2y2 += other.sum_w2y2
        self.chunks.extend(other.chunks)
        if self.pos_hist is not None and self.neg_hist is not None:
            assert other.pos_hist is not None and other.neg_hist is not None
            self.pos_hist += other.pos_hist
            self.neg_hist += other.neg_hist

    def result(self) -> BinaryMetrics:
        if self.pos_hist is not None and self.neg_hist is not None:
            pos, neg = self.pos_hist[::-1], self.neg_hist[::-1]  # highest scores first
            keep = (pos + neg) > 0
            tps, fps = np.cumsum(pos[keep]), np.cumsum(neg[keep])
            top = math.nan
        elif self.chunks:
            y, p, w = (np.concatenate(c) for c in zip(*self.chunks, strict=True))
            tps, fps = _threshold_counts(y.astype(np.float64), p, w)
            top = _top_share_calibration(y.astype(np.float64), p, w, 0.1)
        else:
            tps = fps = np.zeros(0)
            top = math.nan
        return BinaryMetrics(
            roc_auc=_auc(tps, fps),
            pr_auc=_average_precision(tps, fps),
            log_loss=self.sum_wll / self.sum_w if self.sum_w > 0 else math.nan,
            calibration=self.sum_wp / self.sum_wy if self.sum_wy > 0 else math.nan,
            count=self.count,
            positives=self.positives,
            calibration_top_decile=top,
            calibration_se=calibration_standard_error(
                self.sum_wy, self.sum_wp, self.sum_w2p2, self.sum_w2py, self.sum_w2y2
            ),
        )


def _top_share_calibration(y: np.ndarray, p: np.ndarray, w: np.ndarray, share: float) -> float:
    """``Σ w p / Σ w y`` over the highest predictions holding ``share`` of the total weight
    (the row that crosses the boundary is included); NaN without a positive there."""
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(w[order])
    if not len(cum) or cum[-1] <= 0:
        return math.nan
    n = int(np.searchsorted(cum, share * cum[-1])) + 1
    top = order[:n]
    wy = float(np.dot(w[top], y[top]))
    return float(np.dot(w[top], p[top])) / wy if wy > 0 else math.nan


# --------------------------------------------------------------------------- internals


def _validate(
    y: npt.ArrayLike, p: npt.ArrayLike, w: npt.ArrayLike | None, probabilities: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 1-D ``(y, p, w)``; ValueError naming the first offending row."""
    y_ = np.asarray(y, dtype=np.float64).reshape(-1)
    p_ = np.asarray(p, dtype=np.float64).reshape(-1)
    w_ = np.ones_like(y_) if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
    if not (len(y_) == len(p_) == len(w_)):
        raise ValueError(f"lengths differ: labels {len(y_)}, scores {len(p_)}, weights {len(w_)}")
    checks = [
        ("labels must be 0 or 1", (y_ == 0) | (y_ == 1), y_),
        ("scores must be finite", np.isfinite(p_), p_),
        ("weights must be finite and >= 0", np.isfinite(w_) & (w_ >= 0), w_),
    ]
    if probabilities:
        checks.append(("probabilities must be in [0, 1]", (p_ >= 0) & (p_ <= 1), p_))
    for message, ok, values in checks:
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"{message}; row {row} has {values[row]}")
    return y_, p_, w_


def _row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return -(
        y * np.log(np.clip(p, _EPS, 1 - _EPS)) + (1 - y) * np.log(np.clip(1 - p, _EPS, 1 - _EPS))
    )


def _threshold_counts(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted true/false positives at each distinct score, highest score first."""
    nonzero = w != 0
    y, p, w = y[nonzero], p[nonzero], w[nonzero]
    order = np.argsort(-p, kind="stable")
    p, y, w = p[order], y[order], w[order]
    ends = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1] if len(p) else np.zeros(0, np.int64)
    return np.cumsum(y * w)[ends], np.cumsum((1 - y) * w)[ends]


def _auc(tps: np.ndarray, fps: np.ndarray) -> float:
    if len(tps) == 0 or tps[-1] <= 0 or fps[-1] <= 0:
        return math.nan
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float((np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0).sum())  # trapezoid rule


def _average_precision(tps: np.ndarray, fps: np.ndarray) -> float:
    if len(tps) == 0 or tps[-1] <= 0:
        return math.nan
    precision = tps / (tps + fps)
    recall_gain = np.diff(np.r_[0.0, tps / tps[-1]])
    return float(max(0.0, np.dot(recall_gain, precision)))


class OracleCalibration:
    """``Σ w p / Σ w o`` per ``(head, day)``: predictions against the true probabilities
    ``o`` on the same rows, free of the label noise that ``Σ w p / Σ w y`` carries (a day
    with 200 positives moves the latter by about +-7% even for the oracle). Also over the
    model's top decile of predictions (by weight). Rows where ``o`` is NaN are skipped."""

    def __init__(self) -> None:
        self._chunks: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def update_heads(
        self,
        day: str,
        head_names: Sequence[str],
        predictions: np.ndarray,
        oracle: np.ndarray,
        label_mask: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        """``B x H`` predictions, oracle and mask; ``B`` weights."""
        for h, head in enumerate(head_names):
            rows = (np.asarray(label_mask)[:, h] != 0) & ~np.isnan(oracle[:, h])
            if rows.any():
                chunk = (predictions[rows, h], oracle[rows, h], weights[rows])
                self._chunks.setdefault((head, day), []).append(chunk)

    def merge(self, other: OracleCalibration) -> None:
        for key, chunks in other._chunks.items():
            self._chunks.setdefault(key, []).extend(chunks)

    def compute(self) -> dict[tuple[str, str], tuple[float, float]]:
        """``{(head, day): (overall, top decile)}``."""
        out: dict[tuple[str, str], tuple[float, float]] = {}
        for key, chunks in self._chunks.items():
            p, o, w = (np.concatenate(c) for c in zip(*chunks, strict=True))
            overall = float(np.dot(w, p) / np.dot(w, o)) if np.dot(w, o) > 0 else math.nan
            out[key] = (overall, _top_share_calibration(o, p, w, 0.1))
        return out
