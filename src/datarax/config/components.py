"""What a registry name builds: a datarax module from its config, or a factory of yours.

A TOML component table names a registered component by ``type`` and gives its
keys::

    [[stages]]
    type = "RandomBrightness"   # a registry name
    magnitude = 0.2             # a field of RandomBrightnessConfig
    name = "brightness"         # the constructor's name argument

Two kinds of entry build such a table:

* ``ModuleComponent``: a datarax class and its config dataclass. Every config
  field whose type TOML can express is a key (checked against the field's type
  hint by ``datarax.config.values``); the constructor's other arguments are
  listed explicitly as ``Argument``s of a kind (a file path, several paths, a
  table of column paths, ``.npy`` arrays, a nested component, a list of
  components, ...), so that a file path is always resolved inside the allowed
  roots and a nested component is always a registry name too. Arguments that
  take Python objects (functions, datasets) are not keys: such components are
  built in code.
* ``FactoryComponent``: a function you register by name; the table's keys are
  its keyword arguments (checked against its signature), and the arguments you
  name in ``paths`` are resolved inside the allowed roots first.

Building is the only thing either does with a table: no key is ever imported,
evaluated or unpickled. A value the component refuses (its config's or
constructor's own validation) is reported with the key its message names.

Example:
    >>> from datarax.operators import RandomFlip, RandomFlipConfig
    >>> flip = ModuleComponent("RandomFlip", RandomFlip, RandomFlipConfig)
    >>> sorted(flip.keys())[:4]
    ['axis', 'cacheable', 'fields', 'name']
    >>> flip.keys()["probability"]
    'a number (default 0.5)'
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from datarax.config.errors import ConfigError, KeyPath
from datarax.config.values import Mismatch, convert, describe, expected, toml_literal
from datarax.core.data_source import DataSourceModule
from datarax.core.host_operator import HostOperator
from datarax.core.host_source import HostSourceModule
from datarax.core.operator import OperatorModule

SOURCE = "source"
HOST_SOURCE = "host source"
OPERATOR = "operator"
HOST_OPERATOR = "host operator"
ROLES: dict[str, type] = {
    SOURCE: DataSourceModule,
    HOST_SOURCE: HostSourceModule,
    OPERATOR: OperatorModule,
    HOST_OPERATOR: HostOperator,
}
"""What each place in a pipeline accepts: the role and the class its component must build."""

TYPE_KEY = "type"
_NOT_KEYS = frozenset({"batch_stats_fn", "precomputed_stats"})  # functions and statistics: code only


class BuildContext(Protocol):
    """What a component needs from the loader while it builds (see ``datarax.config.loader``)."""

    def error(self, at: KeyPath, reason: str) -> ConfigError:
        """A ``ConfigError`` for the key at ``at``, with its line."""
        ...

    def path(self, value: Any, at: KeyPath) -> str:
        """``value`` resolved inside the allowed roots."""
        ...

    def component(self, table: Any, at: KeyPath, role: str) -> Any:
        """The component the table at ``at`` describes, checked to fill ``role``."""
        ...


def blame(message: str, keys: typing.Iterable[str]) -> str | None:
    """The key an error message is about: the first one it names as a subject (``magnitude must ...``), else
    the first it names at all; None if it names none.

    Example:
        >>> blame("NormalizeConfig: std must be positive, got mean=(0.5,), std=(0.0,)", ["mean", "std"])
        'std'
    """
    keys = [key for key in keys if key != TYPE_KEY]
    for pattern in (r"\b{}\b\s*(must|=|is|should|has)", r"\b{}\b"):
        found = [(match.start(), key) for key in keys if (match := re.search(pattern.format(re.escape(key)), message))]
        if found:
            return min(found)[1]
    return None


def failure(ctx: BuildContext, at: KeyPath, error: BaseException, keys: typing.Iterable[str]) -> ConfigError:
    """A component's own error, reported at the key its message names (else at its table)."""
    message = str(error) or type(error).__name__
    if isinstance(error, KeyError) and error.args:
        message = str(error.args[0])
    key = blame(message, keys)
    return ctx.error(at if key is None else (*at, key), f"{type(error).__name__}: {message}")


