"""The runtime layer under training, evaluation, search and serving: checkpoints
(atomic, self-contained folders), run folders, the distributed context, and the CPU
allocator setting every training or serving process applies.

Public surface: :func:`save_checkpoint`, :func:`load_checkpoint`,
:func:`latest_checkpoint`, :func:`load_trained_model`, :class:`TrainProgress`,
:class:`DistContext`, :func:`init_distributed`, :func:`retain_freed_cpu_memory`,
:func:`run_in_processes` (parallel independent runs), and the run-folder helpers."""

from dhen_cvr.runtime.checkpoint import (
    Checkpoint,
    TrainedModel,
    TrainProgress,
    latest_checkpoint,
    load_checkpoint,
    load_trained_model,
    resolve_checkpoint,
    save_checkpoint,
)
from dhen_cvr.runtime.cpu_memory import retain_freed_cpu_memory
from dhen_cvr.runtime.distributed import DistContext, init_distributed, is_main_process
from dhen_cvr.runtime.processes import run_in_processes
from dhen_cvr.runtime.run_folder import RunInfo, read_run_folder, write_run_folder

__all__ = [
    "Checkpoint",
    "DistContext",
    "RunInfo",
    "TrainProgress",
    "TrainedModel",
    "init_distributed",
    "is_main_process",
    "latest_checkpoint",
    "load_checkpoint",
    "load_trained_model",
    "read_run_folder",
    "resolve_checkpoint",
    "retain_freed_cpu_memory",
    "run_in_processes",
    "save_checkpoint",
    "write_run_folder",
]
