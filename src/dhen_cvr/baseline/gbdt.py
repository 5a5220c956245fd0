"""The GBDT yardstick (DESIGN 6b): one LightGBM model per head on spec-derived features.

:func:`train_baseline` reads the training and evaluation days with the project's reader
(ids mapped exactly as the model sees them), builds :class:`FeatureBuilder` columns,
fits one binary GBDT per head on the training rows where the head's label is defined
(its ``label_mask``), plus one for "any keep label is 1" when the data is negatively
down-sampled, and scores the evaluation days into the same :class:`EvalReport` as
``dhen-cvr evaluate`` (served probabilities use the exact any-keep-label correction).

Early stopping (``gbdt.early_stopping``): ``last_day`` (default) holds out the last
training day, finds the best number of trees on it (log loss), then, with
``gbdt.refit`` (default), refits on *all* training days with that many trees scaled by
the row ratio (more data supports a few more trees), so the newest day is trained on,
as it would be in production. ``random`` holds out ``valid_fraction`` of the rows (also
the fallback with a single training day); ``none`` trains ``n_estimators`` trees.
Deterministic for a given ``seed`` and ``threads`` (LightGBM ``deterministic=True``).

Intercepts (``gbdt.calibrate``): ``none`` (default) serves the boosters as trained. Trees
fit their own training positives, so a booster whose mean matches its training labels
predicts lower on rows it was not fitted on (on the quickstart world the out-of-fold
offsets below are +0.09 to +0.15 on the served heads: 9-16% low). ``crossfit`` scores every training day with a booster
of the same number of trees fitted on the other days, and adds to each model the logit
offset that makes these out-of-fold scores match the labels
(:func:`~dhen_cvr.train.fit_intercepts`): the out-of-sample level, at one extra fit per
training day and model.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dhen_cvr.baseline.aggregates import FeatureBuilder, FeatureConfig
from dhen_cvr.data.decode import parquet_files
from dhen_cvr.data.reader import ParquetBatchStream, make_loader
from dhen_cvr.data.spec import FeatureSpec, load_data_spec
from dhen_cvr.days import day_name, resolve_days
from dhen_cvr.errors import DhenCvrError, describe_validation_error
from dhen_cvr.eval import EvalReport, ScoreAccumulator
from dhen_cvr.train import fit_intercepts

if TYPE_CHECKING:
    import lightgbm

__all__ = [
    "ANY_KEEP",
    "BaselineConfig",
    "GBDTConfig",
    "load_baseline_config",
    "missing_lightgbm_message",
    "train_baseline",
]

ANY_KEEP = "any-keep"  # the extra model's name (models/any-keep.txt)


def missing_lightgbm_message() -> str:
    return (
        "the GBDT baseline needs LightGBM, which is not installed: "
        "pip install 'dhen-cvr[baselines]' (or pip install lightgbm)"
    )


def _lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError:
        raise DhenCvrError(missing_lightgbm_message()) from None
    return lightgbm


class GBDTConfig(BaseModel):
    """LightGBM settings, the same for every head."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_estimators: int = Field(default=500, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    num_leaves: int = Field(default=31, ge=2)
    max_depth: int = -1
    min_child_samples: int = Field(default=50, ge=1)
    min_sum_hessian_in_leaf: float = Field(default=1e-3, ge=0)
    feature_fraction: float = Field(default=0.8, gt=0, le=1)
    bagging_fraction: float = Field(default=0.8, gt=0, le=1)
    bagging_freq: int = Field(default=1, ge=0)
    lambda_l1: float = Field(default=0.0, ge=0)
    lambda_l2: float = Field(default=1.0, ge=0)
    max_bin: int = Field(default=255, ge=2)
    cat_smooth: float = Field(default=10.0, ge=0)
    min_data_per_group: int = Field(default=50, ge=1)
    early_stopping: Literal["last_day", "random", "none"] = "last_day"
    early_stopping_rounds: int = Field(default=50, ge=1)
    valid_fraction: float = Field(default=0.1, gt=0, lt=1)
    refit: bool = True
    calibrate: Literal["none", "crossfit"] = "none"
    extra: dict[str, Any] = Field(default_factory=dict)  # any other LightGBM parameter


