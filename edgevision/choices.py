"""The one "unknown value" error: `Unknown <kind> 'x'; choose one of a, b, c (did you mean 'a'?)`."""

from __future__ import annotations

import difflib


def choice_error(kind: str, value: object, choices, error: type[Exception] = ValueError) -> Exception:
    """The error to raise for `value`, which is not one of `choices`; names them and the closest one."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return error(f"Unknown {kind} {value!r}; choose one of {', '.join(choices)}{hint}")
