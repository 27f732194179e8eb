"""Type aliases and protocols used throughout datarax.

This module is a leaf of the package: at import time it imports nothing from
the rest of datarax, so any module may import it without creating a cycle.
``Element``, ``Batch`` and ``Metadata`` are the concrete classes from
``datarax.core``; they are resolved lazily on first attribute access for that
reason.

Example:
    >>> from datarax.typing import Checkpointable
    >>> class Counter:
    ...     def __init__(self):
    ...         self.n = 0
    ...     def get_state(self):
    ...         return {"n": self.n}
    ...     def set_state(self, state):
    ...         self.n = state["n"]
    >>> isinstance(Counter(), Checkpointable)
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, runtime_checkable

from jax import Array

if TYPE_CHECKING:  # pragma: no cover - static analysis only
    from datarax.core.element_batch import Batch, Element
    from datarax.core.metadata import Metadata

logger = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
E = TypeVar("E", bound="Element")
B = TypeVar("B", bound="Batch")

DataDict: TypeAlias = dict[str, Array]
StateDict: TypeAlias = dict[str, Any]
MetadataDict: TypeAlias = dict[str, Any]
ArrayShape: TypeAlias = tuple[int, ...]
PRNGKey: TypeAlias = Array

ElementTransform: TypeAlias = Callable[["Element"], "Element"]
BatchTransform: TypeAlias = Callable[["Batch"], "Batch"]
ArrayTransform: TypeAlias = Callable[[Array], Array]
DataProcessor: TypeAlias = Callable[[DataDict], DataDict]
StateProcessor: TypeAlias = Callable[[StateDict], StateDict]
MetadataProcessor: TypeAlias = Callable[["Metadata"], "Metadata"]
ScanFn: TypeAlias = Callable[[Any, Any], tuple[Any, Any]]
CondFn: TypeAlias = Callable[[Any], bool]
WhileBodyFn: TypeAlias = Callable[[Any], Any]


@runtime_checkable
class Checkpointable(Protocol):
    """Protocol for objects that can be checkpointed via state dictionaries.

    State is extracted to a dictionary and restored from a dictionary, which
    mirrors how NNX separates a module's state from its structure.
    """

    def get_state(self) -> dict[str, Any]:
        """Get object state for checkpointing.

        Returns:
            Dictionary containing all state needed to restore the object.
        """
        ...

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore object state from a checkpoint.

        Args:
            state: Dictionary containing state to restore.
        """
        ...


@runtime_checkable
class CheckpointableIterator(Checkpointable, Protocol[T_co]):
    """Protocol for iterators that can be checkpointed.

    Combines iterator behaviour with ``Checkpointable`` state management.
    """

    def __iter__(self) -> Iterator[T_co]: ...

    def __next__(self) -> T_co: ...


_LAZY = {
    "Element": ("datarax.core.element_batch", "Element"),
    "Batch": ("datarax.core.element_batch", "Batch"),
    "Metadata": ("datarax.core.metadata", "Metadata"),
}


def __getattr__(name: str) -> Any:
    # Resolved on demand so that importing datarax.typing never imports core.
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArrayShape",
    "ArrayTransform",
    "B",
    "Batch",
    "BatchTransform",
    "Checkpointable",
    "CheckpointableIterator",
    "CondFn",
    "DataDict",
    "DataProcessor",
    "E",
    "Element",
    "ElementTransform",
    "Metadata",
    "MetadataDict",
    "MetadataProcessor",
    "PRNGKey",
    "ScanFn",
    "StateDict",
    "StateProcessor",
    "T",
    "T_co",
    "WhileBodyFn",
    "logger",
]
