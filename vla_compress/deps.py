"""Optional dependencies: whether one is installed, without importing it."""

from __future__ import annotations

import importlib.util


def installed(package: str) -> bool:
    """True when `package` (dotted names allowed, as "optimum.quanto") can be imported."""
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        return False
