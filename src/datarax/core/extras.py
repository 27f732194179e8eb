"""Optional heavy backends, imported only when a component that needs one is built.

``import datarax`` imports none of pyarrow, array-record, PIL, ...: each
lives in an extra (``pip install 'datarax[parquet]'``), and the component
that needs it calls ``import_extra`` in its constructor, so a missing backend
is reported there, with the command that installs it.

Example:
    >>> import_extra("json", extra="parquet", owner="ParquetSource").__name__  # any importable module
    'json'
    >>> import_extra("no_such_backend", extra="parquet", owner="ParquetSource")
    Traceback (most recent call last):
    ...
    ImportError: ParquetSource needs the 'no_such_backend' package: pip install 'datarax[parquet]'
"""

from __future__ import annotations

import importlib
from types import ModuleType


def import_extra(module: str, *, extra: str, owner: str) -> ModuleType:
    """Imports ``module``, or raises an ``ImportError`` naming the extra that provides it.

    Args:
        module: The module to import (e.g. ``"pyarrow.parquet"``).
        extra: The datarax extra that installs it (e.g. ``"parquet"``).
        owner: The component that needs it, named in the error.

    Returns:
        The imported module.

    Raises:
        ImportError: If it is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        raise ImportError(f"{owner} needs the {package!r} package: pip install 'datarax[{extra}]'") from error


__all__ = ["import_extra"]
