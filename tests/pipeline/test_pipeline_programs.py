"""The stream a pipeline serves, the programs identically built pipelines share, and the fingerprint.

* ``pipeline.stream`` is a frozen ``StreamSpec`` whose identity is what an iterator state records.
* Pipelines built the same way (same module-level functions, configs and data shapes) share one
  ``StepProgram`` from ``datarax.pipeline.program.PROGRAMS`` and so compile once.
* A state from a pipeline whose operators differ (function, config, class) is refused, and the
  fingerprint is the same when the same pipeline is built in a fresh process.
* ``Pipeline(nodes=..., edges=..., sink=...)`` and ``Pipeline.from_dag`` are one constructor path;
  ``next`` and ``scan`` compute the same batches; parameters updated in place are seen at once.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from pipeline_helpers import add_noise, assert_streams_equal, collect, make_source, noise_op, to_numpy

from datarax import Pipeline
from datarax.core.batch_form import VALID_MASK
from datarax.core.config import OperatorConfig
from datarax.core.operator import OperatorModule
from datarax.operators import (
    CompositeOperator,
    CompositeOperatorConfig,
    ElementOperator,
    ElementOperatorConfig,
    MapOperator,
    MapOperatorConfig,
)
from datarax.pipeline.program import PROGRAMS
from datarax.pipeline.stream import StreamSpec

HERE = Path(__file__).resolve().parent
B = 4

# Traces of TracedDouble.apply. A module-level counter: a list attribute on the operator would be
# an unhashable static attribute, which opts the pipeline out of program sharing.
TRACES = 0


class TracedDouble(OperatorModule):
    """Doubles ``x``; counts how often ``apply`` is traced."""

    def apply(self, element, key=None):
        global TRACES
        TRACES += 1
        return {**element, "x": element["x"] * 2}


def double(element, key):
    return {**element, "x": element["x"] * 2}


def triple(element, key):
    return {**element, "x": element["x"] * 3}


def plus_one(leaf):
    return leaf + 1


def times_two(leaf):
    return leaf * 2


def _op(fn):
    return ElementOperator(ElementOperatorConfig(), fn=fn)


def _jitter():
    return ElementOperator(ElementOperatorConfig(stochastic=True, stream_name="augment"), fn=add_noise)


def build_shared(fn=double, n=17, batch_size=B, subtree=("x",)):
    stages = [TracedDouble(OperatorConfig()), _op(fn), MapOperator(MapOperatorConfig(subtree=subtree), fn=plus_one)]
    return Pipeline(
        source=make_source(n), stages=stages, batch_size=batch_size, rngs=nnx.Rngs(1), shuffle=True, num_epochs=1
    )


# -- the stream ------------------------------------------------------------------


def test_the_stream_is_a_frozen_spec_recorded_in_iterator_states():
    pipeline = Pipeline(
        source=make_source(10),
        stages=[_jitter()],
        batch_size=B,
        rngs=nnx.Rngs(9),
        shuffle=True,
        drop_remainder=True,
    )
    stream = pipeline.stream
    assert isinstance(stream, StreamSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stream.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        stream.fingerprint = 0
    assert (stream.num_records, stream.batch_size, stream.drop_remainder, stream.shuffle, stream.seed) == (
        10,
        B,
        True,
        True,
        9,
    )
    assert stream.fingerprint == pipeline.fingerprint()
    assert hash(stream) == hash(dataclasses.replace(stream))
    iterator = iter(pipeline)
    state = iterator.get_state()
    assert {k: state[k] for k in stream.identity()} == stream.identity()
    assert set(state) - set(stream.identity()) == {"version", "epoch", "position", "stop_epoch"}
    next(iterator)
    assert {k: iterator.get_state()[k] for k in stream.identity()} == stream.identity()
    assert json.loads(json.dumps(state)) == state


# -- shared programs -------------------------------------------------------------


def test_identically_built_pipelines_share_one_program_and_compile_once():
    # n=19 is built by this test only, so its program is not in the cache yet.
    hits, misses = PROGRAMS.hits, PROGRAMS.misses
    a = build_shared(n=19)
    program = a.program
    assert (PROGRAMS.hits - hits, PROGRAMS.misses - misses) == (0, 1)
    b = build_shared(n=19)
    assert b.program is program
    assert (PROGRAMS.hits - hits, PROGRAMS.misses - misses) == (1, 1)
    assert a.program is program and (PROGRAMS.hits - hits, PROGRAMS.misses - misses) == (1, 1)  # asked once

    assert program.trace_count == 0  # nothing traced before the first batch
    before = TRACES
    first = collect(a)
    traced = TRACES
    assert program.trace_count == 1
    assert traced > before
    second = collect(b)
    assert program.trace_count == 1  # b reuses a's executable: no new trace at all
    assert traced == TRACES
    assert_streams_equal(second, first)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([x["x"][x[VALID_MASK]] for x in first])),
        np.arange(19, dtype=np.float32) / 2 * 2 * 2 + 1,
    )


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"fn": triple}, id="function"),
        pytest.param({"subtree": ("x", "label")}, id="config"),
        pytest.param({"batch_size": 5}, id="batch-size"),
        pytest.param({"n": 18}, id="record-count"),
    ],
)
def test_a_differently_built_pipeline_gets_another_program(change):
    reference = build_shared().program
    misses = PROGRAMS.misses
    other = build_shared(**change)
    assert other.program is not reference
    assert PROGRAMS.misses == misses + 1
    assert other.program is build_shared(**change).program


class Tabled(OperatorModule):
    """Holds a list (an unhashable static attribute): its pipelines cannot share programs."""

    def __init__(self):
        super().__init__(OperatorConfig())
        self.table = [1.0, 2.0]

    def apply(self, element, key=None):
        return {**element, "x": element["x"] + self.table[1]}


def test_an_unhashable_static_attribute_opts_out_of_sharing_but_works():
    def build():
        return Pipeline(source=make_source(6), stages=[Tabled()], batch_size=B)

    misses = PROGRAMS.misses
    a, b = build(), build()
    assert a.program is not b.program
    assert PROGRAMS.misses == misses + 2
    assert np.asarray(next(iter(a))["x"]).tolist() == [2.0, 2.5, 3.0, 3.5]


# -- the fingerprint -------------------------------------------------------------


def _times(factor):
    return _op(lambda e, k: {**e, "x": e["x"] * factor})


VARIANTS = {
    "lambda-constant": (
        lambda: _op(lambda e, k: {**e, "x": e["x"] * 2}),
        lambda: _op(lambda e, k: {**e, "x": e["x"] * 3}),
    ),
    "function": (lambda: _op(double), lambda: _op(triple)),
    "closure-value": (lambda: _times(2), lambda: _times(3)),
    "map-subtree": (
        lambda: MapOperator(MapOperatorConfig(subtree=("x",)), fn=plus_one),
        lambda: MapOperator(MapOperatorConfig(subtree=("x", "label")), fn=plus_one),
    ),
    # The two compute the same values; a different class is still a different pipeline.
    "operator-class": (lambda: _op(double), lambda: MapOperator(MapOperatorConfig(subtree=("x",)), fn=times_two)),
    "nested-child": (
        lambda: CompositeOperator(CompositeOperatorConfig(), [_op(plus_one_element), _op(double)]),
        lambda: CompositeOperator(CompositeOperatorConfig(), [_op(plus_one_element), _op(triple)]),
    ),
}


def plus_one_element(element, key):
    return {**element, "x": element["x"] + 1}


def _fingerprint_pipeline(make_op):
    return Pipeline(
        source=make_source(10),
        stages=[_jitter(), make_op()],
        batch_size=B,
        rngs=nnx.Rngs(2),
        shuffle=True,
        num_epochs=2,
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_state_from_a_pipeline_with_another_deterministic_operator_is_refused(variant):
    make_a, make_b = VARIANTS[variant]
    a = iter(_fingerprint_pipeline(make_a))
    next(a)
    next(a)
    state = json.loads(json.dumps(a.get_state()))

    reference = collect(_fingerprint_pipeline(make_b))
    pipeline_b = _fingerprint_pipeline(make_b)
    assert pipeline_b.fingerprint() != state["fingerprint"]
    b = iter(pipeline_b)
    got = [to_numpy(next(b))]
    before = b.get_state()
    with pytest.raises(ValueError, match=r"fingerprint is \d+ in the state but \d+ here"):
        b.set_state(state)
    assert b.get_state() == before  # refused: the iterator continues where it was
    got += collect(b)
    assert_streams_equal(got, reference)

    # The same pipeline rebuilt accepts the state.
    again = iter(_fingerprint_pipeline(make_a))
    again.set_state(state)
    assert again.get_state() == state


def build_for_fresh_process():
    """A pipeline with every kind of thing the fingerprint describes (also built in a subprocess)."""
    stages = [
        _jitter(),  # derived key
        noise_op(4),  # own rngs
        _times(3),  # closure value
        _op(lambda e, k: {**e, "x": e["x"] - 1}),  # a lambda
        MapOperator(MapOperatorConfig(subtree=("x",)), fn=plus_one),
        CompositeOperator(CompositeOperatorConfig(), [_op(double), _op(plus_one_element)]),
    ]
    return Pipeline(source=make_source(10), stages=stages, batch_size=B, rngs=nnx.Rngs(2), shuffle=True)


def test_the_fingerprint_is_the_same_in_a_fresh_process():
    pipeline = build_for_fresh_process()
    assert build_for_fresh_process().fingerprint() == pipeline.fingerprint()
    # Load this very file under the name pytest gave it, so its functions have the same
    # module and qualified names; a different hash seed shows nothing depends on hash().
    code = (
        "import importlib.util, json, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        f"spec = importlib.util.spec_from_file_location({__name__!r}, {__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n"
        "pipeline = module.build_for_fresh_process()\n"
        "print('IDENTITY', json.dumps(pipeline.stream.identity()))\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("IDENTITY ")]
    assert line, done.stdout
    assert json.loads(line[-1].split(" ", 1)[1]) == pipeline.stream.identity()


# -- one constructor path --------------------------------------------------------


def label_and_double(element, key):
    return {"label": element["label"], "y": element["x"] * 2}


def label_and_sum(element, key):
    return {"label": element["label"], "z": element["x"] + element["y"]}


def _dag_parts():
    nodes = {"jitter": _jitter(), "double": _op(label_and_double), "merge": _op(label_and_sum)}
    edges = [("source", "jitter"), ("source", "double"), ("jitter", "merge"), ("double", "merge")]
    return {"source": make_source(11), "nodes": nodes, "edges": edges, "sink": "merge"}


def test_the_dag_constructor_equals_from_dag():
    settings = {"batch_size": B, "rngs": nnx.Rngs(6), "shuffle": True, "num_epochs": 2}
    direct = Pipeline(**_dag_parts(), **settings)
    settings["rngs"] = nnx.Rngs(6)
    via = Pipeline.from_dag(**_dag_parts(), **settings)
    assert direct.stream == via.stream
    assert direct.program is via.program
    batches = collect(direct)
    assert len(batches) == 6
    assert_streams_equal(collect(via), batches)
    assert len({b["z"].tobytes() for b in batches}) == 6  # the jitter draws vary


def test_stages_and_nodes_together_are_refused():
    parts = _dag_parts()
    with pytest.raises(ValueError, match="either stages or nodes"):
        Pipeline(**parts, stages=[_op(double)], batch_size=B, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "given",
    [("nodes",), ("edges", "sink"), ("nodes", "edges")],
    ids="+".join,
)
def test_a_partial_dag_is_refused_naming_what_is_missing(given):
    parts = _dag_parts()
    kwargs = {name: parts[name] for name in given}
    missing = [name for name in ("nodes", "edges", "sink") if name not in given]
    with pytest.raises(ValueError, match="DAG") as error:
        Pipeline(source=parts["source"], batch_size=B, rngs=nnx.Rngs(0), **kwargs)
    message = str(error.value)
    assert "missing" in message, message
    said_missing = message[message.index("missing") :]
    for name in missing:
        assert re.search(rf"\b{name}\b", said_missing), message
    for name in given:
        assert not re.search(rf"\b{name}\b", said_missing), message


# -- next and scan ---------------------------------------------------------------


def test_scan_yields_the_batches_of_iteration_bit_for_bit():
    def build():
        return Pipeline(
            source=make_source(10),
            stages=[_jitter(), noise_op(5), _op(double)],
            batch_size=B,
            rngs=nnx.Rngs(8),
            shuffle=True,
            num_epochs=2,
        )

    iterated = collect(build())
    pipeline = build()
    scanned = pipeline.scan(lambda batch: batch, length=len(iterated))  # across the epoch boundary
    assert scanned["x"].shape == (6, B)
    batches = [{k: np.asarray(v[t]) for k, v in scanned.items()} for t in range(6)]
    assert_streams_equal(batches, iterated)
    assert batches[2][VALID_MASK].tolist() == [True, True, False, False]


# -- parameters updated in place -------------------------------------------------


class Scale(nnx.Module):
    """Multiplies ``x`` by a learnable weight."""

    def __init__(self):
        self.weight = nnx.Param(jnp.float32(1.0))

    def __call__(self, element, key):
        return {**element, "x": element["x"] * self.weight[...]}


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_parameter_updated_in_place_is_seen_by_the_next_batch(prefetch):
    scale = Scale()
    pipeline = Pipeline(source=make_source(16), stages=[_op(scale)], batch_size=B, prefetch=prefetch, num_epochs=1)
    iterator = iter(pipeline)
    np.testing.assert_array_equal(np.asarray(next(iterator)["x"]), np.arange(0, 4) / 2)
    traces = pipeline.program.trace_count  # the program may be shared with an earlier identical pipeline
    scale.weight.set_value(jnp.float32(10.0))
    np.testing.assert_array_equal(np.asarray(next(iterator)["x"]), np.arange(4, 8) / 2 * 10)
    assert pipeline.program.trace_count == traces  # parameters are arguments, not constants: no retrace
    scale.weight.set_value(jnp.float32(-1.0))
    out = pipeline.scan(lambda batch: batch["x"], length=2, iterator=iterator)
    np.testing.assert_array_equal(np.asarray(out), -np.arange(8, 16).reshape(2, 4) / 2)
