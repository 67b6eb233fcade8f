"""The one error a user can cause by uploading a file.

User text quoted in its messages goes through `engine.text.shown` (re-exported here).
"""

from __future__ import annotations

from engine.text import readable_name, shown, shown_list

__all__ = ["IngestError", "readable_name", "shown", "shown_list"]


class IngestError(ValueError):
    """The file as a whole cannot be used; the message names the file and what is wrong."""