class BaselineConfig(BaseModel):
    """Features, LightGBM settings, seed and threads of the GBDT baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: FeatureConfig = FeatureConfig()
    gbdt: GBDTConfig = GBDTConfig()
    seed: int = Field(default=0, ge=0)
    threads: int = Field(default=1, ge=1)
    batch_size: int = Field(default=8192, ge=1)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_baseline_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> BaselineConfig:
    """A YAML file or preset name (or the defaults) plus ``section.key=value`` overrides."""
    from dhen_cvr.config import apply_overrides

    data: Any = {}
    source = "<defaults>"
    if path is not None:
        p = _config_path(path)
        source = str(p)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise DhenCvrError(f"baseline config {p} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise DhenCvrError(f"baseline config {p} must be a mapping")
    try:
        return BaselineConfig.model_validate(apply_overrides(data, list(overrides)))
    except ValidationError as err:
        raise DhenCvrError(
            describe_validation_error(f"invalid baseline config {source}:", err)
        ) from None


def _config_path(path: str | Path) -> Path:
    """A file, or a preset name (``gbdt``) in ``configs/baselines/`` of the checkout."""
    p = Path(path)
    if p.is_file():
        return p
    from dhen_cvr.config import PRESET_DIR

    preset = PRESET_DIR / "baselines" / (p.name if p.suffix in {".yaml", ".yml"} else f"{p}.yaml")
    if preset.is_file():
        return preset
    raise DhenCvrError(f"baseline config {p} not found (nor {preset})")


# ---- reading -----------------------------------------------------------------------
@dataclass
class _Frame:
    """One or more days' rows: features and everything the report needs."""

    x: np.ndarray  # N x F float32
    labels: np.ndarray  # N x H
    label_mask: np.ndarray  # N x H
    weight: np.ndarray  # N
    inclusion_prob: np.ndarray  # N
    oracle: np.ndarray | None  # N x H (NaN where unknown)

    def __len__(self) -> int:
        return len(self.x)

    @staticmethod
    def concat(frames: list[_Frame]) -> _Frame:
        oracle = None
        if all(f.oracle is not None for f in frames):
            oracle = np.concatenate([f.oracle for f in frames if f.oracle is not None])
        return _Frame(
            x=np.concatenate([f.x for f in frames]),
            labels=np.concatenate([f.labels for f in frames]),
            label_mask=np.concatenate([f.label_mask for f in frames]),
            weight=np.concatenate([f.weight for f in frames]),
            inclusion_prob=np.concatenate([f.inclusion_prob for f in frames]),
            oracle=oracle,
        )


def _integer_request_time(days: list[Path], spec: FeatureSpec) -> bool:
    """Whether every file stores the request time as integer (unix seconds)."""
    files = parquet_files(list(days))
    for path in files:
        schema = pq.read_schema(path)
        idx = schema.get_field_index(spec.request_time)
        if idx < 0 or not pa.types.is_integer(schema.field(idx).type):
            return False
    return bool(files)


def _read_day(day: Path, spec: FeatureSpec, builder: FeatureBuilder, batch_size: int) -> _Frame:
    extra = [spec.request_time] if builder.uses_request_time else []
    stream = ParquetBatchStream(
        [day],
        spec,
        batch_size=batch_size,
        shuffle=False,
        rank=0,
        world_size=1,
        extra_columns=extra,
    )
    parts: list[_Frame] = []
    for batch in make_loader(stream):
        request_time = batch.extras[spec.request_time].numpy() if extra else None
        parts.append(
            _Frame(
                x=builder.transform(batch, request_time),
                labels=batch.labels.double().numpy(),
                label_mask=batch.label_mask.double().numpy(),
                weight=batch.weight.double().numpy(),
                inclusion_prob=batch.inclusion_prob.double().numpy(),
                oracle=None if batch.oracle is None else batch.oracle.double().numpy(),
            )
        )
    if not parts:
        raise DhenCvrError(f"{day} has no rows")
    return _Frame.concat(parts)