def unknown_key(ctx: BuildContext, at: KeyPath, key: str, owner: str, known: typing.Iterable[str]) -> ConfigError:
    """The error for a key nobody reads, with the closest known key and the accepted ones."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ctx.error((*at, key), f"unknown key {key!r} for {owner}{hint} (expected one of: {', '.join(known)})")


def _strings(value: Any, ctx: BuildContext, at: KeyPath) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ctx.error(at, f"expected an array of strings, got {describe(value)}")
    return value


@dataclasses.dataclass(frozen=True)
class Argument:
    """A constructor argument that is not a config field, and how its TOML value is read.

    Attributes:
        kind: One of ``KINDS``: ``"path"`` (one path, resolved inside the roots), ``"paths"`` (a
            path or glob, or an array of them), ``"path_table"`` (a table of column name to
            path), ``"npy_table"`` (a table of column name to ``.npy`` file, loaded without
            pickle), ``"string"``, ``"strings"``, ``"number"``, ``"integer"``, ``"integers"``,
            ``"component"`` (a nested component table of ``role``) or ``"components"`` (an
            array of them).
        required: Whether the table must give it.
        role: For ``component``/``components``: the role the nested components fill.
    """

    kind: str
    required: bool = False
    role: str | None = None

    KINDS: typing.ClassVar[dict[str, str]] = {
        "path": "a file or directory path",
        "paths": "a path or glob pattern, or an array of them",
        "path_table": "a table of column name to file path",
        "npy_table": "a table of column name to .npy file path",
        "string": "a string",
        "strings": "an array of strings",
        "number": "a number",
        "integer": "an integer",
        "integers": "an array of integers",
        "component": "a component table (with a type key)",
        "components": "an array of component tables",
    }

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"Argument: kind must be one of {sorted(self.KINDS)}, got {self.kind!r}")
        if (self.kind in ("component", "components")) != (self.role is not None):
            raise ValueError(f"Argument: role is required for component kinds and only for them, got {self.role!r}")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"Argument: role must be one of {sorted(ROLES)}, got {self.role!r}")

    def describe(self) -> str:
        """The accepted TOML value, in words."""
        if self.kind == "component":
            return f"{_article(self.role)} table (a component: type and its keys)"
        if self.kind == "components":
            return f"an array of {self.role} tables"
        return self.KINDS[self.kind]

    def read(self, value: Any, at: KeyPath, ctx: BuildContext) -> Any:
        """The constructor argument for a TOML value (paths resolved, components built)."""
        kind = self.kind
        if kind == "path":
            return ctx.path(value, at)
        if kind == "paths":
            if isinstance(value, list):
                if not value:
                    raise ctx.error(at, "expected at least one path, got an empty array")
                return [ctx.path(item, (*at, i)) for i, item in enumerate(value)]
            return ctx.path(value, at)
        if kind in ("path_table", "npy_table"):
            if not isinstance(value, dict) or not value:
                raise ctx.error(
                    at, f'expected {self.describe()} (e.g. {{ image = "images.npy" }}), got {describe(value)}'
                )
            paths = {column: ctx.path(path, (*at, column)) for column, path in value.items()}
            return paths if kind == "path_table" else {c: _load_npy(p, (*at, c), ctx) for c, p in paths.items()}
        if kind == "strings":
            return _strings(value, ctx, at)
        if kind == "integers":
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ctx.error(at, f"expected an array of integers, got {describe(value)}")
            return value
        if kind == "component":
            return ctx.component(value, at, self.role)
        if kind == "components":
            if not isinstance(value, list) or not value:
                raise ctx.error(at, f"expected {self.describe()} ([[...]] tables), got {describe(value)}")
            return [ctx.component(item, (*at, i), self.role) for i, item in enumerate(value)]
        hint = {"string": str, "number": float, "integer": int}[kind]
        try:
            return convert(hint, value)
        except Mismatch as error:
            raise ctx.error(at, str(error)) from None


def _load_npy(path: str, at: KeyPath, ctx: BuildContext) -> np.ndarray:
    """A ``.npy`` file's array, never unpickling (``allow_pickle=False``)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ctx.error(at, f"cannot read the .npy file {path}: {type(error).__name__}: {error}") from error


def _check_role(ctx: BuildContext, at: KeyPath, built: Any, owner: str, role: str) -> Any:
    if not isinstance(built, ROLES[role]):
        raise ctx.error(
            at, f"{owner} built a {type(built).__name__}, which is not {_article(role)} (a {ROLES[role].__name__})"
        )
    return built


