"""Config flags as booleans: the bundle CLI passes ``--resume true`` as the string "true"."""

from __future__ import annotations


def truthy(value: bool | str) -> bool:
    """``value`` as a bool: strings "1", "true", "yes", "on" (any case) are True, other strings False."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
