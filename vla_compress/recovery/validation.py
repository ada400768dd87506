"""Checks of numeric config fields shared by `SFTConfig` and `PPOConfig` (ValueError naming the field)."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def require_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    """`value` must be an int (not a bool) >= `minimum`, or None when `optional`."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def require_number(name: str, value: Any, minimum: float = 0.0, inclusive: bool = False, allow_inf: bool = False,
                   optional: bool = False) -> None:
    """`value` must be a real number above `minimum` (or equal to it when `inclusive`); never nan, inf only
    with `allow_inf`; None only when `optional`."""
    if optional and value is None:
        return
    number = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)
    if not (number and (allow_inf or math.isfinite(value)) and (value >= minimum if inclusive else value > minimum)):
        kind = "a number" if allow_inf else "a finite number"
        allowed = f"{kind} {'>=' if inclusive else '>'} {minimum:g}" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
