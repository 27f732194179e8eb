"""datarax core: the contracts every component follows."""

from datarax.core.batch_operator import BatchOperator
from datarax.core.batcher import BatcherModule
from datarax.core.config import DataraxModuleConfig, OperatorConfig, StructuralConfig
from datarax.core.data_source import DataSourceModule, LocalFilesOnlyMixin
from datarax.core.element_batch import Batch, Element
from datarax.core.metadata import Metadata, MetadataManager, RecordMetadata
from datarax.core.module import CheckpointableIteratorModule, DataraxModule, IterationCount
from datarax.core.operator import OperatorModule
from datarax.core.sampler import SamplerModule
from datarax.core.sharder import SharderModule
from datarax.core.structural import StructuralModule

__all__ = [
    "Batch",
    "BatchOperator",
    "BatcherModule",
    "CheckpointableIteratorModule",
    "DataSourceModule",
    "DataraxModuleConfig",
    "DataraxModule",
    "Element",
    "IterationCount",
    "LocalFilesOnlyMixin",
    "Metadata",
    "MetadataManager",
    "OperatorConfig",
    "OperatorModule",
    "RecordMetadata",
    "SamplerModule",
    "SharderModule",
    "StructuralConfig",
    "StructuralModule",
]
