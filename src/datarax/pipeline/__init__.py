"""The pipeline engine: Pipeline (linear and DAG), its stream and iterator, the compiled step, scan and prefetch."""

from datarax.pipeline.compilation_cache import disable_compilation_cache, enable_compilation_cache
from datarax.pipeline.dag import DagGraph, validate_dag
from datarax.pipeline.host_allocator import AllocatorSettings, host_allocator_settings, tune_host_allocator
from datarax.pipeline.host_stage import HostStageError
from datarax.pipeline.iterator import PipelineIterator
from datarax.pipeline.pipeline import Pipeline
from datarax.pipeline.prefetch import prefetch_to_device
from datarax.pipeline.program import PROGRAMS, ProgramCache, StepPlan, StepProgram
from datarax.pipeline.stream import StreamSpec

__all__ = [
    "PROGRAMS",
    "AllocatorSettings",
    "DagGraph",
    "HostStageError",
    "Pipeline",
    "PipelineIterator",
    "ProgramCache",
    "StepPlan",
    "StepProgram",
    "StreamSpec",
    "disable_compilation_cache",
    "enable_compilation_cache",
    "host_allocator_settings",
    "prefetch_to_device",
    "tune_host_allocator",
    "validate_dag",
]
