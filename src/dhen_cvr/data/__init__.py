"""Data layer: feature spec, id mapping, the typed batch, the synthetic world, the reader."""

from dhen_cvr.data.batch import NUM_TIME_FEATURES, Batch, SequenceBatch
from dhen_cvr.data.spec import FeatureSpec, SpecError, load_spec

__all__ = ["NUM_TIME_FEATURES", "Batch", "FeatureSpec", "SequenceBatch", "SpecError", "load_spec"]
