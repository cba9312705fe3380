"""Argument checks of the modules at construction (the ops check again at each call): each
error names the argument and what was expected."""

from __future__ import annotations

import numbers
from typing import Any


def pos_int(v: Any, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v}")
    return int(v)


def odd(v: Any, name: str, what: str) -> int:
    v = pos_int(v, name)
    if v % 2 == 0:
        raise ValueError(f"{name}: expected an odd {what}, got {v}")
    return v


def pos_float(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < float(v) < float("inf"):
        raise ValueError(f"{name}: expected a positive finite number, got {v!r}")
    return float(v)


def choice(v: Any, name: str, options: tuple[str, ...]) -> str:
    if v not in options:
        raise ValueError(f"{name}: expected one of {options}, got {v!r}")
    return v


def flag(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected a bool, got {v!r}")
    return v
