"""Typed errors a user can cause in the personas package: an unknown persona name, a
model file that is missing or not a GGUF, a broken persona definition, an engine
setting that cannot work, an inference server that cannot be reached. The messages are
shown as they are in the UI and CLI."""

from __future__ import annotations


class PersonaUserError(Exception):
    """Base for every error in `personas` that is the user's input, not a bug."""


class UnknownPersonaError(PersonaUserError):
    def __init__(self, name: str, valid: list[str]):
        self.name, self.valid = name, valid
        super().__init__(f"Unknown persona '{name}'. Valid personas: {', '.join(valid)}")


class PersonaDefinitionError(PersonaUserError):
    """A persona YAML file is malformed or misses a required field."""


class ModelNotFoundError(PersonaUserError):
    """The configured base model file does not exist or cannot be loaded."""


class EngineConfigError(PersonaUserError):
    """The engine settings cannot work (an unknown backend, a server backend without a URL)."""


class EngineUnavailableError(PersonaUserError):
    """The external inference server is unreachable, timed out or answered with an error."""