@dataclasses.dataclass(frozen=True)
class ModuleComponent:
    """A datarax class built from its config dataclass and declared constructor arguments.

    Attributes:
        name: The registry name (``type = "..."`` in TOML).
        cls: The component class; called as ``cls(config, **arguments)``.
        config_cls: Its config dataclass; every field TOML can express is a key.
        arguments: The constructor's other arguments that a TOML file may give.
        finish: Optional ``finish(arguments, config) -> arguments`` run before ``cls`` (e.g.
            ``RandAugment`` building its operator list from a magnitude).
    """

    name: str
    cls: type
    config_cls: type
    arguments: Mapping[str, Argument] = dataclasses.field(default_factory=dict)
    finish: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None

    def fields(self) -> dict[str, Any]:
        """The config fields a TOML file can set: name to type hint."""
        hints = typing.get_type_hints(self.config_cls)
        return {
            field.name: hints[field.name]
            for field in dataclasses.fields(self.config_cls)
            if field.init and field.name not in _NOT_KEYS and expected(hints[field.name]) is not None
        }

    def _required_fields(self) -> set[str]:
        return {
            field.name
            for field in dataclasses.fields(self.config_cls)
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        }

    def _takes_name(self) -> bool:
        return "name" in inspect.signature(self.cls.__init__).parameters

    def keys(self) -> dict[str, str]:
        """Every key the component's table accepts (besides ``type``), with what it takes."""
        out = {}
        required = self._required_fields()
        defaults = {f.name: f.default for f in dataclasses.fields(self.config_cls)}
        for key, hint in self.fields().items():
            default = "required" if key in required else f"default {toml_literal(defaults[key])}"
            out[key] = f"{expected(hint)} ({default})"
        for key, argument in self.arguments.items():
            out[key] = f"{argument.describe()} ({'required' if argument.required else 'optional'})"
        if self._takes_name():
            out["name"] = "a string (optional): the module's name, which also names its random stream"
        return out

    def role(self) -> str | None:
        """The most specific role its class fills (None if none)."""
        for role in (HOST_SOURCE, SOURCE, HOST_OPERATOR, OPERATOR):
            if issubclass(self.cls, ROLES[role]):
                return role
        return None

    def build(self, table: Mapping[str, Any], at: KeyPath, ctx: BuildContext, role: str) -> Any:
        """The component a TOML table describes.

        Raises:
            ConfigError: For an unknown or missing key, a wrong type, or a value the component refuses.
        """
        if not issubclass(self.cls, ROLES[role]):
            raise ctx.error(
                (*at, TYPE_KEY),
                f"{self.name!r} is {_article(self.role())}, not {_article(role)} (expected a {role} here)",
            )
        fields = self.fields()
        known = {*fields, *self.arguments, *(["name"] if self._takes_name() else [])}
        for key in table:
            if key != TYPE_KEY and key not in known:
                raise unknown_key(ctx, at, key, self.name, known)
        for key in sorted(self._required_fields() & set(fields)):
            if key not in table:
                raise ctx.error(at, f"{self.name} is missing the required key {key!r} ({expected(fields[key])})")
        for key, argument in self.arguments.items():
            if argument.required and key not in table:
                raise ctx.error(at, f"{self.name} is missing the required key {key!r} ({argument.describe()})")
        values = {}
        for key in fields.keys() & table.keys():
            try:
                values[key] = convert(fields[key], table[key])
            except Mismatch as error:
                raise ctx.error((*at, key, *error.where), str(error)) from None
        try:
            config = self.config_cls(**values)
        except Exception as error:  # noqa: BLE001 - the config's own validation, reported at its key
            raise failure(ctx, at, error, table) from error
        arguments = {
            key: argument.read(table[key], (*at, key), ctx) for key, argument in self.arguments.items() if key in table
        }
        if "name" in table:
            if not isinstance(table["name"], str) or not table["name"]:
                raise ctx.error((*at, "name"), f"expected a non-empty string, got {describe(table['name'])}")
            arguments["name"] = table["name"]
        try:
            if self.finish is not None:
                arguments = self.finish(arguments, config)
            return self.cls(config, **arguments)
        except Exception as error:  # noqa: BLE001 - the component's own validation, reported at its key
            raise failure(ctx, at, error, table) from error


def _article(role: str | None) -> str:
    if role is None:
        return "not a pipeline component"
    return f"an {role}" if role[0] in "aeiou" else f"a {role}"


