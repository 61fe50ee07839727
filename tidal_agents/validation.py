"""Checks of configuration values.

Each check raises TidalConfigError with the message ``"<name>=<value>: allowed is
..."``, so a caller always learns which parameter was wrong and what it may be.
This module imports nothing of the package but its errors: every layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeGuard

from pydantic import ValidationError

from tidal_agents.errors import TidalConfigError


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """A real number (not a bool) that is finite as a float: NaN, +-inf and ints too
    large for a float (``math.isfinite(10**400)`` raises OverflowError) are not."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool (``True`` is an int to Python, not to a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_number(
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_none: bool = False,
) -> None:
    """TidalConfigError naming `name` unless `value` is a finite number within the
    bounds (each inclusive unless its ``*_open`` flag is set), or None if allowed."""
    _check_range(name, value, is_finite_number(value), "a finite number",
                 lo, hi, lo_open, hi_open, allow_none)


def check_int(
    name: str, value: Any, lo: int | None = None, hi: int | None = None, *, allow_none: bool = False
) -> None:
    """TidalConfigError naming `name` and the allowed range unless `value` is an int
    (not a bool) with lo <= value <= hi, or None if allowed."""
    _check_range(name, value, is_int(value), "an integer", lo, hi, False, False, allow_none)


def _check_range(name: str, value: Any, right_kind: bool, kind: str, lo: float | None,
                 hi: float | None, lo_open: bool, hi_open: bool, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if (
        right_kind
        and (lo is None or (value > lo if lo_open else value >= lo))
        and (hi is None or (value < hi if hi_open else value <= hi))
    ):
        return
    low, high = ("<" if lo_open else "<="), ("<" if hi_open else "<=")
    if lo is not None and hi is not None:
        allowed = f"{_bound(lo)} {low} {name} {high} {_bound(hi)} ({kind})"
    elif lo is not None:
        allowed = f"{kind} {'>' if lo_open else '>='} {_bound(lo)}"
    elif hi is not None:
        allowed = f"{kind} {high} {_bound(hi)}"
    else:
        allowed = kind
    raise TidalConfigError(
        f"{name}={value!r}: allowed is {'None or ' if allow_none else ''}{allowed}."
    )


def _bound(x: float) -> str:
    """1 -> '1', 0.5 -> '0.5', 2**63 - 1 in full (ints are exact)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """TidalConfigError naming `name` and listing `allowed` unless `value` is one."""
    options = tuple(allowed)
    # the type test keeps True from matching 1 and 1 from matching 1.0
    if not any(type(value) is type(option) and value == option for option in options):
        listed = ", ".join(repr(o) for o in options)
        raise TidalConfigError(f"{name}={value!r}: allowed are {listed}.")


def check_bool(name: str, value: Any) -> None:
    """TidalConfigError naming `name` unless `value` is True or False (not 0 / 1)."""
    if not isinstance(value, bool):
        raise TidalConfigError(f"{name}={value!r}: allowed is True or False.")


def config_error(owner: str, exc: ValidationError) -> TidalConfigError:
    """A pydantic ValidationError as a TidalConfigError: one entry per bad field,
    the field's name on its own line, then what is allowed and what was given."""
    lines = [f"{owner}: {exc.error_count()} invalid setting(s)"]
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or owner
        lines.append(where)
        given = "" if error["type"] == "extra_forbidden" else f" (got {error['input']!r})"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {message}{given}")
    return TidalConfigError("\n".join(lines))


def check_stop(stop: Any) -> tuple[str, ...]:
    """A stop string or a list / tuple of them, as a tuple; TidalConfigError otherwise."""
    items = (stop,) if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
        raise TidalConfigError(
            f"stop={stop!r}: allowed is a string or a list / tuple of non-empty strings."
        )
    return tuple(items)
