"""docs/config.md is the reference of the format: every table, key and component, and examples that load.

The component tables in docs/config.md are generated from the registry: run this file
(``python tests/config/test_config_docs.py``) to print them after adding a component.
"""

import re
import tomllib
from pathlib import Path

import pytest

from datarax.config import Registry, load_pipeline_text
from datarax.config.components import ModuleComponent
from datarax.config.loader import GRAPH_KEYS, PIPELINE_KEYS, SHARDING_KEYS, TABLES

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
COMMON = ("stochastic", "stream_name", "cacheable")
ROLES = {"source": "Sources", "host source": "Sources", "operator": "Operators", "host operator": "Host operators"}


def component_tables() -> str:
    """The markdown tables of every built-in component and its keys, by role."""
    registry = Registry()
    sections: dict[str, list[str]] = {title: [] for title in dict.fromkeys(ROLES.values())}
    for name in registry.builtin_names():
        entry = registry.get(name)
        if isinstance(entry, ModuleComponent):
            keys = [f"`{key}`: {text}" for key, text in entry.keys().items() if key not in (*COMMON, "name")]
            sections[ROLES[entry.role()]].append(f"| `{name}` | {'; '.join(keys) or '(none)'} |")
    out = []
    for title, rows in sections.items():
        out += [f"#### {title}", "", "| type | keys |", "| --- | --- |", *rows, ""]
    return "\n".join(out)


def test_the_component_tables_are_current():
    assert component_tables() in DOC.read_text(), "regenerate with: python tests/config/test_config_docs.py"


def test_every_table_and_key_is_documented():
    text = DOC.read_text()
    for table in TABLES:
        assert f"`[{table}]`" in text or f"`[[{table}]]`" in text, table
    for key in (*PIPELINE_KEYS, *GRAPH_KEYS, *SHARDING_KEYS, *COMMON, "name", "type"):
        assert f"`{key}`" in text, key
    for name in Registry().builtin_names():
        assert f"`{name}`" in text, name


def _toml_blocks():
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_toml_block_parses():
    blocks = _toml_blocks()
    assert len(blocks) >= 5
    for block in blocks:
        tomllib.loads(block)


@pytest.mark.parametrize("block", [b for b in _toml_blocks() if 'type = "digits"' in b and "[pipeline]" in b])
def test_complete_examples_that_read_no_file_build_and_run(block):
    pipeline = load_pipeline_text(block)
    batch = next(iter(pipeline))
    assert batch["valid_mask"].shape == (pipeline.batch_size,)


if __name__ == "__main__":
    print(component_tables())


def test_the_registration_example_runs(tmp_path):
    import numpy as np

    from datarax.config import REGISTRY

    python = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S) if "register(" in b]
    toml = next(b for b in _toml_blocks() if 'type = "tokens"' in b)
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "ids.npy", np.arange(100, dtype=np.int32) * 7)
    namespace: dict = {}
    try:
        for block in python:
            exec(block, namespace)
        pipeline = load_pipeline_text(toml, base_dir=tmp_path)
        assert sorted(np.concatenate([b["tokens"][b["valid_mask"]] for b in pipeline]).tolist()) == sorted(
            (np.arange(100) * 7 % 512).tolist()
        )
        scale = REGISTRY.get("scale").factory(2.0)
        assert float(scale.apply({"x": np.float32(3.0)}, None)["x"]) == 6.0
        assert len(namespace["grain_range"](10)) == 10
    finally:
        for name in ("tokens", "scale", "grain_range"):
            if name in REGISTRY.names() and name not in REGISTRY.builtin_names():
                REGISTRY.unregister(name)