# ---- fitting -----------------------------------------------------------------------
def _params(config: BaselineConfig) -> dict[str, Any]:
    g = config.gbdt
    params: dict[str, Any] = {
        "objective": "binary",
        "learning_rate": g.learning_rate,
        "num_leaves": g.num_leaves,
        "max_depth": g.max_depth,
        "min_data_in_leaf": g.min_child_samples,
        "min_sum_hessian_in_leaf": g.min_sum_hessian_in_leaf,
        "feature_fraction": g.feature_fraction,
        "bagging_fraction": g.bagging_fraction,
        "bagging_freq": g.bagging_freq if g.bagging_fraction < 1 else 0,
        "lambda_l1": g.lambda_l1,
        "lambda_l2": g.lambda_l2,
        "max_bin": g.max_bin,
        "cat_smooth": g.cat_smooth,
        "min_data_per_group": g.min_data_per_group,
        "seed": config.seed,
        "deterministic": True,
        "force_col_wise": True,  # as fast or faster here, and deterministic
        "num_threads": config.threads,
        "verbosity": -1,
        "metric": "binary_logloss",
    }
    params.update(g.extra)
    return params


@dataclass
class _Target:
    """One model's training target: rows (a boolean mask) and 0/1 labels."""

    name: str
    rows: np.ndarray  # N bool
    y: np.ndarray  # N float


def _targets(frame: _Frame, spec: FeatureSpec) -> list[_Target]:
    targets = [
        _Target(h, frame.label_mask[:, j] > 0, frame.labels[:, j])
        for j, h in enumerate(spec.label_names)
    ]
    keep = [spec.label_names.index(k) for k in spec.keep_label_names]
    if len(keep) > 1:  # with one keep label, that head's model is the any-keep model
        positive = (frame.labels[:, keep] * frame.label_mask[:, keep] > 0).any(axis=1)
        targets.append(_Target(ANY_KEEP, np.ones(len(frame), bool), positive.astype(float)))
    return targets


@dataclass
class _Fitted:
    booster: lightgbm.Booster
    info: dict[str, Any]
    offset: float = 0.0  # added to the booster's logit (gbdt.calibrate)


def _dataset(
    lgb: Any,
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    builder: FeatureBuilder,
    params: dict[str, Any],
    reference: Any = None,
) -> Any:
    return lgb.Dataset(
        x,
        label=y,
        weight=w,
        feature_name=builder.names,
        categorical_feature=builder.categorical,
        params=params,
        reference=reference,
        free_raw_data=True,
    )


def _fit(
    target: _Target,
    frame: _Frame,
    valid_rows: np.ndarray | None,
    builder: FeatureBuilder,
    config: BaselineConfig,
) -> _Fitted:
    """Early stopping on ``valid_rows`` (then an optional refit on every row)."""
    lgb = _lightgbm()
    g, params = config.gbdt, _params(config)
    rows = target.rows
    info: dict[str, Any] = {
        "train_rows": int(rows.sum()),
        "positives": int(target.y[rows].sum()),
    }
    if info["positives"] == 0 or info["positives"] == info["train_rows"]:
        raise DhenCvrError(
            f"head {target.name!r} has {info['positives']} positives in "
            f"{info['train_rows']} training rows: a GBDT needs both classes"
        )
    if valid_rows is None:
        data = _dataset(lgb, frame.x[rows], target.y[rows], frame.weight[rows], builder, params)
        booster = lgb.train(params, data, num_boost_round=g.n_estimators)
        info["trees"] = booster.num_trees()
        return _Fitted(booster, info)
    fit, valid = rows & ~valid_rows, rows & valid_rows
    train_set = _dataset(lgb, frame.x[fit], target.y[fit], frame.weight[fit], builder, params)
    valid_set = _dataset(
        lgb, frame.x[valid], target.y[valid], frame.weight[valid], builder, params, train_set
    )
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=g.n_estimators,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(g.early_stopping_rounds, verbose=False)],
    )
    best = max(int(booster.best_iteration or g.n_estimators), 1)
    info.update(
        valid_rows=int(valid.sum()),
        best_iteration=best,
        valid_log_loss=float(booster.best_score["valid"]["binary_logloss"]),
    )
    if not g.refit:
        model = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
        info["trees"] = best
        return _Fitted(model, info)
    trees = max(1, round(best * rows.sum() / max(fit.sum(), 1)))
    data = _dataset(lgb, frame.x[rows], target.y[rows], frame.weight[rows], builder, params)
    booster = lgb.train(params, data, num_boost_round=trees)
    info["trees"] = trees
    return _Fitted(booster, info)


