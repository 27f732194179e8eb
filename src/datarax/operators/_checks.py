"""Private helpers shared by the operators: labels, config checks, child keys, spec comparison.

Operators in this package validate at two moments. Config fields are checked when the config is
built (``__post_init__``); everything that depends on the element (missing keys, children whose
outputs disagree) is checked while ``apply`` is traced. The pipeline calls ``output_spec`` (an
``eval_shape`` of ``apply``) at construction, so the second kind also fails before the first batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp

from datarax.core import threefry
from datarax.core.operator import OperatorModule
from datarax.core.spec import spec_mismatches, spec_of


def label(op: Any) -> str:
    """Names an operator in messages: its class, plus its ``name`` when it has one."""
    name = getattr(op, "name", None)
    return f"{type(op).__name__}({name!r})" if name else type(op).__name__


def require_config(op: Any, config: Any, config_cls: type) -> None:
    """Raises TypeError unless ``config`` is a ``config_cls``."""
    if not isinstance(config, config_cls):
        raise TypeError(f"{type(op).__name__}: config must be a {config_cls.__name__}, got {type(config).__name__}")


def require_callable(owner: str, what: str, value: Any) -> None:
    """Raises TypeError naming ``what`` unless ``value`` is callable."""
    if not callable(value):
        raise TypeError(f"{owner}: {what} must be callable, got {value!r}")


def record_key(op: OperatorModule, key: jax.Array | None) -> jax.Array | None:
    """The key ``apply`` should use: None when deterministic; required when stochastic."""
    if not op.stochastic:
        return None
    if key is None:
        raise ValueError(f"{label(op)} is stochastic: apply needs the record's key, got key=None")
    return key


def require_element(op: Any, element: Any) -> None:
    """Raises TypeError unless ``element`` is a mapping (one record's dict of arrays)."""
    if not isinstance(element, Mapping):
        raise TypeError(f"{label(op)}: element must be a dict of arrays, got {type(element).__name__}")


def child_operators(owner: Any, operators: Any, *, stochastic: bool) -> list[OperatorModule]:
    """Validates the children of a combining operator.

    Args:
        owner: The combining operator (for messages).
        operators: The children as given by the caller.
        stochastic: Whether ``owner`` is configured stochastic.

    Returns:
        The children as a list.

    Raises:
        TypeError: If ``operators`` is not a sequence of ``OperatorModule``.
        ValueError: If it is empty, or a child is stochastic while ``owner`` is not.
    """
    owner_name = type(owner).__name__
    if isinstance(operators, OperatorModule) or not isinstance(operators, Sequence):
        raise TypeError(f"{owner_name}: operators must be a sequence of OperatorModule, got {type(operators).__name__}")
    children = list(operators)
    if not children:
        raise ValueError(f"{owner_name}: operators must hold at least one operator, got []")
    for i, child in enumerate(children):
        check_child(owner, child, f"operators[{i}]", stochastic=stochastic)
    return children


def check_child(owner: Any, child: Any, what: str, *, stochastic: bool) -> None:
    """Checks one child: an ``OperatorModule``, stochastic only if ``owner`` is."""
    owner_name = type(owner).__name__
    if not isinstance(child, OperatorModule):
        raise TypeError(f"{owner_name}: {what} must be an OperatorModule, got {type(child).__name__}")
    if child.stochastic and not stochastic:
        raise ValueError(
            f"{owner_name}: {what} ({label(child)}) is stochastic, so {owner_name} must be "
            "configured stochastic=True with a stream_name (children draw from its record key)"
        )


def child_key(key: jax.Array | None, index: int, child: OperatorModule) -> jax.Array | None:
    """``fold_in(key, index)`` for a stochastic child, None for a deterministic one."""
    if not child.stochastic:
        return None
    return threefry.fold_in(key, index)


def own_flags(applied: Any) -> jax.Array:
    """A counted operator's own ``(1, 2)`` flag row: ``[applied, skipped]`` for a record it saw."""
    applied = jnp.asarray(applied, dtype=bool)
    return jnp.stack([applied, ~applied])[None]


def unreached_flags(children: Sequence[OperatorModule]) -> jax.Array:
    """All-False flags for the counted operators of ``children`` (records that never reached them)."""
    return jnp.zeros((sum(len(c.counted_operators()) for c in children), 2), dtype=bool)


def chosen_child_flags(children: Sequence[OperatorModule], index: int, flags: jax.Array) -> jax.Array:
    """The flags of all ``children`` when only child ``index`` saw the record (its ``flags``; zeros elsewhere)."""
    return jnp.concatenate([unreached_flags(children[:index]), flags, unreached_flags(children[index + 1 :])])


def counted_subtree(owner: OperatorModule, children: Sequence[OperatorModule]) -> list[OperatorModule]:
    """``owner``, then each child's counted operators in order (``counted_operators`` of a combining operator)."""
    return [owner, *(op for child in children for op in child.counted_operators())]


def check_same_specs(owner: Any, outputs: Sequence[tuple[str, Any]], what: str) -> None:
    """Raises ValueError unless every output has the spec of the first one.

    Args:
        owner: The combining operator (for messages).
        outputs: ``(name, tree)`` pairs; trees may hold arrays, tracers or specs.
        what: What must agree, e.g. ``"branches"``.
    """
    first_name, first = outputs[0]
    reference = spec_of(first)
    for name, tree in outputs[1:]:
        problems = spec_mismatches(tree, reference)
        if problems:
            raise ValueError(
                f"{label(owner)}: all {what} must produce the same element spec, but {name} "
                f"differs from {first_name}:\n  " + "\n  ".join(problems)
            )


def normalised_weights(config_name: str, weights: Any) -> tuple[float, ...] | None:
    """Validates a weights field and returns it as a tuple of floats (None stays None).

    Raises:
        ValueError: If ``weights`` is not a non-empty sequence of finite positive numbers.
    """
    if weights is None:
        return None
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence) or not weights:
        raise ValueError(
            f"{config_name}: weights must be None or a non-empty tuple of positive numbers, got {weights!r}"
        )
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"{config_name}: weights must all be finite positive numbers, got {weights!r}")
    return tuple(float(w) for w in weights)


def check_weight_count(owner: Any, weights: tuple[float, ...] | None, count: int) -> tuple[float, ...]:
    """Normalises ``weights`` to sum 1 (uniform when None), checking there is one per child."""
    if weights is None:
        return tuple(1.0 / count for _ in range(count))
    if len(weights) != count:
        raise ValueError(
            f"{type(owner).__name__}: config.weights has {len(weights)} entries {weights!r}, "
            f"but there are {count} operators; give one weight per operator"
        )
    total = sum(weights)
    return tuple(w / total for w in weights)
