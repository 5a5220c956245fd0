"""Crossing modules ``B x L x D -> B x L x D``, one file each, registered by name in
:data:`dhen_cvr.registry.CROSSING_MODULES`. Adding a module: one file + one import line."""

from __future__ import annotations

from dhen_cvr.model.crossing import dcn as dcn
from dhen_cvr.model.crossing import dcn_v2 as dcn_v2
from dhen_cvr.model.crossing import din as din
from dhen_cvr.model.crossing import fm as fm
from dhen_cvr.model.crossing import hstu as hstu
from dhen_cvr.model.crossing import masknet as masknet
from dhen_cvr.model.crossing import mlp as mlp
from dhen_cvr.model.crossing import senet as senet
from dhen_cvr.model.crossing import transformer as transformer
from dhen_cvr.model.crossing.base import (
    CrossingContext,
    CrossingModule,
    CrossingModuleConfig,
    CrossingParams,
    build_crossing_module,
    count_flops,
)

__all__ = [
    "CrossingContext",
    "CrossingModule",
    "CrossingModuleConfig",
    "CrossingParams",
    "build_crossing_module",
    "count_flops",
]
