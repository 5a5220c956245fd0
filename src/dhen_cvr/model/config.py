"""The model's configuration: the ``model:`` section of a run config YAML.

A run config has top-level ``model:``, ``loss:`` and ``train:`` sections; this module reads
``model:`` (:func:`load_model_config`). ``configs/paper.yaml`` is paper Appendix A.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dhen_cvr.data.spec import FeatureCategory
from dhen_cvr.errors import DhenCvrError, describe_validation_error
from dhen_cvr.model.attribute_shares import AttributeShareConfig
from dhen_cvr.model.dhen import DHENConfig
from dhen_cvr.model.sequence import SequenceConfig
from dhen_cvr.model.tokens import DenseTokens

__all__ = ["ConfigError", "ModelConfig", "load_model_config", "read_config_section"]


class ConfigError(DhenCvrError):
    """A run config that cannot be used; the message names the file and the entry."""


class ModelConfig(BaseModel):
    """Everything that shapes :class:`~dhen_cvr.model.cvr_model.CVRModel`.

    dim:             ``D``, the unified token width (paper: 64)
    embedding_dim:   default width of embedding tables (a spec entry may override it)
    sequence:        the behaviour-sequence encoders
    ssl_dim:         width of the self-supervised scoring space (``d_ssl``)
    dhen:            the backbone (layers of crossing modules)
    head_hidden:     each head's own MLP (paper: [128, 128, 128]), then one logit
    head_dropout:    dropout after each hidden layer of the heads
    drop_categories: feature categories removed from the input (paper Figure 6 ablation)
    dense_tokens:    ``group`` (one token per spec group / category, the paper's) or
                     ``feature`` (one token per dense feature)
    dense_bins:      ``T > 0``: dense values enter as their piecewise-linear encoding over
                     ``T`` equal bins of [0, 1] (model/piecewise.py); 0: as they are
    attribute_shares: population share tables looked up by a candidate id, one token each
                     (model/attribute_shares.py): a list of entries, or ``auto`` for
                     every (candidate-shared key, action-type target) pair of the spec's
                     sequences; none by default
    """

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(default=64, gt=0)
    embedding_dim: int = Field(default=64, gt=0)
    sequence: SequenceConfig = SequenceConfig()
    ssl_dim: int = Field(default=64, gt=0)
    dhen: DHENConfig
    head_hidden: list[int] = Field(default_factory=lambda: [128, 128, 128])
    head_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    drop_categories: list[str] = Field(default_factory=list)
    dense_tokens: DenseTokens = "group"
    dense_bins: int = Field(default=0, ge=0)
    attribute_shares: list[AttributeShareConfig] | Literal["auto"] = Field(default_factory=list)

    @field_validator("attribute_shares", mode="before")
    @classmethod
    def _list_or_auto(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"expected a list of entries or 'auto', got {value!r}")
        return value

    @field_validator("head_hidden")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        if any(w <= 0 for w in value):
            raise ValueError(f"head_hidden widths must be positive, got {value}")
        return value

    @field_validator("drop_categories")
    @classmethod
    def _known_categories(cls, value: list[str]) -> list[str]:
        known = {c.value for c in FeatureCategory}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown feature category {unknown}; known: {sorted(known)}")
        return value


def read_config_section(path: str | Path, section: str) -> dict[str, Any]:
    """The raw mapping under top-level key ``section`` of a run config YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config {p} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or section not in data:
        raise ConfigError(f"config {p} has no top-level '{section}:' section")
    raw = data[section]
    if not isinstance(raw, dict):
        raise ConfigError(f"config {p}: '{section}:' must be a mapping")
    return raw


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate the ``model:`` section; errors name the file and the entry."""
    raw = read_config_section(path, "model")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as err:
        title = f"invalid model config in {path}:"
        raise ConfigError(describe_validation_error(title, err, prefix="model.")) from None
