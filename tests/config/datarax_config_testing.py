"""Helpers shared by the tests of datarax.config: a small image source and the usual file header."""

import numpy as np

from datarax.sources import MemorySource, MemorySourceConfig

HEADER = """\
[pipeline]
batch_size = 4

[source]
type = "images"
"""


def images(count=16, channels=3):
    """``count`` random uint8 8x8 images with labels: a source a registry factory builds."""
    pixels = np.random.default_rng(0).integers(0, 256, (count, 8, 8, channels), dtype=np.uint8)
    data = {"image": pixels, "label": np.arange(count, dtype=np.int32)}
    return MemorySource(MemorySourceConfig(), data=data)
