"""A patient's record as users read and write it: :class:`Visit` and :class:`Patient`.

Both are small frozen values; a :class:`~ehrgen.data.cohort.Cohort` stores many of them
columnar and makes them on demand.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ehrgen.errors import SchemaError

__all__ = [
    "PLACEHOLDER_EPOCH",
    "Patient",
    "Visit",
    "check_times",
    "numeric_results",
    "placeholder_time",
]

PLACEHOLDER_EPOCH = datetime(2000, 1, 1)


@dataclass(frozen=True)
class Visit:
    """One encounter: the codes of each modality, and when it happened.

    Codes are de-duplicated within a modality (first occurrence kept) and empty
    modalities are dropped, so two visits with the same content compare equal.
    ``values`` holds the numeric result of the codes that have one (a lab's value, in
    the unit its code names): modality -> {code: value}, each code one of the visit's.

    Example:
        >>> v = Visit({"diagnosis": ["4019", "25000", "4019"], "drug": []})
        >>> v.events
        {'diagnosis': ('4019', '25000')}
        >>> lab = Visit({"lab": ["K//mEq/L"]}, values={"lab": {"K//mEq/L": 4.1}})
        >>> lab.values
        {'lab': {'K//mEq/L': 4.1}}
    """

    events: Mapping[str, tuple[str, ...]]
    time: datetime | None = None
    values: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.events, Mapping):
            raise SchemaError(
                f"Visit.events must be a mapping modality -> codes. "
                f"Got {type(self.events).__name__} instead."
            )
        normalised: dict[str, tuple[str, ...]] = {}
        for modality, codes in self.events.items():
            if isinstance(codes, str):
                raise SchemaError(
                    f"The codes of modality {modality!r} must be a sequence of "
                    f"strings, "
                    f"not one string. Got {codes!r}; wrap it in a list."
                )
            unique = tuple(dict.fromkeys(codes))
            for code in unique:
                if not isinstance(code, str) or not code:
                    raise SchemaError(
                        f"Codes must be non-empty strings. Got {code!r} in modality "
                        f"{modality!r}."
                    )
            if unique:
                normalised[modality] = unique
        object.__setattr__(self, "events", normalised)
        object.__setattr__(self, "values", self._checked_values())
        if self.time is not None and not isinstance(self.time, datetime):
            raise SchemaError(
                f"Visit.time must be a datetime or None. Got {self.time!r} instead."
            )

    def _checked_values(self) -> dict[str, dict[str, float]]:
        """``values`` as plain dicts of floats, in the events' order, NaN left out."""
        if not isinstance(self.values, Mapping):
            raise SchemaError(
                f"Visit.values must be a mapping modality -> {{code: value}}. Got "
                f"{type(self.values).__name__} instead."
            )
        checked = {
            m: numeric_results(by_code, self.events.get(m, ()), f"Visit {m!r} values")
            for m, by_code in self.values.items()
        }
        return {
            m: {c: checked[m][c] for c in self.events[m] if c in checked[m]}
            for m in self.events
            if checked.get(m)
        }

    def codes(self, modality: str) -> tuple[str, ...]:
        """The codes of one modality (empty when the visit has none)."""
        return self.events.get(modality, ())

    @property
    def n_codes(self) -> int:
        """The number of codes over all modalities."""
        return sum(len(codes) for codes in self.events.values())


@dataclass(frozen=True)
class Patient:
    """A patient: an id, baseline features and visits ordered by time.

    ``static`` holds the known baseline features only: a missing feature is absent.
    Categorical values are strings, numerical values floats.
    """

    patient_id: str
    static: Mapping[str, str | float] = field(default_factory=dict)
    visits: tuple[Visit, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "patient_id", str(self.patient_id))
        object.__setattr__(self, "static", dict(self.static))
        object.__setattr__(self, "visits", tuple(self.visits))


def check_times(times: list[datetime | None], where: str) -> None:
    known = [t for t in times if t is not None]
    if known and len(known) != len(times):
        raise SchemaError(
            f"{where}, field 'time': some visits have times and others do not."
        )
    for before, after in zip(known, known[1:]):
        if not after > before:
            raise SchemaError(
                f"{where}, field 'time': visit times must strictly increase; got "
                f"{before.isoformat()} then {after.isoformat()}. Merge visits that "
                f"share "
                f"a time, or order them."
            )


def placeholder_time(visit_index: int) -> datetime:
    """The placeholder time of a patient's ``visit_index``-th visit."""
    return PLACEHOLDER_EPOCH + timedelta(days=visit_index)


def numeric_results(
    results: Mapping[str, object], codes: Collection[str], where: str
) -> dict[str, float]:
    """The numeric values of some of a visit's codes, checked: each code one of
    ``codes``, each value a finite number (NaN, "no value", is left out)."""
    checked: dict[str, float] = {}
    for code, value in results.items():
        if code not in codes:
            raise SchemaError(
                f"{where}: code {code!r} has a value but is not among the visit's "
                f"codes of that modality."
            )
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SchemaError(
                f"{where}: the value of code {code!r} must be a number. Got {value!r}."
            ) from None
        if math.isinf(number):
            raise SchemaError(
                f"{where}: the value of code {code!r} must be finite. Got {value!r}."
            )
        if number == number:
            checked[code] = number
    return checked
