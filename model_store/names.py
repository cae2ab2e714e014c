"""Validation of model and file names: one path component, visible, portable characters."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from .errors import InvalidName

__all__ = [
    "MAX_NAME_LENGTH",
    "RESERVED_NAMES",
    "did_you_mean",
    "validate_filename",
    "validate_name",
]

MAX_NAME_LENGTH = 128
# Top-level folders of the store root that are not models.
RESERVED_NAMES = frozenset({"datasets"})

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidName(f"{what} must be a string, got {type(value).__name__}")
    if value == "":
        raise InvalidName(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidName(f"{what} {value[:40]!r}... is longer than {MAX_NAME_LENGTH} characters")
    if value.startswith("."):
        raise InvalidName(f"{what} {value!r} must not start with '.' (hidden or path traversal)")
    if "/" in value or "\\" in value:
        raise InvalidName(f"{what} {value!r} must not contain '/' or '\\' (one path component)")
    if _NAME_RE.fullmatch(value) is None:
        raise InvalidName(
            f"{what} {value!r} may only use letters, digits, '.', '_' and '-', "
            "and must start with a letter or digit"
        )
    return value


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`InvalidName`."""
    name = _check(name, "model name")
    if name in RESERVED_NAMES:
        raise InvalidName(f"model name {name!r} is reserved by the store; choose another")
    return name


def validate_filename(filename: object) -> str:
    """Return ``filename`` if it is a valid plot/file name inside a version folder."""
    return _check(filename, "file name")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to a mistyped ``word``, else ``""``.

    Close spellings count (difflib), and so do initials: ``learning_rate`` suggests ``lr``.
    """
    options = [str(c) for c in choices]
    initials = "".join(part[:1] for part in word.lower().split("_")) if "_" in word else None
    close = [c for c in options if initials and c.lower() == initials]
    close = close or difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
