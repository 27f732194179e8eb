"""Every module's docstring examples run and pass; every public module has at least one."""

import doctest
import importlib
import pkgutil

import pytest

import datarax

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(datarax.__path__, prefix="datarax.")
    if not name.rsplit(".", 1)[-1].startswith("_")
)
# Modules without an example of their own: a package index re-exporting names, or the CLI
# (exercised end to end by tests/test_cli.py).
NO_EXAMPLE_NEEDED = {"datarax.cli"}


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_pass(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    is_package_index = module.__file__.endswith("__init__.py")
    if not is_package_index and name not in NO_EXAMPLE_NEEDED:
        assert result.attempted > 0, f"{name} has no docstring example"
