"""Errors cnnkit raises on bad input.

Every error a user can cause derives from :class:`CnnkitError`; the CLI turns any of them into one line
on stderr and exit code 2. Messages say what was wrong, where, and what would be right.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnkitError(Exception):
    """Base class of every error caused by a user's input (spec, config, data, model name)."""


class SpecError(CnnkitError, ValueError):
    """A model spec string (arrow notation) or a shape spec cannot be parsed or built."""


class ConfigError(CnnkitError, ValueError):
    """A configuration key, value, model name or keyword argument is wrong."""


class DataError(CnnkitError, ValueError):
    """A data file is missing, unreadable, corrupt, or holds values out of range."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates that look most like ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Format a short hint naming the closest candidates, or an empty string if none is close."""
    near = closest(name, candidates)
    return f"; did you mean {', '.join(repr(c) for c in near)}?" if near else ""
