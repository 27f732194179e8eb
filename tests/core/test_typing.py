"""Tests for ``datarax.typing``: aliases, type variables, protocols, leaf import."""

from __future__ import annotations

import collections.abc
import doctest
import logging
import subprocess
import sys
import typing

import jax
import pytest

import datarax.typing as dt
from datarax.typing import Checkpointable, CheckpointableIterator

ALIASES = [
    "Element",
    "Batch",
    "DataDict",
    "StateDict",
    "MetadataDict",
    "ArrayShape",
    "PRNGKey",
    "ElementTransform",
    "BatchTransform",
    "ArrayTransform",
    "DataProcessor",
    "StateProcessor",
    "MetadataProcessor",
    "ScanFn",
    "CondFn",
    "WhileBodyFn",
    "T",
    "T_co",
    "E",
    "B",
    "logger",
]

CALLABLE_ALIASES = [
    "ElementTransform",
    "BatchTransform",
    "ArrayTransform",
    "DataProcessor",
    "StateProcessor",
    "MetadataProcessor",
    "ScanFn",
    "CondFn",
    "WhileBodyFn",
]


# --- aliases ---------------------------------------------------------------


@pytest.mark.parametrize("name", ALIASES)
def test_alias_exists(name):
    assert getattr(dt, name) is not None


@pytest.mark.parametrize("name", ALIASES + ["Metadata", "Checkpointable", "CheckpointableIterator"])
def test_alias_is_exported(name):
    assert name in dt.__all__


def test_all_names_resolve():
    for name in dt.__all__:
        assert hasattr(dt, name), name


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_alias"):
        dt.no_such_alias  # noqa: B018
    assert not hasattr(dt, "no_such_alias")


def test_dict_aliases():
    assert dt.DataDict == dict[str, jax.Array]
    assert dt.StateDict == dict[str, typing.Any]
    assert dt.MetadataDict == dict[str, typing.Any]
    assert typing.get_origin(dt.DataDict) is dict


def test_shape_and_key_aliases():
    assert dt.ArrayShape == tuple[int, ...]
    assert dt.PRNGKey is jax.Array
    assert isinstance(jax.random.key(0), dt.PRNGKey)


@pytest.mark.parametrize("name", CALLABLE_ALIASES)
def test_callable_aliases_are_callable_types(name):
    alias = getattr(dt, name)
    assert typing.get_origin(alias) is collections.abc.Callable


def test_callable_alias_signatures():
    params, ret = typing.get_args(dt.ArrayTransform)
    assert params == [jax.Array] and ret is jax.Array
    params, ret = typing.get_args(dt.DataProcessor)
    assert params == [dt.DataDict] and ret == dt.DataDict
    params, ret = typing.get_args(dt.StateProcessor)
    assert params == [dt.StateDict] and ret == dt.StateDict
    params, ret = typing.get_args(dt.CondFn)
    assert params == [typing.Any] and ret is bool
    params, ret = typing.get_args(dt.WhileBodyFn)
    assert params == [typing.Any] and ret is typing.Any
    params, ret = typing.get_args(dt.ScanFn)
    assert len(params) == 2
    assert typing.get_origin(ret) is tuple and len(typing.get_args(ret)) == 2


def test_type_variables():
    assert isinstance(dt.T, typing.TypeVar) and dt.T.__name__ == "T"
    assert isinstance(dt.T_co, typing.TypeVar) and dt.T_co.__covariant__
    assert not dt.T.__covariant__ and not dt.T.__contravariant__
    assert isinstance(dt.E, typing.TypeVar) and dt.E.__name__ == "E"
    assert isinstance(dt.B, typing.TypeVar) and dt.B.__name__ == "B"
    # E and B are bounded by Element and Batch respectively.
    assert dt.E.__bound__ is not None and "Element" in repr(dt.E.__bound__)
    assert dt.B.__bound__ is not None and "Batch" in repr(dt.B.__bound__)


def test_logger():
    assert isinstance(dt.logger, logging.Logger)
    assert dt.logger.name == "datarax.typing"


# --- lazily resolved classes -----------------------------------------------


def test_element_and_batch_resolve_to_core_classes():
    from datarax.core import element_batch

    assert dt.Element is element_batch.Element
    assert dt.Batch is element_batch.Batch
    assert isinstance(dt.Element, type) and isinstance(dt.Batch, type)


def test_metadata_resolves_to_core_class():
    from datarax.core import metadata

    assert dt.Metadata is metadata.Metadata
    assert isinstance(dt.Metadata, type)


# --- leaf import ------------------------------------------------------------


def test_import_is_a_leaf():
    code = (
        "import sys\n"
        "import datarax.typing\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('datarax'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    loaded = result.stdout.strip().split(",")
    assert "datarax.typing" in loaded
    assert not [m for m in loaded if m.startswith("datarax.core")], loaded
    assert set(loaded) <= {"datarax", "datarax.typing"}, loaded


# --- protocols --------------------------------------------------------------


class _Stateful:
    def __init__(self):
        self.n = 0

    def get_state(self):
        return {"n": self.n}

    def set_state(self, state):
        self.n = state["n"]


class _OnlyGet:
    def get_state(self):
        return {}


class _OnlySet:
    def set_state(self, state):
        pass


class _StatefulIterator(_Stateful):
    def __iter__(self):
        return self

    def __next__(self):
        self.n += 1
        return self.n


class _PlainIterator:
    def __iter__(self):
        return self

    def __next__(self):
        raise StopIteration


class _StatefulIterableNoNext(_Stateful):
    def __iter__(self):
        return iter(())


def test_protocols_are_runtime_checkable():
    for proto in (Checkpointable, CheckpointableIterator):
        assert typing.Protocol in proto.__mro__
        assert getattr(proto, "_is_protocol", False)
        assert getattr(proto, "_is_runtime_protocol", False)
    assert issubclass(CheckpointableIterator, Checkpointable)


def test_checkpointable_positive():
    obj = _Stateful()
    assert isinstance(obj, Checkpointable)
    assert isinstance(_StatefulIterator(), Checkpointable)


@pytest.mark.parametrize("obj", [_OnlyGet(), _OnlySet(), object(), {"get_state": 1}, 3, _PlainIterator()])
def test_checkpointable_negative(obj):
    assert not isinstance(obj, Checkpointable)


def test_checkpointable_iterator_positive():
    it = _StatefulIterator()
    assert isinstance(it, CheckpointableIterator)
    assert next(it) == 1
    state = it.get_state()
    assert next(it) == 2
    it.set_state(state)
    assert next(it) == 2


@pytest.mark.parametrize("obj", [_Stateful(), _PlainIterator(), iter([1, 2]), _StatefulIterableNoNext(), object()])
def test_checkpointable_iterator_negative(obj):
    assert not isinstance(obj, CheckpointableIterator)


def test_checkpointable_iterator_is_generic():
    alias = CheckpointableIterator[int]
    assert typing.get_args(alias) == (int,)


# --- doctests ---------------------------------------------------------------


def test_doctests():
    result = doctest.testmod(dt, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
