"""datarax: a JAX-native data pipeline library built from Flax NNX modules.

The public API is listed here deliberately; everything else is reachable
from its own module (``datarax.core``, ``datarax.sources``, ...). Names are
resolved on first use, so ``import datarax.typing`` stays a leaf import and
``import datarax`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Batch": "datarax.core.element_batch",
    "DataraxModule": "datarax.core.module",
    "DataraxModuleConfig": "datarax.core.config",
    "DefaultBatcher": "datarax.batching.default_batcher",
    "DefaultBatcherConfig": "datarax.batching.default_batcher",
    "Element": "datarax.core.element_batch",
    "ElementOperator": "datarax.operators.element",
    "ElementOperatorConfig": "datarax.operators.element",
    "MemorySource": "datarax.sources.memory_source",
    "MemorySourceConfig": "datarax.sources.memory_source",
    "OperatorConfig": "datarax.core.config",
    "OrbaxCheckpointHandler": "datarax.checkpoint.handlers",
    "Pipeline": "datarax.pipeline.pipeline",
    "PipelineIterator": "datarax.pipeline.iterator",
    "StructuralConfig": "datarax.core.config",
    "prefetch_to_device": "datarax.pipeline.prefetch",
}

if TYPE_CHECKING:  # pragma: no cover - static analysis only
    from datarax.batching.default_batcher import DefaultBatcher, DefaultBatcherConfig
    from datarax.checkpoint.handlers import OrbaxCheckpointHandler
    from datarax.core.config import DataraxModuleConfig, OperatorConfig, StructuralConfig
    from datarax.core.element_batch import Batch, Element
    from datarax.core.module import DataraxModule
    from datarax.operators.element import ElementOperator, ElementOperatorConfig
    from datarax.pipeline.iterator import PipelineIterator
    from datarax.pipeline.pipeline import Pipeline
    from datarax.pipeline.prefetch import prefetch_to_device
    from datarax.sources.memory_source import MemorySource, MemorySourceConfig


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'datarax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [*sorted(_EXPORTS), "__version__"]
