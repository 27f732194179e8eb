"""How a module remembers the arguments it was built with, so ``copy`` can build it again.

``DataraxModule.copy(config=..., rngs=..., name=...)`` calls the module's
constructor again. Subclasses take arguments of their own (a source's data, an
operator's function), so the outermost ``__init__`` records its arguments when
the module is built. ``config``, ``rngs`` and ``name`` are not recorded:
``copy`` always supplies them.

Why the record is not an attribute of the module: in Flax NNX every instance
attribute is part of the module's graph definition, and graph definitions are
what ``jax.jit`` (through ``nnx.jit`` or a pipeline's compiled program) uses to
decide whether two modules can share a compilation, and to hand static
attributes from one module to another when they compare equal. Constructor
arguments can be large arrays (a source's records), which can only be compared
cheaply by identity; as an attribute they would make identically built modules
compile separately, and any looser equality would let a jitted call give one
module another's record. So the record is kept beside the module, in a table
that holds it only as long as the module lives; ``nnx.split``/``nnx.merge``
builds a module without its constructor, and such a module has no record
(``copy`` then falls back to a clone).

Example:
    >>> class Scaled:
    ...     @record_constructor_args
    ...     def __init__(self, config, factor, *, rngs=None, name=None):
    ...         self.config, self.factor, self.name = config, factor, name
    >>> s = Scaled("cfg", 2.0, name="s")
    >>> constructor_arguments(s)
    {'factor': 2.0}
    >>> t = rebuild(s, config="cfg2", rngs=None, name="t")
    >>> t.config, t.factor, t.name
    ('cfg2', 2.0, 't')
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Any

# Supplied by copy() itself, so never part of the record.
_REPLACED = ("config", "rngs", "name")

# module -> its constructor arguments; see the module docstring for why this is not an attribute.
_RECORDS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _signature_without_self(init: Callable) -> inspect.Signature:
    signature = inspect.signature(init)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _named(signature: inspect.Signature, name: str) -> bool:
    parameter = signature.parameters.get(name)
    return parameter is not None and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)


def record_constructor_args(init: Callable) -> Callable:
    """Wraps an ``__init__`` so the outermost call records its arguments for ``rebuild``.

    Args:
        init: The ``__init__`` to wrap.

    Returns:
        The wrapped ``__init__`` (marked, so it is never wrapped twice).
    """
    if getattr(init, "__datarax_records__", False):
        return init

    @functools.wraps(init)
    def recording_init(self, *args, **kwargs):
        # super().__init__ calls come later and must not overwrite the outermost record.
        if self not in _RECORDS:
            signature = _signature_without_self(init)
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                bound = None  # init itself reports the bad call, just below
            if bound is not None:
                _RECORDS[self] = {
                    k: v for k, v in bound.arguments.items() if not (k in _REPLACED and _named(signature, k))
                }
        init(self, *args, **kwargs)

    recording_init.__datarax_records__ = True
    return recording_init


def constructor_arguments(module: Any) -> dict[str, Any] | None:
    """The recorded arguments of ``module`` other than config, rngs and name (None if none were recorded)."""
    record = _RECORDS.get(module)
    return None if record is None else dict(record)


def share_constructor_arguments(source: Any, target: Any) -> None:
    """Gives ``target`` (e.g. a clone of ``source``) the record of ``source``, if it has one."""
    record = _RECORDS.get(source)
    if record is not None:
        _RECORDS[target] = record


def rebuild(module: Any, *, config: Any, rngs: Any, name: Any) -> Any | None:
    """Calls ``type(module)`` again with its recorded arguments and the given config, rngs and name.

    ``config``, ``rngs`` and ``name`` are passed only where the constructor names them.

    Args:
        module: A module built through a ``record_constructor_args`` constructor.
        config: The new module's config.
        rngs: The new module's rngs.
        name: The new module's name.

    Returns:
        The new module, or None when ``module`` has no record (built without its constructor).
    """
    record = _RECORDS.get(module)
    if record is None:
        return None
    signature = _signature_without_self(type(module).__init__)
    bound = signature.bind_partial()
    bound.arguments.update(record)
    for key, value in (("config", config), ("rngs", rngs), ("name", name)):
        if _named(signature, key):
            bound.arguments[key] = value
    return type(module)(*bound.args, **bound.kwargs)


def recipe(module: Any) -> tuple[type, Any, dict[str, Any], Any]:
    """``(class, config, arguments, name)``: what ``from_recipe`` needs to build ``module`` again elsewhere.

    Picklable when the arguments are, so a spawned worker process can rebuild
    a source or an operator (reopening its files) instead of receiving a
    pickle of its contents.

    Raises:
        TypeError: If ``module`` was not built through its constructor.
    """
    arguments = _RECORDS.get(module)
    if arguments is None:
        raise TypeError(f"{type(module).__name__} was not built through its constructor, so it cannot be rebuilt")
    return type(module), module.config, dict(arguments), module.name


def from_recipe(recipe: tuple[type, Any, dict[str, Any], Any]) -> Any:
    """Builds the module ``recipe`` describes (see ``recipe``)."""
    cls, config, arguments, name = recipe
    signature = _signature_without_self(cls.__init__)
    bound = signature.bind_partial()
    bound.arguments.update(arguments)
    for key, value in (("config", config), ("name", name)):
        if _named(signature, key):
            bound.arguments[key] = value
    return cls(*bound.args, **bound.kwargs)


__all__ = [
    "constructor_arguments",
    "from_recipe",
    "rebuild",
    "recipe",
    "record_constructor_args",
    "share_constructor_arguments",
]
