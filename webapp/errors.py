"""Typed errors of the application layer, and `USER_ERRORS`: every error class across
the packages that is the user's doing. The UI and CLI catch exactly these and show their
message; anything else is a bug and keeps its traceback in the log."""

from __future__ import annotations

from memory.errors import MemoryUserError
from personas.errors import EngineUnavailableError, PersonaUserError
from tuning.errors import TuningUserError


class AppUserError(Exception):
    """Base for user errors raised by the webapp layer itself."""


class SettingsError(AppUserError):
    """config.toml or an ALTEREGO_* variable is invalid or unknown."""


class ChatInputError(AppUserError):
    """The chat message is empty or too long."""


# EngineUnavailableError (an inference server that is down or failing) is a
# PersonaUserError already; it is named so that no refactoring of that base drops it.
USER_ERRORS: tuple[type[Exception], ...] = (
    AppUserError, MemoryUserError, PersonaUserError, TuningUserError, EngineUnavailableError,
)
