"""Typed errors a user can cause in the memory package (bad files, unknown formats, a
store that cannot be reached). Each carries a message fit to show as is in the UI and
CLI; the webapp catches `MemoryUserError` and never shows a traceback for it."""

from __future__ import annotations


class MemoryUserError(Exception):
    """Base for every error in `memory` that is the user's input, not a bug."""


class UnsupportedFormatError(MemoryUserError):
    """The file is not in any format alterego can import."""


class MalformedFileError(MemoryUserError):
    """The file claims a known format but its content is broken (bad JSON, no messages)."""


class StoreUnavailableError(MemoryUserError):
    """The scene store (local ChromaDB or a Chroma server) cannot be reached."""


class JournalError(MemoryUserError):
    """The journal database cannot be opened or is newer than this app understands."""
