"""The docstring examples of datarax.operators run, and every public class has one."""

import doctest
import inspect

import pytest

import datarax.operators as operators
from datarax.operators import (
    audio,
    batch_mix,
    composite,
    element,
    host_audio,
    host_filter,
    host_image,
    host_map,
    image,
    image_color,
    image_geometry,
    probabilistic,
    rand_augment,
    selector,
    text,
)
from datarax.operators import map as map_module

MODULES = [
    element,
    map_module,
    composite,
    probabilistic,
    selector,
    image,
    host_image,
    host_map,
    host_filter,
    host_audio,
]
# Their examples run in tests/test_all_doctests.py (with every other module's); here they count
# for the exports and the one-example-per-class rule.
LIBRARY_MODULES = [image_geometry, image_color, rand_augment, audio, text, batch_mix]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_doctests_pass(module):
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("module", MODULES + LIBRARY_MODULES, ids=lambda m: m.__name__)
def test_every_public_class_has_an_example(module):
    classes = [vars(module)[name] for name in module.__all__ if inspect.isclass(vars(module)[name])]
    assert classes
    for cls in classes:
        assert ">>>" in (cls.__doc__ or ""), f"{cls.__name__} has no >>> example"


def test_package_exports_exactly_its_all():
    assert sorted(operators.__all__) == sorted(set(operators.__all__))
    for name in operators.__all__:
        assert getattr(operators, name) is not None
    public = {name for module in MODULES + LIBRARY_MODULES for name in module.__all__}
    assert public == set(operators.__all__)
