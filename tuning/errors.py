"""Typed errors a user can cause in the tuning package: not enough data to train on, a
training run that failed or was cancelled, an unknown version to roll back to. Their
messages are shown as they are in the UI and CLI."""

from __future__ import annotations


class TuningUserError(Exception):
    """Base for every error in `tuning` that the user can act on."""


class NotEnoughDataError(TuningUserError):
    pass


class TrainingFailedError(TuningUserError):
    pass


class TrainingBusyError(TuningUserError):
    """Another training run holds this data root's training lock (`tuning.runlock`)."""
