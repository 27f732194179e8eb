"""The pipeline engine: Pipeline (linear and DAG), its iterator, scan and prefetch."""

from datarax.pipeline.dag import DagGraph, validate_dag
from datarax.pipeline.iterator import PipelineIterator
from datarax.pipeline.pipeline import Pipeline
from datarax.pipeline.prefetch import prefetch_to_device

__all__ = ["DagGraph", "Pipeline", "PipelineIterator", "prefetch_to_device", "validate_dag"]
