"""The one error a user can cause by uploading a file.

User text quoted in its messages goes through `engine.text.shown`, so each message is one
readable line of bounded length.
"""


class IngestError(ValueError):
    """The file as a whole cannot be used; the message names the file and what is wrong."""
