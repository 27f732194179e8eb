"""Checkpointing of datarax state (see ``datarax.checkpoint.handlers``)."""

from datarax.checkpoint.handlers import OrbaxCheckpointHandler

__all__ = ["OrbaxCheckpointHandler"]
