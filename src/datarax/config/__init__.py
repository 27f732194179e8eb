"""TOML pipelines: a ``Pipeline`` declared as data, built from registered components only.

* ``load_pipeline(path)`` / ``load_pipeline_text(text)``: build the pipeline a TOML file
  describes (``datarax.config.loader``; the format is in docs/config.md).
* ``register(name, factory)``: make a component of yours nameable from TOML
  (``datarax.config.registry``); ``Registry`` for an independent set of names.
* ``ConfigError``: every mistake in a file, named by file, line and key path.
* ``example_path(name)`` / ``example_names()``: the example files shipped with datarax.
* ``datarax.config.commands``: the ``datarax inspect`` and ``datarax run`` commands.

A pipeline file is data only: no pickle, no eval, no import. Component names come from the
registry, and every file path is resolved inside the allowed roots (the file's own directory
unless more are given).

Names are resolved on first use, so that the command line can register ``inspect`` and ``run``
without importing JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "REGISTRY": "datarax.config.registry",
    "ConfigError": "datarax.config.errors",
    "Registry": "datarax.config.registry",
    "example_names": "datarax.config.example_files",
    "example_path": "datarax.config.example_files",
    "format_key": "datarax.config.errors",
    "load_pipeline": "datarax.config.loader",
    "load_pipeline_text": "datarax.config.loader",
    "register": "datarax.config.registry",
    "registered_names": "datarax.config.registry",
}

if TYPE_CHECKING:  # pragma: no cover - static analysis only
    from datarax.config.errors import ConfigError, format_key
    from datarax.config.example_files import example_names, example_path
    from datarax.config.loader import load_pipeline, load_pipeline_text
    from datarax.config.registry import REGISTRY, Registry, register, registered_names


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'datarax.config' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "REGISTRY",
    "ConfigError",
    "Registry",
    "example_names",
    "example_path",
    "format_key",
    "load_pipeline",
    "load_pipeline_text",
    "register",
    "registered_names",
]
