"""What every configuration dataclass shares: JSON round trips and argument checks.

Configs are frozen, keyword-only dataclasses validated in ``__post_init__``;
``from_dict`` rejects unknown keys with a did-you-mean hint, so a typo in a saved or
hand-written config never passes silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from ehrgen.errors import ConfigError, did_you_mean

__all__ = ["ConfigMixin", "check", "check_positive_ints"]

T = TypeVar("T", bound="ConfigMixin")


class ConfigMixin:
    """``to_dict`` / ``from_dict`` for a frozen dataclass config."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """Build the config from :meth:`to_dict`'s output; unknown keys are an error."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"Unknown key {key!r} for {cls.__name__}; expected keys among "
                    f"{names}.{did_you_mean(key, names)}"
                )
        return cls(**data)

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigMixin):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


def check(ok: bool, owner: str, name: str, expected: str, got: Any) -> None:
    """Raise the standard message when ``ok`` is false.

    Example:
        >>> check(3 > 0, "TrainingConfig", "epochs", "a positive integer", 3)
    """
    if not ok:
        raise ConfigError(
            f"The {name!r} parameter of {owner} must be {expected}. "
            f"Got {got!r} instead."
        )


def check_positive_ints(config: Any, *fields: str) -> None:
    """Check that each named field of ``config`` is an int above zero."""
    for field in fields:
        value = getattr(config, field)
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        check(ok, type(config).__name__, field, "a positive int", value)
