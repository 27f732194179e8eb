"""Data sources: where records come from.

* ``MemorySource``: arrays held on the device, gathered inside the compiled step.
* Host sources (read on the host by the pipeline's host stage, from files that
  may be larger than memory): ``NumpyFileSource`` (``.npy`` files),
  ``ParquetSource`` (the ``parquet`` extra), ``ArrayRecordSource`` (the
  ``arrayrecord`` extra; records in the safe format of
  ``datarax.sources.record_format``, or decoded by a function of yours),
  ``HFSource`` (Hugging Face ``datasets``: in memory, saved to disk, or local
  parquet/json/csv/imagefolder files; the ``hf`` extra), ``GrainSource``
  (any Grain random-access source or ``MapDataset``; the ``grain`` extra),
  ``TFDSSource`` (a TFDS dataset prepared as ArrayRecord in a local
  ``data_dir``; the ``tfds`` extra).
* Stream sources (no random access; read in order through a seeded shuffle
  buffer whose record positions are part of the iterator state):
  ``IterableSource`` (a generator function) and ``HFStreamingSource`` (a
  Hugging Face ``IterableDataset``; the ``hf`` extra).
* ``PackedSequenceSource``: variable-length token sequences from another host
  source packed first-fit into fixed-length rows, with ``segment_ids`` and
  ``positions``; the packing is fixed at construction, so epochs and resume
  stay exact.
* ``MixSource``: several host sources mixed by weight; which source and
  record an index reads is a pure function of (seed, index), and each source
  is visited in exact epochs of its own.

Backends are imported when a source is built, never by ``import datarax``.
"""

from datarax.sources.array_record_source import ArrayRecordSource, ArrayRecordSourceConfig
from datarax.sources.grain_source import GrainSource, GrainSourceConfig
from datarax.sources.hf_source import HFSource, HFSourceConfig
from datarax.sources.hf_streaming_source import HFStreamingSource, HFStreamingSourceConfig
from datarax.sources.iterable_source import IterableSource, IterableSourceConfig
from datarax.sources.memory_source import MemorySource, MemorySourceConfig
from datarax.sources.mix_source import MixSource, MixSourceConfig
from datarax.sources.numpy_file_source import NumpyFileSource, NumpyFileSourceConfig
from datarax.sources.packed_source import PackedSequenceSource, PackedSequenceSourceConfig, first_fit
from datarax.sources.parquet_source import ParquetSource, ParquetSourceConfig
from datarax.sources.record_format import decode_record, encode_record, write_array_record
from datarax.sources.tfds_source import TFDSSource, TFDSSourceConfig

__all__ = [
    "ArrayRecordSource",
    "ArrayRecordSourceConfig",
    "GrainSource",
    "GrainSourceConfig",
    "HFSource",
    "HFSourceConfig",
    "HFStreamingSource",
    "HFStreamingSourceConfig",
    "IterableSource",
    "IterableSourceConfig",
    "MemorySource",
    "MemorySourceConfig",
    "MixSource",
    "MixSourceConfig",
    "NumpyFileSource",
    "NumpyFileSourceConfig",
    "PackedSequenceSource",
    "PackedSequenceSourceConfig",
    "ParquetSource",
    "ParquetSourceConfig",
    "TFDSSource",
    "TFDSSourceConfig",
    "decode_record",
    "encode_record",
    "first_fit",
    "write_array_record",
]
