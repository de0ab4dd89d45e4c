"""Errors for bad input. Each message names the bad value and what would be valid."""

from __future__ import annotations


class PeftlabError(ValueError):
    """Base class of the errors ``run_glue.py`` reports as a one-line message instead of a traceback."""


class ConfigError(PeftlabError):
    """A bad argument value or combination."""


class DataError(PeftlabError):
    """A problem with the input data: a missing file, a malformed row, an unknown label."""
