"""Real data in: event logs and flat click/conversion tables -> the section 2 format.

- :func:`prepare_events` (``dhen-cvr prepare-events``): CSV / Parquet event logs with a
  mapping YAML (:class:`EventMapping`) or the ``taobao`` preset;
- :func:`prepare_table` (``dhen-cvr prepare-table``): Ali-CCP-style tables with the
  ``aliccp`` preset (:class:`TableMapping`);
- both return a :class:`QualityReport`, also saved as ``_quality.json`` / ``_quality.txt``.
"""

from dhen_cvr.data.prepare.events import StreamingOptions, event_spec, prepare_events
from dhen_cvr.data.prepare.mapping_config import (
    EventMapping,
    MappingError,
    TableMapping,
    load_mapping,
    load_preset,
    preset_names,
)
from dhen_cvr.data.prepare.report import QualityReport
from dhen_cvr.data.prepare.table import prepare_table, table_spec

__all__ = [
    "EventMapping",
    "MappingError",
    "QualityReport",
    "StreamingOptions",
    "TableMapping",
    "event_spec",
    "load_mapping",
    "load_preset",
    "prepare_events",
    "prepare_table",
    "preset_names",
    "table_spec",
]
