"""Exceptions raised by simai_core; each message says what to do about it."""

from __future__ import annotations


class SimaiError(Exception):
    """Base class of every error simai_core raises on purpose."""


class UnknownBackendError(SimaiError, KeyError):
    """A backend name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BackendUnavailableError(SimaiError):
    """A backend whose optional dependency (package or binary) is missing."""


class StagingTimeoutError(SimaiError, TimeoutError):
    """A wait on the staging area passed its deadline."""


class StagingFullError(SimaiError):
    """A value does not fit in the staging area."""


class ProfileError(SimaiError):
    """A machine profile that cannot be found or does not validate."""