def _valid_rows(day_sizes: list[int], config: BaselineConfig) -> tuple[np.ndarray | None, str]:
    """Rows held out for early stopping, and how they were chosen."""
    n = sum(day_sizes)
    mode = config.gbdt.early_stopping
    if mode == "none":
        return None, "none"
    if mode == "last_day" and len(day_sizes) > 1:
        rows = np.zeros(n, bool)
        rows[n - day_sizes[-1] :] = True
        return rows, "last training day"
    rng = np.random.default_rng(config.seed)
    return rng.random(n) < config.gbdt.valid_fraction, f"random {config.gbdt.valid_fraction:.0%}"


def _crossfit_offset(
    target: _Target,
    frame: _Frame,
    day_sizes: list[int],
    trees: int,
    builder: FeatureBuilder,
    config: BaselineConfig,
) -> float:
    """The logit offset that makes out-of-fold scores match the labels: each training day
    scored by a booster of ``trees`` trees fitted on the other days (``gbdt.calibrate``)."""
    lgb, params = _lightgbm(), _params(config)
    day = np.repeat(np.arange(len(day_sizes)), day_sizes)
    scores = np.zeros(len(frame))
    for d in range(len(day_sizes)):
        fit, held = target.rows & (day != d), target.rows & (day == d)
        if not held.any():
            continue
        data = _dataset(lgb, frame.x[fit], target.y[fit], frame.weight[fit], builder, params)
        booster = lgb.train(params, data, num_boost_round=trees)
        scores[held] = booster.predict(frame.x[held], raw_score=True)
    rows = target.rows
    offset = fit_intercepts(scores[rows, None], target.y[rows, None], frame.weight[rows, None])
    return float(offset[0])


def _predict(models: dict[str, _Fitted], name: str, x: np.ndarray) -> np.ndarray:
    fitted = models[name]
    if not fitted.offset:
        return np.asarray(fitted.booster.predict(x), dtype=np.float64)
    logit = np.asarray(fitted.booster.predict(x, raw_score=True), dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(logit + fitted.offset)))


# ---- the public entry point --------------------------------------------------------
def _check_days(train: list[Path], evaluate: list[Path]) -> None:
    """By day name, so a copy of a training day in another folder is refused too."""
    trained = {day_name(p) for p in train}
    overlap = [day_name(p) for p in evaluate if day_name(p) in trained]
    if overlap:
        raise DhenCvrError(
            f"evaluation day(s) {overlap} are also training days: the baseline is measured "
            "next-day, as the model is; choose --eval-days after --train-days"
        )


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DhenCvrError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DhenCvrError(
            f"run folder {out} exists and is not empty; choose another --out or pass --overwrite"
        )


