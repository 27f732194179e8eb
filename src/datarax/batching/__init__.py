"""Batchers: grouping elements into the one batch form."""

from datarax.batching.default_batcher import DefaultBatcher, DefaultBatcherConfig

__all__ = ["DefaultBatcher", "DefaultBatcherConfig"]
