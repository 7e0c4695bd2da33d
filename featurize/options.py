"""Option validation, written once: every closed set of choices and every lower bound is checked here.

The CLI lists the same choices in ``--help``; the library checks them again at its public entry points, because it
is used without the CLI too. Both say the same one line.
"""

from __future__ import annotations

from collections.abc import Iterable

from featurize.errors import AlzmriError


def choose(name: str, value: str, valid: Iterable[str], *, error: type[AlzmriError] = AlzmriError) -> str:
    """``value`` when it is one of ``valid``; else one line naming the option and every valid choice."""
    choices = list(valid)
    if value not in choices:
        raise error(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
    return value


def at_least(name: str, value: int, low: int, *, error: type[AlzmriError] = AlzmriError) -> int:
    """``value`` when it is an integer >= ``low``; else one line naming the option and the bound."""
    try:
        got = int(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be an integer of at least {low}, not {value!r}") from None
    if got < low:
        raise error(f"{name} must be at least {low}, not {value}")
    return got
