"""Operators: per-element transforms, written for one record and ``vmap``ped over batches.

* ``ElementOperator``: a whole-element function ``fn(element, key)``.
* ``MapOperator``: a leaf function applied to chosen keys.
* ``CompositeOperator``: children chained, merged, branched or mixed.
* ``ProbabilisticOperator``: a child applied to each record with probability ``p``.
* ``SelectorOperator``: one randomly chosen child per record.
* ``RandomFlip``: mirror images (or any arrays) along an axis with probability ``p``.

Host operators (``datarax.core.host_operator``) run per record on the host, in a pipeline's host
stage, before the batch reaches the device:

* ``HostMapOperator``: a user function ``fn(element, rng)``.
* ``HostFilter``: drops the records a predicate ``keep(element, rng)`` rejects; batches stay full
  and the iterator's position counts records examined, so resume stays exact.
* ``DecodeImage``, ``HostResize``, ``HostCenterCrop``, ``HostRandomResizedCrop``: encoded images to
  fixed-shape uint8 arrays (the ``image`` extra: PIL and simplejpeg, imported when first built).
* ``DecodeAudio``: encoded audio (WAV, FLAC, OGG, ...) to fixed-length float32 samples, mixed to mono,
  resampled, cropped or padded (the ``audio`` extra: soundfile and soxr, imported when first built).

Every operator follows ``datarax.core.operator.OperatorModule``: ``apply`` is pure, randomness
comes only from the per-record key, and ``output_spec`` checks compatibility at construction.
Operators that hold children give child ``i`` a key folded from their own record key.
"""

from datarax.operators.composite import STRATEGIES, CompositeOperator, CompositeOperatorConfig
from datarax.operators.element import ElementOperator, ElementOperatorConfig
from datarax.operators.host_audio import CROPS, DecodeAudio, DecodeAudioConfig
from datarax.operators.host_filter import HostFilter, HostFilterConfig
from datarax.operators.host_image import (
    DecodeImage,
    DecodeImageConfig,
    HostCenterCrop,
    HostCenterCropConfig,
    HostRandomResizedCrop,
    HostRandomResizedCropConfig,
    HostResize,
    HostResizeConfig,
)
from datarax.operators.host_map import HostMapOperator, HostMapOperatorConfig
from datarax.operators.image import RandomFlip, RandomFlipConfig
from datarax.operators.map import MapOperator, MapOperatorConfig
from datarax.operators.probabilistic import ProbabilisticOperator, ProbabilisticOperatorConfig
from datarax.operators.selector import SelectorOperator, SelectorOperatorConfig

__all__ = [
    "CROPS",
    "STRATEGIES",
    "CompositeOperator",
    "CompositeOperatorConfig",
    "DecodeAudio",
    "DecodeAudioConfig",
    "DecodeImage",
    "DecodeImageConfig",
    "ElementOperator",
    "ElementOperatorConfig",
    "HostCenterCrop",
    "HostCenterCropConfig",
    "HostFilter",
    "HostFilterConfig",
    "HostMapOperator",
    "HostMapOperatorConfig",
    "HostRandomResizedCrop",
    "HostRandomResizedCropConfig",
    "HostResize",
    "HostResizeConfig",
    "MapOperator",
    "MapOperatorConfig",
    "ProbabilisticOperator",
    "ProbabilisticOperatorConfig",
    "RandomFlip",
    "RandomFlipConfig",
    "SelectorOperator",
    "SelectorOperatorConfig",
]
