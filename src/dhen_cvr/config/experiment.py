"""An experiment config: one YAML file with ``model:``, ``loss:`` and ``train:`` sections.

``configs/tiny.yaml`` (fast on a CPU) and ``configs/paper.yaml`` (paper Appendix A) are
the presets; a command takes a path or a preset name, plus ``--set section.key=value``
overrides (values parsed as YAML, so ``--set train.lr=3e-4`` or
``--set loss.ssl.objective=none``)::

    config = load_experiment_config("tiny", ["train.epochs=2"])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from dhen_cvr.config.loss import LossConfig
from dhen_cvr.config.train import TrainConfig
from dhen_cvr.errors import DhenCvrError, describe_validation_error
from dhen_cvr.model.config import ModelConfig

__all__ = [
    "ExperimentConfig",
    "apply_overrides",
    "load_experiment_config",
    "resolve_config_path",
]

# The repository's ``configs/`` (tiny.yaml, paper.yaml) next to ``src/``.
PRESET_DIR = Path(__file__).resolve().parents[3] / "configs"


class ExperimentConfig(BaseModel):
    """Everything that defines a training run except the data and the days."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _ssl_matches_attention(self) -> ExperimentConfig:
        """Next-action prediction needs causal attention (a bidirectional position t-1
        sees item t: the loss falls to ~0 and learns nothing); MLM needs bidirectional."""
        ssl, causal = self.loss.ssl, self.model.sequence.causal
        if ssl.active and ssl.objective == "nal" and not causal:
            raise ValueError(
                "loss.ssl.objective nal needs model.sequence.causal: true (with "
                "bidirectional attention each position sees the item it must predict); "
                "use objective mlm for a bidirectional encoder"
            )
        if ssl.active and ssl.objective == "mlm" and causal:
            raise ValueError(
                "loss.ssl.objective mlm needs model.sequence.causal: false (a bidirectional "
                "encoder that can fill in masked items)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any, source: str = "<config>") -> ExperimentConfig:
        """Validate; errors name the source and the offending key."""
        if not isinstance(data, dict):
            raise DhenCvrError(f"config {source} must be a mapping with model/loss/train sections")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise DhenCvrError(
                describe_validation_error(f"invalid config {source}:", err)
            ) from None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or a preset name (``tiny``, ``paper``) looked up in
    ``./configs/`` and then in the ``configs/`` folder of the source checkout."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name if path.suffix in {".yaml", ".yml"} else f"{path.name}.yaml"
    candidates = [Path("configs") / name, PRESET_DIR / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DhenCvrError(
        f"config {name_or_path!s} not found (looked for the file, then {name} in "
        f"./configs/ and {PRESET_DIR})"
    )


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise DhenCvrError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise DhenCvrError(f"override {text!r}: value is not valid YAML ({err})") from None
    glued = _glued_key(value)
    if glued is not None:
        raise DhenCvrError(
            f"override {text!r}: {glued!r} was read as one key with no value (YAML needs a "
            f"space after the colon: '{glued.replace(':', ': ', 1)}'); JSON works too if "
            "its quotes reach the program, so quote the whole --set value for your shell"
        )
    return key.strip().split("."), value


def _glued_key(value: Any) -> str | None:
    """The first mapping key like ``name:mlp`` with no value inside ``value`` (what a JSON
    override becomes when a shell strips its quotes), else None."""
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None and isinstance(k, str) and ":" in k:
                return k
            found = _glued_key(v)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _glued_key(item)
            if found is not None:
                return found
    return None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``a.b.c=value`` set (list items by index: ``a.0.b``)."""
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = _parse_override(text)
        node: Any = out
        for i, key in enumerate(path[:-1]):
            if isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif isinstance(node, dict):
                node = node.setdefault(key, {})
            else:
                raise DhenCvrError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a section")
        last = path[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise DhenCvrError(f"override {text!r}: {'.'.join(path[:-1])} is not a section")
    return out


def load_experiment_config(
    name_or_path: str | Path, overrides: Sequence[str] = ()
) -> ExperimentConfig:
    """Read a config file (or preset), apply ``--set`` overrides, validate."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DhenCvrError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise DhenCvrError(f"config {path} must be a mapping with model/loss/train sections")
    return ExperimentConfig.from_dict(apply_overrides(data, overrides), str(path))
