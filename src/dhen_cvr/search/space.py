"""The ParetoNet search space (paper section 3.3, step 2) and one point in it.

A space file (``configs/search/space.yaml``) declares a base experiment config, overrides
for every trial, and the choices of each dimension::

    base: ../tiny.yaml
    set: {train.epochs: 1, train.threads: 1}
    dimensions:
      layers: [1, 2, 3]                 # DHEN depth
      modules_per_layer: [1, 2]         # modules in one layer (a subset of ``modules``)
      modules: [mlp, dcn_v2, masknet, transformer]
      width: [16, 32, 64]               # W: every module's width (see MODULE_TEMPLATES)
      dim: [8, 16, 32]                  # D, the unified token width
      seq_len: [8, 16]                  # the newest items kept per sequence
      ssl_objective: [nal, mlm, none]   # Table 3's prediction goal
      ssl_positives: [2, 5, 10]         # #Pos
      ssl_negatives: [5, 20]            # #Neg
      ssl_org_weight: [0.0, 0.01, 0.1]  # OrgWeight
      ssl_ads_weight: [0.0, 0.01, 0.1]  # AdsWeight

A :class:`Candidate` is one choice per dimension (per layer for the modules); it turns
into ``--set`` overrides of the base config (:meth:`Candidate.overrides`) and into the
numeric features the surrogate reads (:meth:`SearchSpace.features`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dhen_cvr.config import ExperimentConfig, load_experiment_config
from dhen_cvr.errors import DhenCvrError, describe_validation_error

__all__ = [
    "MODULE_TEMPLATES",
    "Candidate",
    "Dimensions",
    "SearchSpace",
    "SurrogateSettings",
    "ThroughputSettings",
    "load_space",
]

SSLObjective = Literal["nal", "mlm", "none"]


def _mlp(w: int) -> dict[str, Any]:
    return {"hidden": [4 * w]}


def _dcn_v2(w: int) -> dict[str, Any]:
    return {"num_layers": 2}


def _masknet(w: int) -> dict[str, Any]:
    return {"blocks": 2, "layout": "parallel", "hidden": 2 * w, "dropout": 0.0}


def _transformer(w: int) -> dict[str, Any]:
    return {"layers": 1, "heads": 2, "width": w, "ffn": 2 * w, "dropout": 0.0}


# A module's params at width W (the shape of paper Table 4, scaled by W).
MODULE_TEMPLATES = {
    "mlp": _mlp,
    "dcn_v2": _dcn_v2,
    "masknet": _masknet,
    "transformer": _transformer,
}


def _non_empty_unique(values: list[Any], name: str) -> list[Any]:
    if len(set(map(json.dumps, values))) != len(values):
        raise ValueError(f"{name} lists a choice twice: {values}")
    return values


def _nal_only() -> list[SSLObjective]:
    return ["nal"]


class Dimensions(BaseModel):
    """The choices of each searched dimension (each a non-empty list)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: list[int] = Field(min_length=1)
    modules_per_layer: list[int] = Field(min_length=1)
    modules: list[str] = Field(min_length=1)
    width: list[int] = Field(min_length=1)
    dim: list[int] = Field(min_length=1)
    seq_len: list[int] = Field(min_length=1)
    ssl_objective: list[SSLObjective] = Field(default_factory=_nal_only, min_length=1)
    ssl_positives: list[int] = Field(default_factory=lambda: [10], min_length=1)
    ssl_negatives: list[int] = Field(default_factory=lambda: [20], min_length=1)
    ssl_org_weight: list[float] = Field(default_factory=lambda: [0.1], min_length=1)
    ssl_ads_weight: list[float] = Field(default_factory=lambda: [0.1], min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Dimensions:
        for name in type(self).model_fields:
            _non_empty_unique(getattr(self, name), name)
        unknown = sorted(set(self.modules) - set(MODULE_TEMPLATES))
        if unknown:
            raise ValueError(
                f"modules {unknown} are not searchable; known: {list(MODULE_TEMPLATES)}"
            )
        for name in ("layers", "modules_per_layer", "width", "dim", "seq_len"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"{name} choices must be >= 1, got {getattr(self, name)}")
        if max(self.modules_per_layer) > len(self.modules):
            raise ValueError(
                f"modules_per_layer {max(self.modules_per_layer)} exceeds the "
                f"{len(self.modules)} modules to choose from"
            )
        return self


class SurrogateSettings(BaseModel):
    """The predictive model of step 4 and the pool of step 5."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trees: int = Field(default=200, gt=0)
    folds: int = Field(default=5, ge=2)  # out-of-fold predictions for the rank correlation
    pool: int = Field(default=2000, gt=0)  # configs scored by the surrogate
    front: int = Field(default=4, ge=0)  # predicted-front configs then really trained


class ThroughputSettings(BaseModel):
    """Examples/s on one fixed in-memory batch of the first evaluation day, the same way
    for every trial: median over ``repeats`` timed steps after ``warmup`` untimed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=256, gt=0)
    warmup: int = Field(default=1, ge=0)
    repeats: int = Field(default=5, gt=0)


