"""Exception types raised by segprompt.

Every error a user can cause (a bad file, a bad prompt, a missing checkpoint, a wrong
setting) is a subclass of :class:`SegpromptError`, with a message that says what was wrong
and what to do. The CLI prints that message on one line and exits with status 2.
"""

from __future__ import annotations


class SegpromptError(Exception):
    """Base class of every error segprompt raises on purpose."""


class DataError(SegpromptError):
    """A dataset, image or mask could not be read or is inconsistent."""


class PromptError(SegpromptError, ValueError):
    """A prompt is malformed, out of the image, or of a kind the model does not accept."""


class WeightsError(SegpromptError):
    """A checkpoint is missing, corrupt, or does not match its expected checksum."""


class ConfigError(SegpromptError, ValueError):
    """A setting, name or option is unknown or inconsistent."""


class Cancelled(SegpromptError):
    """A long computation was stopped on request (its ``cancel`` callback returned True)."""


__all__ = ["SegpromptError", "DataError", "PromptError", "WeightsError", "ConfigError", "Cancelled"]
