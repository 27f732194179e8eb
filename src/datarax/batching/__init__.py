"""Batchers: grouping elements into the one batch form."""

from datarax.batching.default import DefaultBatcher, DefaultBatcherConfig

__all__ = ["DefaultBatcher", "DefaultBatcherConfig"]
