"""Data sources: where records come from."""

from datarax.sources.memory_source import MemorySource, MemorySourceConfig

__all__ = ["MemorySource", "MemorySourceConfig"]
