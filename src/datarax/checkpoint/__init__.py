"""Checkpointing of datarax state (see ``datarax.checkpoint.handler``)."""

from datarax.checkpoint.handler import OrbaxCheckpointHandler

__all__ = ["OrbaxCheckpointHandler"]
