"""Operators: per-element transforms, written for one record and ``vmap``ped over batches.

* ``ElementOperator``: a whole-element function ``fn(element, key)``.
* ``MapOperator``: a leaf function applied to chosen keys.
* ``CompositeOperator``: children chained, merged, branched or mixed.
* ``ProbabilisticOperator``: a child applied to each record with probability ``p``.
* ``SelectorOperator``: one randomly chosen child per record.
* ``RandomFlip``: mirror images (or any arrays) along an axis with probability ``p``.

Device operators for images (channels-last, uint8 or float, any batch size):

* Geometry (``image_geometry``): ``RandomCrop`` (with padding), ``CenterCrop``, ``Resize``,
  ``RandomResizedCrop``, ``RandomRotation``, ``RandomTranslate``.
* Photometry (``image_color``): ``Normalize``, ``RandomBrightness``, ``RandomContrast``,
  ``RandomSaturation``, ``RandomHue``, ``Grayscale``, ``GaussianNoise``, ``GaussianBlur``,
  ``RandomErasing``, and the ``rgb_to_hsv`` / ``hsv_to_rgb`` conversions.
* Policies (``rand_augment``): ``RandAugment`` applies ``num_ops`` children chosen per record;
  ``rand_augment_operators`` builds the usual list at one magnitude.

Device operators for audio (``audio``): ``RandomGain``, ``AddNoise`` (at a signal-to-noise ratio),
``RandomTimeCrop``, ``RandomTimeShift``, ``Loudness`` (RMS dB) and ``LogMelSpectrogram``, with
``mel_filterbank``, ``hz_to_mel`` and ``mel_to_hz``.

Sequence operators (``text``): ``PadOrTruncate`` (host), ``TokenMasking`` (BERT-style) and
``TokenDropout``. Packing variable-length sequences into rows is a source:
``datarax.sources.PackedSequenceSource``.

Batch operators (``datarax.core.batch_operator.BatchOperator``) see a whole batch:

* ``BatchMix``: mixup and cutmix with labels mixed by the same weights; padding rows are never
  partners of real rows.

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

from datarax.operators.audio import (
    MEL_SCALES,
    PAD_MODES,
    SHIFT_MODES,
    AddNoise,
    AddNoiseConfig,
    LogMelSpectrogram,
    LogMelSpectrogramConfig,
    Loudness,
    LoudnessConfig,
    RandomGain,
    RandomGainConfig,
    RandomTimeCrop,
    RandomTimeCropConfig,
    RandomTimeShift,
    RandomTimeShiftConfig,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
)
from datarax.operators.batch_mix import BatchMix, BatchMixConfig, MixDraw, valid_partners
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
from datarax.operators.image_color import (
    GaussianBlur,
    GaussianBlurConfig,
    GaussianNoise,
    GaussianNoiseConfig,
    Grayscale,
    GrayscaleConfig,
    Normalize,
    NormalizeConfig,
    RandomBrightness,
    RandomBrightnessConfig,
    RandomContrast,
    RandomContrastConfig,
    RandomErasing,
    RandomErasingConfig,
    RandomHue,
    RandomHueConfig,
    RandomSaturation,
    RandomSaturationConfig,
    hsv_to_rgb,
    rgb_to_hsv,
)
from datarax.operators.image_geometry import (
    CenterCrop,
    CenterCropConfig,
    RandomCrop,
    RandomCropConfig,
    RandomResizedCrop,
    RandomResizedCropConfig,
    RandomRotation,
    RandomRotationConfig,
    RandomTranslate,
    RandomTranslateConfig,
    Resize,
    ResizeConfig,
)
from datarax.operators.map import MapOperator, MapOperatorConfig
from datarax.operators.probabilistic import ProbabilisticOperator, ProbabilisticOperatorConfig
from datarax.operators.rand_augment import RandAugment, RandAugmentConfig, rand_augment_operators
from datarax.operators.selector import SelectorOperator, SelectorOperatorConfig
from datarax.operators.text import (
    PadOrTruncate,
    PadOrTruncateConfig,
    TokenDropout,
    TokenDropoutConfig,
    TokenMasking,
    TokenMaskingConfig,
)

__all__ = [
    "CROPS",
    "MEL_SCALES",
    "PAD_MODES",
    "SHIFT_MODES",
    "STRATEGIES",
    "AddNoise",
    "AddNoiseConfig",
    "BatchMix",
    "BatchMixConfig",
    "CenterCrop",
    "CenterCropConfig",
    "CompositeOperator",
    "CompositeOperatorConfig",
    "DecodeAudio",
    "DecodeAudioConfig",
    "DecodeImage",
    "DecodeImageConfig",
    "ElementOperator",
    "ElementOperatorConfig",
    "GaussianBlur",
    "GaussianBlurConfig",
    "GaussianNoise",
    "GaussianNoiseConfig",
    "Grayscale",
    "GrayscaleConfig",
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
    "LogMelSpectrogram",
    "LogMelSpectrogramConfig",
    "Loudness",
    "LoudnessConfig",
    "MapOperator",
    "MapOperatorConfig",
    "MixDraw",
    "Normalize",
    "NormalizeConfig",
    "PadOrTruncate",
    "PadOrTruncateConfig",
    "ProbabilisticOperator",
    "ProbabilisticOperatorConfig",
    "RandAugment",
    "RandAugmentConfig",
    "RandomBrightness",
    "RandomBrightnessConfig",
    "RandomContrast",
    "RandomContrastConfig",
    "RandomCrop",
    "RandomCropConfig",
    "RandomErasing",
    "RandomErasingConfig",
    "RandomFlip",
    "RandomFlipConfig",
    "RandomGain",
    "RandomGainConfig",
    "RandomHue",
    "RandomHueConfig",
    "RandomResizedCrop",
    "RandomResizedCropConfig",
    "RandomRotation",
    "RandomRotationConfig",
    "RandomSaturation",
    "RandomSaturationConfig",
    "RandomTimeCrop",
    "RandomTimeCropConfig",
    "RandomTimeShift",
    "RandomTimeShiftConfig",
    "RandomTranslate",
    "RandomTranslateConfig",
    "Resize",
    "ResizeConfig",
    "SelectorOperator",
    "SelectorOperatorConfig",
    "TokenDropout",
    "TokenDropoutConfig",
    "TokenMasking",
    "TokenMaskingConfig",
    "hsv_to_rgb",
    "hz_to_mel",
    "mel_filterbank",
    "mel_to_hz",
    "rand_augment_operators",
    "rgb_to_hsv",
    "valid_partners",
]
