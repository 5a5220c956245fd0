"""The ``loss:`` section of an experiment config: head weights, the self-supervised term
(paper section 3.2, Table 3) and the formulation (independent heads or ESMM)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["LossConfig", "NegativeSource", "SSLConfig"]

NegativeSource = Literal["in_batch", "uniform", "mixed"]


class SSLConfig(BaseModel):
    """The self-supervised term; Table 3's rows are instances (e.g. NAL, #Pos 90, #Neg 20,
    ``weights={org: 0.0002, ads: 0.0001}``).

    weights:     per sequence name; a missing name or 0 turns that sequence off. Names of
                 sequences the model does not encode are ignored (so a feature-category
                 ablation can drop a sequence); :meth:`check_names` catches typos.
    negatives:   ``in_batch`` | ``uniform`` (ids ``1 .. n-2``: real ids, no padding/OOV) |
                 ``mixed`` (``ceil(K/2)`` in-batch, the rest uniform).
    temperature: τ in eq. 3 (the paper has none: 1.0).
    normalize:   L2-normalise queries and targets (cosine scores).
    reduction:   ``mean`` over predicted positions, or ``row_sum`` (sum over positions
                 per row, mean over rows: eq. 3's scale).
    mlm_mask_prob: per-item masking probability of the MLM objective.
    """

    model_config = ConfigDict(extra="forbid")

    objective: Literal["nal", "mlm", "none"] = "nal"
    num_positives: int = Field(default=20, gt=0)
    num_negatives: int = Field(default=20, gt=0)
    weights: dict[str, float] = Field(default_factory=dict)
    temperature: float = Field(default=1.0, gt=0)
    normalize: bool = False
    negatives: NegativeSource = "mixed"
    reduction: Literal["mean", "row_sum"] = "mean"
    mlm_mask_prob: float = Field(default=0.15, gt=0, le=1)

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not (w >= 0 and math.isfinite(w))}
        if bad:
            raise ValueError(f"SSL weights must be finite and >= 0, got {bad}")
        return v

    @property
    def active(self) -> dict[str, float]:
        """Sequences that contribute (weight > 0), or none when the objective is off."""
        if self.objective == "none":
            return {}
        return {k: w for k, w in self.weights.items() if w > 0}

    def check_names(self, sequence_names: Iterable[str]) -> None:
        """Raise ``ValueError`` if a weight names a sequence that is not in the spec."""
        unknown = sorted(set(self.weights) - set(sequence_names))
        if unknown:
            raise ValueError(
                f"ssl.weights names unknown sequences {unknown}; known: {sorted(sequence_names)}"
            )


class LossConfig(BaseModel):
    """head_weights: ``w_h`` per head name (missing -> 1.0, 0 trains nothing on that head);
    ssl: the self-supervised term; formulation: ``independent`` (one BCE per head on its
    own logit) or ``esmm`` (CVR heads trained as ``pCTR * pCVR`` on impressions)."""

    model_config = ConfigDict(extra="forbid")

    head_weights: dict[str, float] = Field(default_factory=dict)
    ssl: SSLConfig = Field(default_factory=SSLConfig)
    formulation: Literal["independent", "esmm"] = "independent"
    esmm_click_head: str = "click"

    @field_validator("head_weights")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not (w >= 0 and math.isfinite(w))}
        if bad:
            raise ValueError(f"head weights must be finite and >= 0, got {bad}")
        return v

    @property
    def esmm_scale_head(self) -> str | None:
        """The click head every CVR head's probability is multiplied by (``esmm``: served
        ``p_h = sigmoid(click) * sigmoid(l_h)``), or None for independent heads."""
        return self.esmm_click_head if self.formulation == "esmm" else None
