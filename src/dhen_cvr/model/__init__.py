"""Model: feature tokens, sequence encoders, crossing modules, DHEN backbone, heads."""

from dhen_cvr.model.config import ConfigError, ModelConfig, load_model_config
from dhen_cvr.model.cvr_model import CVRModel, ServedCVRModel
from dhen_cvr.model.dhen import DHEN, DHENConfig, DHENLayerConfig
from dhen_cvr.model.output import ModelOutput, SequenceEncoding, TargetEmbedder
from dhen_cvr.model.sequence import SequenceConfig

__all__ = [
    "DHEN",
    "CVRModel",
    "ConfigError",
    "DHENConfig",
    "DHENLayerConfig",
    "ModelConfig",
    "ModelOutput",
    "SequenceConfig",
    "SequenceEncoding",
    "ServedCVRModel",
    "TargetEmbedder",
    "load_model_config",
]
