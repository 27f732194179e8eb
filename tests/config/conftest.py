"""Shared fixtures: a registry with small in-memory sources, and a loader of TOML texts."""

import pytest
from datarax_config_testing import images

from datarax.config import Registry, load_pipeline_text


@pytest.fixture
def registry():
    registry = Registry()
    registry.register("images", images)
    return registry


@pytest.fixture
def load(registry, tmp_path):
    """``load(text)``: the pipeline of a TOML text named ``p.toml`` whose directory is ``tmp_path``."""

    def load(text, **kwargs):
        kwargs.setdefault("registry", registry)
        kwargs.setdefault("base_dir", tmp_path)
        return load_pipeline_text(text, filename="p.toml", **kwargs)

    return load
