"""The user-facing error types every layer may raise.

They live at the bottom of the package so that infrastructure (storage checks,
tracking, study files, tasks) can raise and catch them without importing the
optimizer package.  The CLI turns each into a one-line message and exit code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class SettingsError(ValueError):
    """A user's config (optimizer, task, study, storage or tracking) is wrong; the
    message names the field, the value and what is allowed."""


class DataMissingError(RuntimeError):
    """A task's data files are not where the task looks; the message says how to get them."""


class UntrustedFileError(ValueError):
    """A data file holds something its format never does (e.g. code in a pickle)."""


#: the most characters of a value an error message shows
SHOWN_VALUE_CHARS = 80


def brief(value: Any, limit: int = SHOWN_VALUE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with what was left out named
    (``[1, 2, ... (5,000 items, 24,890 characters)]``): an error message never
    echoes a whole value, however large a file made it."""
    shown = repr(value)
    if len(shown) <= limit:
        return shown
    size = f"{len(value):,} items, " if isinstance(value, list | tuple | dict | set) else ""
    return f"{shown[:limit]}... ({size}{len(shown):,} characters)"


def did_you_mean(given: Any, allowed: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the allowed name closest to ``given`` (difflib), else ``""``."""
    close = difflib.get_close_matches(str(given), list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_known(keys: Iterable[Any], allowed: Iterable[str], where: str, kind: str = "key(s)") -> None:
    """Raise :class:`SettingsError` naming the keys not in ``allowed``, the closest
    allowed name to each, and the allowed names."""
    allowed = list(allowed)
    unknown = sorted({str(k) for k in keys} - set(allowed))
    if unknown:
        named = ", ".join(f"{k}{did_you_mean(k, allowed)}" for k in unknown)
        raise SettingsError(f"{where}: unknown {kind} {named}; allowed: {', '.join(allowed)}")
