"""'Did you mean ...?': the one helper that finds what a mistyped name most likely meant.

Used by the fault rules (operation, ResponseCode, action) and by ``ucsproxy log --operation``.
Only the standard library, so a command that merely reads the log stays quick to start.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def near_miss(name: str, choices: Iterable[str], cutoff: float = 0.8) -> str | None:
    """The choice a mistyped ``name`` most likely meant, or None: the same name in another letter
    case first, else the closest spelling (difflib, ignoring case)."""
    by_lower = {choice.lower(): choice for choice in choices}
    key = name.strip().lower()
    if key in by_lower:
        return by_lower[key]
    if len(key) > 200:  # difflib is quadratic; nobody mistypes a name this long
        return None
    close = difflib.get_close_matches(key, sorted(by_lower), n=1, cutoff=cutoff)
    return by_lower[close[0]] if close else None
