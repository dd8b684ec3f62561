"""Errors raised for bad data.

Both are ``ValueError`` subclasses so callers that already catch ``ValueError`` keep working; the
message always names the offending file and says how to fix it.
"""
from __future__ import annotations

import os


class DatasetError(ValueError):
    """A dataset cannot be used as it is: the message names the file and the fix."""


class ImageReadError(DatasetError):
    """An image or mask file cannot be decoded (missing, empty, truncated or not an image)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