def train_baseline(
    data: str | Path,
    train_days: str | list[Path],
    eval_days: str | list[Path],
    out: str | Path,
    config: BaselineConfig | None = None,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    spec: str | Path | None = None,
    eval_data: str | Path | None = None,
) -> EvalReport:
    """Fit the GBDT baseline on ``train_days`` of ``data`` and evaluate on ``eval_days``
    (of ``eval_data`` when given: e.g. the same days logged without down-sampling; the
    served pCVR still undoes the training data's rate, rows weigh by their own inclusion
    probabilities, as in ``evaluate``).

    Writes ``OUT/eval.json`` (the :class:`EvalReport` of ``dhen-cvr evaluate``),
    ``OUT/run.json`` (data, days, ``kind: gbdt``, features, seconds, per-model rows and
    trees), ``OUT/models/<head>.txt`` (LightGBM model files; ``any-keep.txt`` for the
    any-keep-label model) and ``OUT/feature_importance.csv`` (gain per feature and
    model). ``log`` receives a few progress lines. ``spec``: the feature spec when it is
    not the data folder's ``_spec.yaml``."""
    start = time.perf_counter()
    say = log or (lambda _text: None)
    config = config or BaselineConfig()
    lgb = _lightgbm()
    data, out = Path(data), Path(out)
    eval_from = data if eval_data is None else Path(eval_data)
    train_dirs, eval_dirs = resolve_days(data, train_days), resolve_days(eval_from, eval_days)
    _check_days(train_dirs, eval_dirs)
    if config.gbdt.calibrate == "crossfit" and len(train_dirs) < 2:
        raise DhenCvrError("gbdt.calibrate=crossfit needs at least two training days")
    _check_out(out, overwrite)
    feature_spec = load_data_spec(data, spec)
    builder = FeatureBuilder(
        feature_spec,
        config.features,
        request_time=_integer_request_time(train_dirs + eval_dirs, feature_spec),
    )
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    frames = [_read_day(d, feature_spec, builder, config.batch_size) for d in train_dirs]
    train = _Frame.concat(frames)
    seconds["read_train"] = time.perf_counter() - t0
    say(
        f"read {len(train_dirs)} training day(s): {len(train)} rows, "
        f"{len(builder.names)} features ({seconds['read_train']:.1f} s)"
    )

    t0 = time.perf_counter()
    day_sizes = [len(f) for f in frames]
    valid_rows, how = _valid_rows(day_sizes, config)
    models: dict[str, _Fitted] = {}
    crossfit = config.gbdt.calibrate == "crossfit"
    for target in _targets(train, feature_spec):
        fitted = _fit(target, train, valid_rows, builder, config)
        note = ""
        if crossfit:
            trees = fitted.info["trees"]
            fitted.offset = _crossfit_offset(target, train, day_sizes, trees, builder, config)
            fitted.info["offset"] = fitted.offset
            note = f", out-of-fold intercept {fitted.offset:+.3f}"
        models[target.name] = fitted
        say(f"  {target.name}: {fitted.info['trees']} trees{note}")
    seconds["fit"] = time.perf_counter() - t0
    say(f"fitted {len(models)} models, early stopping on {how} ({seconds['fit']:.1f} s)")

    t0 = time.perf_counter()
    heads = feature_spec.label_names
    keep = feature_spec.keep_label_names
    acc = ScoreAccumulator(heads, feature_spec)
    rows_per_day: dict[str, int] = {}
    for day in eval_dirs:
        frame = _read_day(day, feature_spec, builder, config.batch_size)
        p = np.stack([_predict(models, h, frame.x) for h in heads], axis=1)
        any_sampled = None
        if ANY_KEEP in models:
            any_sampled = _predict(models, ANY_KEEP, frame.x)
        elif len(keep) == 1:
            any_sampled = p[:, heads.index(keep[0])]
        acc.add(
            day_name(day),
            p,
            frame.labels,
            frame.label_mask,
            frame.weight,
            frame.inclusion_prob,
            any_sampled=any_sampled,
            oracle=frame.oracle,
        )
        rows_per_day[day_name(day)] = len(frame)
    report = acc.report([day_name(d) for d in eval_dirs], str(out))
    seconds["evaluate"] = time.perf_counter() - t0

    (out / "models").mkdir(parents=True, exist_ok=True)
    for name, fitted in models.items():
        fitted.booster.save_model(str(out / "models" / f"{name}.txt"))
    _write_importance(out / "feature_importance.csv", builder.names, models)
    report.save(out / "eval.json")
    seconds["total"] = time.perf_counter() - start
    run = {
        "kind": "gbdt",
        "data": str(data),
        "eval_data": str(eval_from),
        "train_days": [day_name(d) for d in train_dirs],
        "eval_days": [day_name(d) for d in eval_dirs],
        "train_rows": len(train),
        "eval_rows": rows_per_day,
        "early_stopping": how,
        "features": builder.names,
        "categorical_features": builder.categorical,
        "models": {name: {"file": f"models/{name}.txt", **m.info} for name, m in models.items()},
        "any_keep_labels": keep,
        "config": config.to_dict(),
        "lightgbm": lgb.__version__,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    say(f"wrote {out / 'eval.json'} ({seconds['total']:.1f} s)")
    return report


def _write_importance(path: Path, names: list[str], models: dict[str, _Fitted]) -> None:
    """feature, then total gain per model (sorted by the mean share of gain)."""
    gains = {
        m: np.asarray(f.booster.feature_importance(importance_type="gain"), np.float64)
        for m, f in models.items()
    }
    shares = np.mean([g / g.sum() if g.sum() > 0 else g for g in gains.values()], axis=0)
    order = np.argsort(-shares, kind="stable")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["feature", "mean_gain_share", *(f"gain.{m}" for m in gains)])
        for i in order:
            gain_cells = [f"{g[i]:.6g}" for g in gains.values()]
            writer.writerow([names[i], f"{shares[i]:.6f}", *gain_cells])
