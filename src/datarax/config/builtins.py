"""The datarax components a TOML file can name, registered under their class names.

Every source and operator whose constructor takes only data (numbers,
strings, file paths, other components) is here, under its class name
(``type = "ParquetSource"``, ``type = "RandomFlip"``), with the constructor
arguments a TOML table may give beside its config's fields. Those that take a
Python object (a function, a dataset object) are listed as code-only, so that a
TOML file naming one is told how to use it (register a factory). ``digits`` is
a factory: scikit-learn's bundled 8x8 digits (the ``demo`` extra) as a
``MemorySource`` of ``image`` (uint8, ``(8, 8, 1)``, 0..255) and ``label``
(int32), the dataset of ``datarax demo``.

Example:
    >>> names = [component.name for component in builtin_components()]
    >>> "ParquetSource" in names and "RandomFlip" in names and "digits" in names
    True
    >>> digits().element_spec()["image"].shape
    (8, 8, 1)
"""

from __future__ import annotations

from typing import Any

import numpy as np

import datarax.operators as ops
import datarax.sources as sources
from datarax.config.components import (
    HOST_SOURCE,
    OPERATOR,
    Argument,
    CodeOnly,
    Component,
    FactoryComponent,
    ModuleComponent,
)
from datarax.core.extras import import_extra

_PATH = Argument("path")
_PATHS = Argument("paths", required=True)
_STRING = Argument("string")


def digits() -> sources.MemorySource:
    """scikit-learn's 1,797 8x8 digits: ``image`` uint8 ``(8, 8, 1)`` in 0..255 and ``label`` int32.

    Raises:
        ImportError: If scikit-learn (the ``demo`` extra) is not installed.
    """
    datasets = import_extra("sklearn.datasets", extra="demo", owner="digits")
    loaded = datasets.load_digits()
    # Intensities are 0..16; scaled to the 0..255 of real image data, with a channel axis for image operators.
    images = np.round(loaded.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    data = {"image": images, "label": loaded.target.astype(np.int32)}
    return sources.MemorySource(sources.MemorySourceConfig(), data=data)


def _rand_augment_operators(arguments: dict[str, Any], config: Any) -> dict[str, Any]:
    """``RandAugment`` takes either its operators or a magnitude for ``rand_augment_operators``."""
    magnitude = arguments.pop("magnitude", None)
    options = {key: arguments.pop(key) for key in ("num_levels", "fields") if key in arguments}
    if "operators" in arguments:
        if magnitude is not None or options:
            raise ValueError("RandAugment: give operators, or magnitude (with num_levels, fields), not both")
        return arguments
    if magnitude is None:
        raise ValueError("RandAugment: give operators (an array of operator tables) or magnitude (the standard list)")
    return {**arguments, "operators": ops.rand_augment_operators(magnitude, **options)}


_CHILDREN = Argument("components", required=True, role=OPERATOR)

_SOURCES = [
    ModuleComponent(
        "MemorySource", sources.MemorySource, sources.MemorySourceConfig, {"data": Argument("npy_table", required=True)}
    ),
    ModuleComponent(
        "NumpyFileSource",
        sources.NumpyFileSource,
        sources.NumpyFileSourceConfig,
        {"paths": Argument("path_table", required=True)},
    ),
    ModuleComponent("ParquetSource", sources.ParquetSource, sources.ParquetSourceConfig, {"paths": _PATHS}),
    ModuleComponent("ArrayRecordSource", sources.ArrayRecordSource, sources.ArrayRecordSourceConfig, {"paths": _PATHS}),
    ModuleComponent(
        "HFSource",
        sources.HFSource,
        sources.HFSourceConfig,
        {"path": _PATH, "builder": _STRING, "data_files": Argument("paths"), "split": _STRING},
    ),
    ModuleComponent(
        "HFStreamingSource",
        sources.HFStreamingSource,
        sources.HFStreamingSourceConfig,
        {"builder": _STRING, "data_files": Argument("paths"), "split": _STRING},
    ),
    ModuleComponent(
        "TFDSSource",
        sources.TFDSSource,
        sources.TFDSSourceConfig,
        {"dataset_name": Argument("string", required=True), "data_dir": _PATH, "split": _STRING},
    ),
    ModuleComponent(
        "MixSource",
        sources.MixSource,
        sources.MixSourceConfig,
        {"sources": Argument("components", required=True, role=HOST_SOURCE)},
    ),
    ModuleComponent(
        "PackedSequenceSource",
        sources.PackedSequenceSource,
        sources.PackedSequenceSourceConfig,
        {"source": Argument("component", required=True, role=HOST_SOURCE), "lengths": Argument("integers")},
    ),
]

# Operators whose constructor takes nothing but the config (and a name).
_PLAIN_OPERATORS = [
    "RandomFlip", "RandomCrop", "CenterCrop", "Resize", "RandomResizedCrop", "RandomRotation", "RandomTranslate",
    "Normalize", "RandomBrightness", "RandomContrast", "RandomSaturation", "RandomHue", "Grayscale",
    "GaussianNoise", "GaussianBlur", "RandomErasing", "BatchMix",
    "RandomGain", "AddNoise", "RandomTimeCrop", "RandomTimeShift", "Loudness", "LogMelSpectrogram",
    "TokenMasking", "TokenDropout",
    # host operators
    "DecodeImage", "HostResize", "HostCenterCrop", "HostRandomResizedCrop", "DecodeAudio", "PadOrTruncate",
]  # fmt: skip

_OPERATORS = [
    *(ModuleComponent(name, getattr(ops, name), getattr(ops, f"{name}Config")) for name in _PLAIN_OPERATORS),
    ModuleComponent("CompositeOperator", ops.CompositeOperator, ops.CompositeOperatorConfig, {"operators": _CHILDREN}),
    ModuleComponent("SelectorOperator", ops.SelectorOperator, ops.SelectorOperatorConfig, {"operators": _CHILDREN}),
    ModuleComponent(
        "ProbabilisticOperator",
        ops.ProbabilisticOperator,
        ops.ProbabilisticOperatorConfig,
        {"operator": Argument("component", required=True, role=OPERATOR)},
    ),
    ModuleComponent(
        "RandAugment",
        ops.RandAugment,
        ops.RandAugmentConfig,
        {
            "operators": Argument("components", role=OPERATOR),
            "magnitude": Argument("number"),
            "num_levels": Argument("integer"),
            "fields": Argument("strings"),
        },
        finish=_rand_augment_operators,
    ),
]

_CODE_ONLY = [
    CodeOnly("ElementOperator", "a Python function fn(element, key)"),
    CodeOnly("MapOperator", "a Python function"),
    CodeOnly("HostMapOperator", "a Python function fn(element, rng)"),
    CodeOnly("HostFilter", "a Python predicate keep(element, rng)"),
    CodeOnly("GrainSource", "a Grain data source object"),
    CodeOnly("IterableSource", "a Python function returning the records"),
]


def builtin_components() -> list[Component]:
    """Every built-in registry entry: datarax sources and operators, code-only names, and ``digits``."""
    return [*_SOURCES, *_OPERATORS, *_CODE_ONLY, FactoryComponent("digits", digits)]


__all__ = ["builtin_components", "digits"]