class Candidate(BaseModel):
    """One configuration: the module names of every layer plus one value per dimension."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: list[list[str]] = Field(min_length=1)
    width: int
    dim: int
    seq_len: int
    ssl_objective: SSLObjective
    ssl_positives: int
    ssl_negatives: int
    ssl_org_weight: float
    ssl_ads_weight: float

    @property
    def key(self) -> str:
        """A stable id (the same config always gets the same key)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """Short text, e.g. ``mlp+transformer/mlp W32 D16 T16 nal 5:20 .01/.1``."""
        layers = "/".join("+".join(m) for m in self.layers)
        ssl: str = self.ssl_objective
        if ssl != "none":
            ssl += f" {self.ssl_positives}:{self.ssl_negatives} {self.ssl_org_weight:g}/{self.ssl_ads_weight:g}"
        return f"{layers} W{self.width} D{self.dim} T{self.seq_len} {ssl}"

    def overrides(self, module_params: dict[str, dict[str, Any]] | None = None) -> list[str]:
        """``key=value`` overrides of the base config (values as JSON)."""
        extra = module_params or {}
        layers = [
            {
                "ensemble": "sum",
                "modules": [
                    {"name": m, **MODULE_TEMPLATES[m](self.width), **extra.get(m, {})}
                    for m in layer
                ],
            }
            for layer in self.layers
        ]
        items: dict[str, Any] = {
            "model.dim": self.dim,
            "model.dhen.layers": layers,
            "model.sequence.max_len_cap": self.seq_len,
            "model.sequence.causal": self.ssl_objective != "mlm",
            "loss.ssl.objective": self.ssl_objective,
            "loss.ssl.num_positives": self.ssl_positives,
            "loss.ssl.num_negatives": self.ssl_negatives,
            "loss.ssl.weights": {"org": self.ssl_org_weight, "ads": self.ssl_ads_weight},
        }
        return [f"{k}={json.dumps(v)}" for k, v in items.items()]


