"""The registry: the only names a TOML pipeline can build components from.

A TOML component table says ``type = "NAME"``; ``NAME`` is looked up here and
nowhere else. The registry starts with the datarax components
(``datarax.config.builtins``: sources and operators under their class names,
and ``digits``); you add your own by name, in code::

    from datarax.config import register

    def my_source(path, *, limit=None):                # keyword arguments = TOML keys
        ...
        return some_host_source

    register("my_source", my_source, paths=("path",))  # "path" is resolved inside the allowed roots

Names are plain identifiers (letters, digits, ``_`` and ``-``): a name with a
dot, colon or slash looks like a module path and is refused, both here and in
a TOML file, so loading a file never imports anything. A built-in name cannot
be replaced; one of yours can with ``replace=True``.

``REGISTRY`` is the one ``load_pipeline`` uses by default; ``Registry()`` gives
an independent one (built-ins included) for tests or libraries that must not
share names.

Example:
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> import numpy as np
    >>> registry = Registry()
    >>> registry.register("ramp", lambda n=8: MemorySource(MemorySourceConfig(), data={"x": np.arange(n)}))
    >>> "ramp" in registry and "RandomFlip" in registry
    True
    >>> registry.register("my.module:factory", print)
    Traceback (most recent call last):
    ...
    ValueError: register: a component name is a plain identifier (letters, digits, '_' and '-'), ...
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any

from datarax.config.builtins import builtin_components
from datarax.config.components import Component, FactoryComponent

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
"""What a registry name looks like: an identifier, never a module path."""


def looks_like_module_path(name: str) -> bool:
    """True for ``pkg.module``, ``module:function`` or a file path: text a loader would import."""
    return any(char in name for char in ".:/\\")


class Registry:
    """Registry names and the components they build.

    Args:
        builtins: Start with the datarax components (``datarax.config.builtins``).
    """

    def __init__(self, *, builtins: bool = True):
        self._builtin = {component.name: component for component in builtin_components()} if builtins else {}
        self._user: dict[str, Component] = {}

    def register(
        self, name: str, factory: Callable[..., Any], *, paths: Iterable[str] = (), replace: bool = False
    ) -> None:
        """Registers ``factory`` under ``name`` (see ``datarax.config.components.FactoryComponent``).

        Args:
            name: The name TOML files use (``type = "name"``).
            factory: Returns the component (a source, an operator or a host operator); the TOML
                table's other keys are its keyword arguments.
            paths: The keyword arguments that are file paths, resolved inside the allowed roots
                before the call.
            replace: Replace a name you registered before.

        Raises:
            ValueError: If ``name`` is not a plain identifier, is built in, or is taken and
                ``replace`` is False.
            TypeError: If ``factory`` is not a callable taking keyword arguments.
        """
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(
                "register: a component name is a plain identifier (letters, digits, '_' and '-'), never a module "
                f"path, got {name!r}"
            )
        if name in self._builtin:
            raise ValueError(f"register: {name!r} is a built-in datarax component; choose another name")
        if name in self._user and not replace:
            raise ValueError(f"register: {name!r} is already registered; pass replace=True to replace it")
        self._user[name] = FactoryComponent(name, factory, tuple(paths))

    def unregister(self, name: str) -> None:
        """Removes a name you registered.

        Raises:
            KeyError: If ``name`` is not one of yours.
        """
        if name not in self._user:
            raise KeyError(f"unregister: {name!r} is not a registered user component")
        del self._user[name]

    def __contains__(self, name: object) -> bool:
        return name in self._builtin or name in self._user

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted({*self._builtin, *self._user})

    def builtin_names(self) -> list[str]:
        """The built-in names, sorted."""
        return sorted(self._builtin)

    def get(self, name: str) -> Component:
        """The component registered under ``name``.

        Raises:
            KeyError: With the closest names, if ``name`` is not registered.
        """
        if name in self._user:
            return self._user[name]
        if name in self._builtin:
            return self._builtin[name]
        lowered = {known.lower(): known for known in self.names()}
        close = [lowered[n] for n in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)]
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"unknown component {name!r}{hint} (components are datarax class names such as 'ParquetSource' or "
            "'RandomFlip', or names registered with datarax.config.register)"
        )


REGISTRY = Registry()
"""The registry ``load_pipeline`` uses unless given another."""


def register(name: str, factory: Callable[..., Any], *, paths: Iterable[str] = (), replace: bool = False) -> None:
    """Registers ``factory`` under ``name`` in ``REGISTRY`` (see ``Registry.register``)."""
    REGISTRY.register(name, factory, paths=paths, replace=replace)


def registered_names() -> list[str]:
    """Every name ``REGISTRY`` knows, sorted."""
    return REGISTRY.names()


__all__ = ["NAME", "REGISTRY", "Registry", "looks_like_module_path", "register", "registered_names"]
