"""The example pipeline files shipped with datarax (``datarax/config/examples/*.toml``).

``demo.toml`` is the pipeline of ``datarax demo`` (scikit-learn's digits,
shuffled, cropped and normalised) and reads no file. The others show one source type each (``memory``, ``numpy_file``,
``parquet``, ``array_record``, ``hf``, ``tfds``, ``mix``) and read their data
from a ``data/`` folder next to the file, so copy the one you want next to
your data. ``grain.toml`` shows a component registered in code, since a Grain
source is a Python object a TOML file cannot hold.

Example:
    >>> "demo" in example_names() and "parquet" in example_names()
    True
    >>> example_path("demo").name
    'demo.toml'
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
"""The folder holding the example files."""


def example_names() -> list[str]:
    """The example files' names (without ``.toml``), sorted."""
    return sorted(path.stem for path in EXAMPLES_DIR.glob("*.toml"))


def example_path(name: str) -> Path:
    """The path of the example ``name`` (e.g. ``"demo"``).

    Raises:
        KeyError: If there is no such example (the message lists them).
    """
    path = EXAMPLES_DIR / f"{name}.toml"
    if not isinstance(name, str) or name not in example_names():
        raise KeyError(f"no example pipeline {name!r}; the examples are {example_names()}")
    return path


__all__ = ["EXAMPLES_DIR", "example_names", "example_path"]
