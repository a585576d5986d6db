"""Errors a user can cause. The CLI prints them in one line and exits with code 2."""
from __future__ import annotations

import difflib
from typing import Any, Iterable


class SearchpruneError(Exception):
    """A user error (bad file, field, name or argument): shown without a traceback."""


class ConfigError(SearchpruneError, ValueError):
    """A bad value in a configuration file or argument.

    The message names the source (a file path or ``argument``), the field path and the value.
    """

    def __init__(self, source: str, field: str, value: Any, problem: str, hint: str | None = None):
        self.source, self.field, self.value, self.problem = source, field, value, problem
        msg = f"{source}: {field} = {value!r}: {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class UnknownNameError(SearchpruneError, KeyError):
    """An unknown profile, space, study or metric name."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        msg = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(str(name), known, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        if known:
            msg += f"; known: {', '.join(known)}"
        self.kind, self.name, self.known = kind, name, known
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return self.args[0]


class UnsupportedOpError(SearchpruneError):
    """The cost model met an operation it does not know; it never drops one silently."""


def suggest(name: str, valid: Iterable[str]) -> str | None:
    """'did you mean X?' for the closest valid name, or None."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f"did you mean {close[0]!r}?" if close else None
