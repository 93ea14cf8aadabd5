"""The schema of a cohort: its modalities and baseline features."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ehrgen.errors import SchemaError, did_you_mean

if TYPE_CHECKING:
    from ehrgen.data.records import Patient

__all__ = ["DEFAULT_MODALITIES", "CohortSchema"]

DEFAULT_MODALITIES: tuple[str, ...] = ("diagnosis", "procedure", "drug", "lab")
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class CohortSchema:
    """What a cohort contains: its modalities (in order) and its baseline features.

    Args:
        modalities: modality names, lower-case identifiers, in the order visits are
            serialised.
        categorical: categorical features, each with its categories (strings).
        numerical: numerical features.

    Example:
        >>> schema = CohortSchema(
        ...     categorical={"gender": ("F", "M")}, numerical=("age",)
        ... )
        >>> schema.features
        ('gender', 'age')
    """

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    categorical: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    numerical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(
            self,
            "categorical",
            {str(k): tuple(str(c) for c in v) for k, v in self.categorical.items()},
        )
        object.__setattr__(self, "numerical", tuple(self.numerical))
        if not self.modalities:
            raise SchemaError("A cohort schema needs at least one modality. Got none.")
        for name in (*self.modalities, *self.features):
            if not _NAME_PATTERN.match(name):
                raise SchemaError(
                    f"Modality and feature names must be lower-case identifiers "
                    f"(letters, digits, '_'). Got {name!r} instead."
                )
        for kind, names in (("modality", self.modalities), ("feature", self.features)):
            if len(set(names)) != len(names):
                raise SchemaError(f"Each {kind} name must be unique. Got {names}.")
        for feature, categories in self.categorical.items():
            if len(set(categories)) != len(categories):
                raise SchemaError(
                    f"The categories of feature {feature!r} must be unique. "
                    f"Got {categories}."
                )

    @property
    def features(self) -> tuple[str, ...]:
        """All baseline features: categorical first, then numerical."""
        return (*self.categorical, *self.numerical)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see :meth:`from_dict`)."""
        return {
            "modalities": list(self.modalities),
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            "numerical": list(self.numerical),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CohortSchema:
        """Build a schema from :meth:`to_dict`'s output; unknown keys are an error."""
        known = {"modalities", "categorical", "numerical"}
        for key in data:
            if key not in known:
                raise SchemaError(
                    f"Unknown key {key!r} in a cohort schema; expected one of "
                    f"{sorted(known)}.{did_you_mean(key, known)}"
                )
        return cls(
            modalities=tuple(data.get("modalities", DEFAULT_MODALITIES)),
            categorical={k: tuple(v) for k, v in data.get("categorical", {}).items()},
            numerical=tuple(data.get("numerical", ())),
        )

    @classmethod
    def infer(
        cls, patients: Iterable[Patient], modalities: Sequence[str] | None = None
    ) -> CohortSchema:
        """Infer a schema from patients: categories sorted, modalities in
        :data:`DEFAULT_MODALITIES` order first, then in order of appearance."""
        seen_modalities: dict[str, None] = {}
        categories: dict[str, set[str]] = {}
        numerical: dict[str, None] = {}
        for patient in patients:
            for visit in patient.visits:
                seen_modalities.update(dict.fromkeys(visit.events))
            for name, value in patient.static.items():
                if value is None:
                    continue
                if isinstance(value, str):
                    categories.setdefault(name, set()).add(value)
                else:
                    numerical[name] = None
        mixed = set(categories) & set(numerical)
        if mixed:
            raise SchemaError(
                f"Feature {sorted(mixed)[0]!r} has both string and numerical values; a "
                f"feature is either categorical (strings) or numerical (floats)."
            )
        if modalities is None:
            known = [m for m in DEFAULT_MODALITIES if m in seen_modalities]
            modalities = known + [m for m in seen_modalities if m not in known]
            modalities = modalities or list(DEFAULT_MODALITIES)
        return cls(
            modalities=tuple(modalities),
            categorical={k: tuple(sorted(v)) for k, v in sorted(categories.items())},
            numerical=tuple(sorted(numerical)),
        )