@dataclasses.dataclass(frozen=True)
class FactoryComponent:
    """A function registered by name; a TOML table's keys are its keyword arguments.

    Attributes:
        name: The registry name.
        factory: Called as ``factory(**keys)`` with the TOML values (arrays as lists, tables as
            dicts); it returns the component.
        paths: The keyword arguments that are file paths (a string, an array or a table of
            strings): resolved inside the allowed roots before the call.

    Raises:
        TypeError: If ``factory`` is not callable or has positional-only parameters.
        ValueError: If ``paths`` names an argument the factory does not take.
    """

    name: str
    factory: Callable[..., Any]
    paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not callable(self.factory):
            raise TypeError(f"register: factory must be callable, got {self.factory!r}")
        parameters = self._parameters()
        positional = [p.name for p in parameters.values() if p.kind == p.POSITIONAL_ONLY]
        if positional:
            raise TypeError(
                f"register: {self.name!r}: a factory takes keyword arguments; {positional} are positional-only"
            )
        object.__setattr__(self, "paths", tuple(self.paths))
        if not self._takes_any():
            unknown = sorted(set(self.paths) - set(parameters))
            if unknown:
                raise ValueError(f"register: {self.name!r}: paths names {unknown}, which the factory does not take")

    def _parameters(self) -> dict[str, inspect.Parameter]:
        return {
            name: p
            for name, p in inspect.signature(self.factory).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def _takes_any(self) -> bool:
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(self.factory).parameters.values())

    def keys(self) -> dict[str, str]:
        """The keyword arguments a table may give."""
        return {
            name: ("a path" if name in self.paths else "a value") + (" (required)" if p.default is p.empty else "")
            for name, p in self._parameters().items()
        }

    def _path_value(self, value: Any, at: KeyPath, ctx: BuildContext) -> Any:
        if isinstance(value, list):
            return [ctx.path(item, (*at, i)) for i, item in enumerate(value)]
        if isinstance(value, dict):
            return {key: ctx.path(item, (*at, key)) for key, item in value.items()}
        return ctx.path(value, at)

    def build(self, table: Mapping[str, Any], at: KeyPath, ctx: BuildContext, role: str) -> Any:
        """Calls the factory with the table's keys and checks what it returns fills ``role``."""
        parameters = self._parameters()
        kwargs = {key: value for key, value in table.items() if key != TYPE_KEY}
        if not self._takes_any():
            for key in kwargs:
                if key not in parameters:
                    raise unknown_key(ctx, at, key, f"the registered component {self.name!r}", parameters)
        for name, p in parameters.items():
            if p.default is p.empty and name not in kwargs:
                raise ctx.error(at, f"the registered component {self.name!r} is missing the required key {name!r}")
        for key in self.paths:
            if key in kwargs:
                kwargs[key] = self._path_value(kwargs[key], (*at, key), ctx)
        try:
            built = self.factory(**kwargs)
        except Exception as error:  # noqa: BLE001 - the factory's own validation, reported at its key
            raise failure(ctx, at, error, kwargs) from error
        return _check_role(ctx, at, built, f"the registered component {self.name!r}", role)


@dataclasses.dataclass(frozen=True)
class CodeOnly:
    """A datarax component that needs Python objects (a function, a dataset) and so has no TOML form.

    Attributes:
        name: Its class name, which a TOML file might try.
        needs: What it takes that TOML cannot hold.
    """

    name: str
    needs: str

    def build(self, table: Mapping[str, Any], at: KeyPath, ctx: BuildContext, role: str) -> Any:
        """Always refuses, saying how to use the component from TOML."""
        raise ctx.error(
            (*at, TYPE_KEY),
            f"{self.name} takes {self.needs}, which a TOML file cannot hold; build it in code and register a "
            "factory by name: datarax.config.register('my_component', factory)",
        )


Component = ModuleComponent | FactoryComponent | CodeOnly
"""A registry entry."""

__all__ = [
    "HOST_OPERATOR",
    "HOST_SOURCE",
    "OPERATOR",
    "ROLES",
    "SOURCE",
    "TYPE_KEY",
    "Argument",
    "BuildContext",
    "CodeOnly",
    "Component",
    "FactoryComponent",
    "ModuleComponent",
    "blame",
    "failure",
    "unknown_key",
]
