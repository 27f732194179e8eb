"""TOML pipelines: a file of data, built into a ``Pipeline`` from registered components only.

A pipeline file has up to six top-level tables::

    [pipeline]                  # the Pipeline's own arguments
    batch_size = 32             # required
    seed = 0                    # the one seed (nnx.Rngs(seed)); default 0
    shuffle = true
    num_epochs = 2              # an integer, or inf to stream forever

    [source]                    # one component table: type = a registry name, then its keys
    type = "ParquetSource"
    paths = "data/train.parquet"    # relative to this file, and kept inside the allowed roots
    columns = ["image", "label"]

    [[host_stages]]             # host operators, in order (host sources only)
    [[stages]]                  # device operators, in order; or [graph] for a DAG:
    [graph]                     #   nodes = component tables by name, edges, sink
    [sharding]                  # data_axis, model_axes: batch_sharding(data_mesh(...))

Loading is a pure reading of data: ``tomllib`` parses the text, every
component comes from the registry (``datarax.config.registry``) by name, every
path is resolved inside the allowed roots (``datarax.config.paths``), and
nothing in the file is ever imported, evaluated or unpickled. Each mistake is
a ``ConfigError`` naming the file, the line, the key path, the bad value and
what was expected; the pipeline's and the components' own validation (a
range, a shape that does not chain) is reported the same way, at the key its
message names. docs/config.md is the full reference.

Example:
    >>> import numpy as np
    >>> from datarax.config.registry import Registry
    >>> from datarax.sources import MemorySource, MemorySourceConfig
    >>> registry = Registry()
    >>> def ramp(n):
    ...     return MemorySource(MemorySourceConfig(), data={"x": np.arange(n, dtype=np.float32)})
    >>> registry.register("ramp", ramp)
    >>> text = '''
    ... [pipeline]
    ... batch_size = 4
    ... shuffle = true
    ...
    ... [source]
    ... type = "ramp"
    ... n = 10
    ... '''
    >>> pipeline = load_pipeline_text(text, registry=registry)
    >>> len(pipeline), sorted(np.concatenate([b["x"][b["valid_mask"]] for b in pipeline]).tolist())[:4]
    (3, [0.0, 1.0, 2.0, 3.0])
    >>> load_pipeline_text(text.replace("4", '"four"'), registry=registry, filename="ramp.toml")
    Traceback (most recent call last):
    ...
    datarax.config.errors.ConfigError: ramp.toml:3: pipeline.batch_size: expected an integer, got 'four' (a string)
    >>> load_pipeline_text(text.replace('"ramp"', '"os:system"'), registry=registry, filename="ramp.toml")
    Traceback (most recent call last):
    ...
    datarax.config.errors.ConfigError: ramp.toml:7: source.type: 'os:system' looks like a module path; ...
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flax import nnx

from datarax.config.components import HOST_OPERATOR, OPERATOR, SOURCE, TYPE_KEY, blame, failure, unknown_key
from datarax.config.errors import ConfigError, KeyPath
from datarax.config.locations import KeyLines
from datarax.config.paths import PathEscape, PathPolicy
from datarax.config.registry import REGISTRY, Registry, looks_like_module_path
from datarax.config.values import Mismatch, convert, describe
from datarax.distributed import batch_sharding, data_mesh
from datarax.pipeline import Pipeline

MAX_FILE_BYTES = 4 * 2**20
"""The largest pipeline file read (a pipeline is a few kilobytes of text)."""

TABLES = ("pipeline", "source", "host_stages", "stages", "graph", "sharding")
"""The top-level tables of a pipeline file."""

PIPELINE_KEYS: dict[str, str] = {
    "batch_size": "an integer (required): rows per batch",
    "seed": "an integer in [0, 2**32) (default 0): the one seed of the shuffle and every random operator",
    "shuffle": "a boolean (default false): a new Feistel permutation every epoch",
    "drop_remainder": "a boolean (default false): drop each epoch's short last batch instead of padding it",
    "num_epochs": "an integer, or inf to run forever (default 1): epochs each iteration runs",
    "prefetch": "an integer (default: by backend): batches dispatched ahead",
    "workers": "an integer (default: the CPUs, at most 16): host-stage workers; 0 runs it inline",
    "worker_kind": 'a string, "thread" or "process" (default "thread")',
    "read_ahead": "an integer (default: twice the workers): host batches in flight",
    "shuffle_buffer_size": "an integer (default 1024): a stream source's shuffle buffer",
}
"""The keys of ``[pipeline]`` and what each takes."""

_PIPELINE_TYPES = {
    "batch_size": int,
    "seed": int,
    "shuffle": bool,
    "drop_remainder": bool,
    "prefetch": int,
    "workers": int,
    "worker_kind": str,
    "read_ahead": int,
    "shuffle_buffer_size": int,
}
GRAPH_KEYS = {
    "nodes": "a table of node name to operator table",
    "edges": 'an array of ["from", "to"] pairs',
    "sink": "a string: the node whose output is the batch",
}
SHARDING_KEYS = {"data_axis": 'a string (default "data")', "model_axes": "a table of axis name to size (default none)"}


class _Loader:
    """One document being built: its text for line numbers, its path policy, its registry."""

    def __init__(
        self, text: str, filename: str | None, policy: PathPolicy, registry: Registry, overridden: Iterable[str]
    ):
        self.text = text
        self.filename = filename
        self.policy = policy
        self.registry = registry
        self.overridden = {("pipeline", key) for key in overridden}
        self._lines: KeyLines | None = None

    # -- the BuildContext protocol (datarax.config.components) --------------------

    def error(self, at: KeyPath, reason: str) -> ConfigError:
        if tuple(at[:2]) in self.overridden:
            return ConfigError(f"{reason} (given as an override)", key=at, file=self.filename)
        if self._lines is None:
            self._lines = KeyLines(self.text)
        return ConfigError(reason, key=at or None, line=self._lines.line(at) if at else None, file=self.filename)

    def path(self, value: Any, at: KeyPath) -> str:
        try:
            return self.policy.resolve(value)
        except PathEscape as error:
            raise self.error(at, str(error)) from None

    def component(self, table: Any, at: KeyPath, role: str) -> Any:
        if not isinstance(table, dict):
            raise self.error(at, f"expected a {role} component table (with a type key), got {describe(table)}")
        if TYPE_KEY not in table:
            raise self.error(
                at, f"the {role} table has no 'type' key (the component's registry name, e.g. 'RandomFlip')"
            )
        name = table[TYPE_KEY]
        if not isinstance(name, str):
            raise self.error((*at, TYPE_KEY), f"expected a registry name (a string), got {describe(name)}")
        if looks_like_module_path(name):
            raise self.error(
                (*at, TYPE_KEY),
                f"{name!r} looks like a module path; a pipeline file names registered components only and never "
                "imports code (register a factory in your code with datarax.config.register(name, factory) and "
                "write that name)",
            )
        try:
            entry = self.registry.get(name)
        except KeyError as error:
            raise self.error((*at, TYPE_KEY), str(error.args[0])) from None
        return entry.build(table, at, self, role)

    # -- the document -------------------------------------------------------------

    def _table(self, document: Mapping[str, Any], key: str, keys: Mapping[str, str]) -> dict[str, Any]:
        table = document.get(key, {})
        if not isinstance(table, dict):
            raise self.error((key,), f"expected a table ([{key}]), got {describe(table)}")
        for name in table:
            if name not in keys:
                raise unknown_key(self, (key,), name, f"[{key}]", keys)
        return table

    def _components(self, document: Mapping[str, Any], key: str, role: str) -> list[Any]:
        tables = document.get(key, [])
        if not isinstance(tables, list):
            raise self.error((key,), f"expected an array of tables ([[{key}]]), got {describe(tables)}")
        return [self.component(table, (key, i), role) for i, table in enumerate(tables)]

    def _settings(self, table: Mapping[str, Any]) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        if "batch_size" not in table:
            raise self.error(
                ("pipeline",), f"[pipeline] is missing the required key 'batch_size' ({PIPELINE_KEYS['batch_size']})"
            )
        for key, value in table.items():
            at = ("pipeline", key)
            if key == "num_epochs":
                if isinstance(value, float) and math.isinf(value) and value > 0:
                    value = None
                elif not isinstance(value, int) or isinstance(value, bool):
                    raise self.error(at, f"expected a positive integer, or inf to run forever, got {describe(value)}")
            else:
                try:
                    value = convert(_PIPELINE_TYPES[key], value)
                except Mismatch as error:
                    raise self.error(at, str(error)) from None
            if key == "worker_kind" and value not in ("thread", "process"):
                raise self.error(at, f'expected "thread" or "process", got {value!r}')
            if key == "seed" and not 0 <= value < 2**32:
                raise self.error(at, f"expected an integer in [0, 2**32) (the pipeline's 32-bit seed), got {value!r}")
            settings[key] = value
        return settings

    def _graph(self, table: Mapping[str, Any]) -> dict[str, Any]:
        for key in GRAPH_KEYS:
            if key not in table:
                raise self.error(("graph",), f"[graph] is missing the required key {key!r} ({GRAPH_KEYS[key]})")
        nodes = table["nodes"]
        if not isinstance(nodes, dict) or not nodes:
            raise self.error(
                ("graph", "nodes"), f"expected {GRAPH_KEYS['nodes']} ([graph.nodes.NAME]), got {describe(nodes)}"
            )
        edges = table["edges"]
        if not isinstance(edges, list):
            raise self.error(("graph", "edges"), f"expected {GRAPH_KEYS['edges']}, got {describe(edges)}")
        for i, edge in enumerate(edges):
            if not (isinstance(edge, list) and len(edge) == 2 and all(isinstance(end, str) for end in edge)):
                raise self.error(
                    ("graph", "edges", i), f'expected a ["from", "to"] pair of node names, got {describe(edge)}'
                )
        if not isinstance(table["sink"], str):
            raise self.error(("graph", "sink"), f"expected a node name (a string), got {describe(table['sink'])}")
        return {
            "nodes": {name: self.component(node, ("graph", "nodes", name), OPERATOR) for name, node in nodes.items()},
            "edges": [tuple(edge) for edge in edges],
            "sink": table["sink"],
        }

    def _sharding(self, table: Mapping[str, Any]) -> Any:
        data_axis = table.get("data_axis", "data")
        if not isinstance(data_axis, str):
            raise self.error(
                ("sharding", "data_axis"), f"expected a mesh axis name (a string), got {describe(data_axis)}"
            )
        model_axes = table.get("model_axes")
        if model_axes is not None and not isinstance(model_axes, dict):
            raise self.error(
                ("sharding", "model_axes"), f"expected {SHARDING_KEYS['model_axes']}, got {describe(model_axes)}"
            )
        try:
            return batch_sharding(data_mesh(data_axis, model_axes), data_axis)
        except (ValueError, TypeError) as error:
            raise failure(self, ("sharding",), error, table) from error

    def _pipeline_failure(
        self, error: Exception, document: Mapping[str, Any], graph: Mapping[str, Any] | None
    ) -> ConfigError:
        """The Pipeline's own error, at the stage, node, edge, setting or table it names."""
        message = str(error)
        reason = f"{type(error).__name__}: {message}"
        stage = re.search(r"stage '([^']+)'|node '([^']+)'", message)
        if stage:
            node = stage.group(1) or stage.group(2)
            linear = re.fullmatch(r"stage_(\d+)", node)
            if graph is None and linear:
                return self.error(("stages", int(linear.group(1))), reason)
            if graph is not None and node in graph["nodes"]:
                return self.error(("graph", "nodes", node), reason)
        host = re.search(r"host_stages\[(\d+)\]", message)
        if host:
            return self.error(("host_stages", int(host.group(1))), reason)
        if graph is not None and message.startswith("from_dag"):
            edge = re.search(r"edge \('([^']*)', '([^']*)'\)", message)
            if edge and edge.groups() in graph["edges"]:
                return self.error(("graph", "edges", graph["edges"].index(edge.groups())), reason)
            return failure(self, ("graph",), error, GRAPH_KEYS)
        places = {key: ("pipeline", key) for key in (*document.get("pipeline", {}), *(at[1] for at in self.overridden))}
        places.update({key: (key,) for key in ("host_stages", "source", "sharding") if key in document})
        key = blame(message, places)
        return self.error(("pipeline",) if key is None else places[key], reason)

    def build(self, document: Mapping[str, Any], overrides: Mapping[str, Any]) -> Pipeline:
        for key in document:
            if key not in TABLES:
                raise unknown_key(self, (), key, "a pipeline file", TABLES)
        if "pipeline" not in document and not overrides:
            raise self.error((), "the file has no [pipeline] table (batch_size and the other Pipeline arguments)")
        pipeline_table = self._table(document, "pipeline", PIPELINE_KEYS)
        for key in overrides:
            if key not in PIPELINE_KEYS:
                raise unknown_key(self, ("pipeline",), key, "[pipeline] (in overrides)", PIPELINE_KEYS)
        settings = self._settings({**pipeline_table, **overrides})
        if "source" not in document:
            raise self.error((), "the file has no [source] table (type = a registered source, and its keys)")
        if "stages" in document and "graph" in document:
            raise self.error(("graph",), "give either [[stages]] (a linear pipeline) or [graph] (a DAG), not both")
        self._table(document, "graph", GRAPH_KEYS)
        sharding_table = self._table(document, "sharding", SHARDING_KEYS)
        source = self.component(document["source"], ("source",), SOURCE)
        host_stages = self._components(document, "host_stages", HOST_OPERATOR)
        graph = self._graph(document["graph"]) if "graph" in document else None
        stages = None if graph is not None else self._components(document, "stages", OPERATOR)
        sharding = self._sharding(sharding_table) if "sharding" in document else None
        seed = settings.pop("seed", 0)
        try:
            return Pipeline(
                source=source,
                host_stages=host_stages,
                stages=stages,
                **(graph or {}),
                rngs=nnx.Rngs(seed),
                sharding=sharding,
                **settings,
            )
        except Exception as error:  # noqa: BLE001 - the Pipeline's own validation, reported at its key
            raise self._pipeline_failure(error, document, graph) from error


