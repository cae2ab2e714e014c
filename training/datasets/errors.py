"""The one exception every data-set loader raises."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A data set could not be loaded; the message says what is wrong and what to fix."""
