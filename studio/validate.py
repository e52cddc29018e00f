"""Checks for values people type or send through the API, with messages that name the field."""
from __future__ import annotations

MAX_ID = 2**63 - 1  # SQLite's INTEGER range


def parse_id(value, name: str = "image id") -> int:
    """A positive integer id from an int or a string; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        value = value.strip().lstrip("#")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not 1 <= n <= MAX_ID:
        raise ValueError(f"{name} must be between 1 and {MAX_ID}, got {n}")
    return n


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"