def parse_toml(text: str, *, filename: str | None = None) -> dict[str, Any]:
    """The document ``tomllib`` reads from ``text``; a syntax error is a ``ConfigError`` with its line.

    Example:
        >>> parse_toml("[pipeline]\\nbatch_size = ", filename="p.toml")
        Traceback (most recent call last):
        ...
        datarax.config.errors.ConfigError: p.toml:2: invalid TOML: Invalid value (at end of document)
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = re.search(r"at line (\d+)", message)
        line = int(found.group(1)) if found else text.count("\n") + 1
        raise ConfigError(f"invalid TOML: {message}", line=line, file=filename) from None


def load_pipeline_text(
    text: str,
    *,
    base_dir: str | os.PathLike | None = None,
    allowed_roots: Iterable[str | os.PathLike] = (),
    registry: Registry | None = None,
    overrides: Mapping[str, Any] | None = None,
    filename: str | None = None,
) -> Pipeline:
    """Builds the pipeline a TOML text describes.

    Args:
        text: The TOML document.
        base_dir: The directory relative paths start from, and the first allowed root (default:
            the current directory).
        allowed_roots: Further directories the file may read from.
        registry: Where component names are looked up (default: ``REGISTRY``).
        overrides: ``[pipeline]`` keys that replace the file's (e.g. ``{"num_epochs": 3}``),
            checked like the file's own.
        filename: The name errors give the document.

    Returns:
        The ``Pipeline``.

    Raises:
        ConfigError: For anything wrong in the document (see the module docstring).
        ValueError: If an allowed root is not a directory.
    """
    if not isinstance(text, str):
        raise TypeError(f"load_pipeline_text: text must be a str, got {type(text).__name__}")
    document = parse_toml(text, filename=filename)
    policy = PathPolicy(Path.cwd() if base_dir is None else base_dir, allowed_roots)
    overrides = dict(overrides or {})
    loader = _Loader(text, filename, policy, REGISTRY if registry is None else registry, overrides)
    return loader.build(document, overrides)


def read_text(path: str | os.PathLike) -> str:
    """A pipeline file's text (UTF-8, at most ``MAX_FILE_BYTES``).

    Raises:
        FileNotFoundError, OSError: If it cannot be read.
        ConfigError: If it is too large or not UTF-8.
    """
    with open(path, "rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            f"the file is larger than {MAX_FILE_BYTES} bytes; a pipeline file is a few kilobytes", file=str(path)
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"the file is not UTF-8 text: {error}", file=str(path)) from None


def load_pipeline(
    path: str | os.PathLike,
    *,
    allowed_roots: Iterable[str | os.PathLike] = (),
    registry: Registry | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Builds the pipeline a TOML file describes; its paths are relative to its directory.

    Args:
        path: The ``.toml`` file.
        allowed_roots: Directories the file may read from besides its own.
        registry: Where component names are looked up (default: ``REGISTRY``).
        overrides: ``[pipeline]`` keys that replace the file's.

    Returns:
        The ``Pipeline``.

    Raises:
        ConfigError: For anything wrong in the file, with its name, line and key.
        FileNotFoundError, OSError: If the file cannot be read.
    """
    text = read_text(path)
    return load_pipeline_text(
        text,
        base_dir=Path(path).resolve().parent,
        allowed_roots=allowed_roots,
        registry=registry,
        overrides=overrides,
        filename=str(path),
    )


__all__ = [
    "GRAPH_KEYS",
    "MAX_FILE_BYTES",
    "PIPELINE_KEYS",
    "SHARDING_KEYS",
    "TABLES",
    "load_pipeline",
    "load_pipeline_text",
    "parse_toml",
    "read_text",
]