class SearchSpace(BaseModel):
    """A space file: base config, overrides for every trial, dimensions, and settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str
    set: dict[str, Any] = Field(default_factory=dict)
    module_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    dimensions: Dimensions
    surrogate: SurrogateSettings = SurrogateSettings()
    throughput: ThroughputSettings = ThroughputSettings()

    # ---- sampling ------------------------------------------------------------------
    def layer_choices(self) -> list[tuple[str, ...]]:
        """Every module set one layer may hold (in ``modules`` order)."""
        d = self.dimensions
        return [
            c for k in sorted(d.modules_per_layer) for c in itertools.combinations(d.modules, k)
        ]

    def sample(self, rng: np.random.Generator) -> Candidate:
        """Uniform per dimension; a layer draws its module count, then a subset."""
        d = self.dimensions

        def pick(values: list[Any]) -> Any:
            return values[int(rng.integers(len(values)))]

        layers = []
        for _ in range(pick(d.layers)):
            k = pick(d.modules_per_layer)
            chosen = sorted(rng.choice(len(d.modules), size=k, replace=False).tolist())
            layers.append([d.modules[i] for i in chosen])
        return Candidate(
            layers=layers,
            width=pick(d.width),
            dim=pick(d.dim),
            seq_len=pick(d.seq_len),
            ssl_objective=pick(d.ssl_objective),
            ssl_positives=pick(d.ssl_positives),
            ssl_negatives=pick(d.ssl_negatives),
            ssl_org_weight=pick(d.ssl_org_weight),
            ssl_ads_weight=pick(d.ssl_ads_weight),
        )

    def sample_many(self, n: int, seed: int, *, distinct: bool = True) -> list[Candidate]:
        """``n`` configs from one seed (distinct ones while the space allows)."""
        rng = np.random.default_rng(seed)
        out: list[Candidate] = []
        seen: set[str] = set()
        for _ in range(n * 50):
            if len(out) == n:
                break
            c = self.sample(rng)
            if distinct and c.key in seen:
                continue
            seen.add(c.key)
            out.append(c)
        return out

    # ---- configs and features ------------------------------------------------------
    def experiment(self, candidate: Candidate, extra: list[str] | None = None) -> ExperimentConfig:
        """The full experiment config of one trial."""
        return load_experiment_config(self.base, self.overrides(candidate, extra))

    def overrides(self, candidate: Candidate, extra: list[str] | None = None) -> list[str]:
        base = [f"{k}={json.dumps(v)}" for k, v in self.set.items()]
        return [*base, *candidate.overrides(self.module_params), *(extra or [])]

    def feature_names(self) -> list[str]:
        d = self.dimensions
        names = ["layers", "modules"]
        names += [f"n_{m}" for m in d.modules]
        names += [f"first_{m}" for m in d.modules]
        names += ["log2_width", "log2_dim", "log2_seq_len"]
        names += [f"ssl_{o}" for o in ("nal", "mlm", "none")]
        names += ["ssl_positives", "ssl_negatives", "ssl_org_weight", "ssl_ads_weight"]
        return names

    def features(self, candidate: Candidate) -> list[float]:
        """Search dimensions as numbers (step 4's inputs); SSL settings are 0 when off."""
        d = self.dimensions
        flat = [m for layer in candidate.layers for m in layer]
        on = candidate.ssl_objective != "none"
        row = [float(len(candidate.layers)), float(len(flat))]
        row += [float(flat.count(m)) for m in d.modules]
        row += [float(m in candidate.layers[0]) for m in d.modules]
        row += [math.log2(candidate.width), math.log2(candidate.dim), math.log2(candidate.seq_len)]
        row += [float(candidate.ssl_objective == o) for o in ("nal", "mlm", "none")]
        row += [
            float(candidate.ssl_positives) * on,
            float(candidate.ssl_negatives) * on,
            candidate.ssl_org_weight * on,
            candidate.ssl_ads_weight * on,
        ]
        return row


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file; the base config path is relative to the file, and
    the base config with a sampled candidate must load (checked once, up front)."""
    path = Path(path)
    if not path.is_file():
        raise DhenCvrError(f"search space {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
        space = SearchSpace.model_validate(data)
    except yaml.YAMLError as err:
        raise DhenCvrError(f"search space {path} is not valid YAML: {err}") from None
    except ValidationError as err:
        raise DhenCvrError(
            describe_validation_error(f"invalid search space {path}:", err)
        ) from None
    base = Path(space.base)
    if not base.is_absolute() and (path.parent / base).is_file():
        space = space.model_copy(update={"base": str(path.parent / base)})
    space.experiment(space.sample(np.random.default_rng(0)))
    return space
