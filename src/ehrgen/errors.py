"""The exceptions ehrgen raises.

Every error the library raises on purpose is an :class:`EhrgenError`, so a caller (and
the CLI) can tell our diagnoses from bugs. The subclasses also subclass the built-in
exception a Python user would expect, so ``except ValueError`` keeps working.

Messages follow one template: what is wrong, what was expected, what was found,
and how to fix it; readers also name the file, row or patient and the field.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "EhrgenError",
    "NotFittedError",
    "SchemaError",
    "UnsupportedModeError",
    "did_you_mean",
]


class EhrgenError(Exception):
    """Base class of every error ehrgen raises on purpose."""


class ConfigError(EhrgenError, ValueError):
    """A configuration or argument has an invalid value."""


class SchemaError(EhrgenError, ValueError):
    """Input data do not match the expected format (file, row or patient, field)."""


class NotFittedError(EhrgenError, ValueError, AttributeError):
    """An estimator was used before ``fit`` (or ``from_pretrained``)."""


class UnsupportedModeError(EhrgenError, NotImplementedError):
    """A model was asked for a generation mode it cannot do (e.g. a GAN baseline
    asked to impute a modality); the message names the model and what it
    supports."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A " Did you mean 'x'?" hint for a misspelt name, or "" when nothing is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
