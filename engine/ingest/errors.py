"""The one error a user can cause by uploading a file."""

from __future__ import annotations


class IngestError(ValueError):
    """The file as a whole cannot be used; the message names the file and what is wrong."""
