"""Checks of the values a user passes in: each failure is a ValueError that names the value and
what was expected."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def check_number(value: Any, name: str, *, minimum: float | None = None,
                 maximum: float | None = None, exclusive_minimum: bool = False,
                 integer: bool = False) -> None:
    """``value`` must be a finite real number (an integer where ``integer``) with
    ``minimum <= value`` (``<`` where ``exclusive_minimum``) and ``value <= maximum``."""
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise ValueError(f"{name} must be {'>' if exclusive_minimum else '>='} {minimum}, "
                         f"got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")


def check_bool(value: Any, name: str) -> None:
    """``value`` must be True or False (not a string such as "no")."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def check_choice(value: Any, name: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
