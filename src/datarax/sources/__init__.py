"""Data sources: where records come from."""

from datarax.sources.memory import MemorySource, MemorySourceConfig

__all__ = ["MemorySource", "MemorySourceConfig"]
