"""Option checks shared by classify's entry points: one wording for "unknown X" and "X must be at least N".

Kept in classify for now; featurize has its own inline checks until a shared ``featurize.common.options`` exists.
"""

from __future__ import annotations

from typing import Iterable, TypeVar

from featurize.errors import AlzmriError

T = TypeVar("T")


def choose(name: str, value: T, valid: Iterable[T]) -> T:
    """``value`` when it is one of ``valid``, else AlzmriError (exit 2) listing the choices."""
    valid = tuple(valid)
    if value not in valid:
        raise AlzmriError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, valid))}")
    return value


def at_least(name: str, value: int, low: int) -> int:
    """``value`` when it is at least ``low``, else AlzmriError (exit 2)."""
    if value < low:
        raise AlzmriError(f"{name} must be at least {low}, not {value}")
    return value
