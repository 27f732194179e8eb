"""The registry: built-in names, names you register, and what a name may look like."""

import dataclasses
import inspect

import numpy as np
import pytest
from datarax_config_testing import HEADER, images

from datarax import operators, sources
from datarax.config import REGISTRY, ConfigError, Registry, register, registered_names
from datarax.config.components import CodeOnly, FactoryComponent, ModuleComponent
from datarax.core.data_source import DataSourceModule
from datarax.core.host_operator import HostOperator
from datarax.core.operator import OperatorModule


def test_every_public_datarax_component_has_a_registry_entry():
    components = {
        name
        for module in (sources, operators)
        for name in module.__all__
        if inspect.isclass(obj := getattr(module, name))
        and issubclass(obj, DataSourceModule | OperatorModule | HostOperator)
    }
    assert components <= set(Registry().builtin_names()), sorted(components - set(Registry().builtin_names()))


def test_built_in_entries_list_every_settable_field():
    registry = Registry()
    for name in registry.builtin_names():
        entry = registry.get(name)
        if isinstance(entry, ModuleComponent):
            keys = entry.keys()
            for field in dataclasses.fields(entry.config_cls):
                if field.name in ("batch_stats_fn", "precomputed_stats"):
                    assert field.name not in keys
            assert "name" in keys and all(isinstance(text, str) and text for text in keys.values())
        else:
            assert isinstance(entry, CodeOnly | FactoryComponent)
    assert registry.get("HostResize").keys()["size"] == "an array of 2 integers (required)"
    assert registry.get("ParquetSource").keys()["paths"] == "a path or glob pattern, or an array of them (required)"


@pytest.mark.parametrize("name", ["pkg.module", "module:function", "a/b", "", "1abc", "with space", 3])
def test_a_name_must_be_a_plain_identifier(name):
    with pytest.raises(ValueError, match="a component name is a plain identifier"):
        Registry().register(name, images)


def test_built_in_names_are_fixed_and_yours_replace_only_when_asked():
    registry = Registry()
    with pytest.raises(ValueError, match="'RandomFlip' is a built-in datarax component"):
        registry.register("RandomFlip", images)
    registry.register("images", images)
    with pytest.raises(ValueError, match="'images' is already registered; pass replace=True"):
        registry.register("images", images)
    registry.register("images", lambda: images(4), replace=True)
    assert len(registry.get("images").factory()) == 4
    registry.unregister("images")
    assert "images" not in registry
    with pytest.raises(KeyError, match="not a registered user component"):
        registry.unregister("RandomFlip")


def test_factories_must_take_keyword_arguments():
    registry = Registry()
    with pytest.raises(TypeError, match="factory must be callable"):
        registry.register("x", 3)
    with pytest.raises(TypeError, match=r"\['count'\] are positional-only"):
        registry.register("x", lambda count, /: images(count))
    with pytest.raises(ValueError, match=r"paths names \['file'\], which the factory does not take"):
        registry.register("x", images, paths=("file",))


def test_an_unknown_name_is_a_key_error_with_suggestions():
    with pytest.raises(KeyError, match="unknown component 'Normalise'; did you mean 'Normalize'"):
        Registry().get("Normalise")


def test_the_global_registry_is_what_load_pipeline_uses_by_default(tmp_path):
    from datarax.config import load_pipeline_text

    assert "digits" in registered_names() and "RandomFlip" in registered_names()
    register("config_test_images", images)
    try:
        pipeline = load_pipeline_text(HEADER.replace('"images"', '"config_test_images"'))
        assert len(pipeline) == 4
    finally:
        REGISTRY.unregister("config_test_images")
    with pytest.raises(ConfigError, match="unknown component 'config_test_images'"):
        load_pipeline_text(HEADER.replace('"images"', '"config_test_images"'))


def test_a_factorys_path_arguments_are_resolved_inside_the_roots(tmp_path, load, registry):
    np.save(tmp_path / "a.npy", np.arange(8, dtype=np.int32))
    np.save(tmp_path / "b.npy", np.arange(8, 16, dtype=np.int32))
    seen = {}

    def from_files(file, more=(), columns=None):
        seen.update(file=file, more=more, columns=columns)
        return sources.NumpyFileSource(sources.NumpyFileSourceConfig(), paths={"label": file})

    registry.register("from_files", from_files, paths=("file", "more", "columns"))
    text = '[pipeline]\nbatch_size = 4\n\n[source]\ntype = "from_files"\nfile = "a.npy"\n'
    text += 'more = ["a.npy", "b.npy"]\ncolumns = { x = "b.npy" }\n'
    assert len(load(text)) == 2
    root = tmp_path.resolve()
    assert seen == {"file": str(root / "a.npy"), "more": [str(root / "a.npy"), str(root / "b.npy")],
                    "columns": {"x": str(root / "b.npy")}}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load(text.replace('"b.npy" }', '"../b.npy" }'))
    assert (info.value.key, info.value.line) == ("source.columns.x", 8)
