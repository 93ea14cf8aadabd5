"""Build a :class:`~ehrgen.data.cohort.Cohort` patient by patient (readers, demo)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from ehrgen.data.cohort import Cohort
from ehrgen.data.records import PLACEHOLDER_EPOCH, check_times, numeric_results
from ehrgen.data.schema import CohortSchema
from ehrgen.errors import SchemaError

__all__ = ["CohortBuilder"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- builder


class CohortBuilder:
    """Build a :class:`Cohort` patient by patient, interning code strings as it goes.

    Readers and the demo simulator use it; it validates every patient and names the
    patient and the field in its errors.

    Example:
        >>> b = CohortBuilder(CohortSchema(modalities=("diagnosis",)))
        >>> b.add("7", {}, [(None, {"diagnosis": ["4019"]})])
        >>> len(b.build())
        1
    """

    def __init__(self, schema: CohortSchema, *, source: str = "input") -> None:
        self.schema = schema
        self.source = source
        self._labels: dict[str, list[float]] = {}
        self._modality_index = {m: i for i, m in enumerate(schema.modalities)}
        self._category_index = {
            name: {c: i for i, c in enumerate(cats)}
            for name, cats in schema.categorical.items()
        }
        self._codes: dict[tuple[int, str], int] = {}
        self._patient_ids: list[str] = []
        self._seen_ids: set[str] = set()
        self._static: dict[str, list[float]] = {name: [] for name in schema.features}
        self._visit_counts: list[int] = []
        self._visit_times: list[datetime | None] = []
        self._event_counts: list[int] = []
        self._event_codes: list[int] = []
        self._event_values: list[float] = []
        self._has_values = False
        self._dropped_patients = 0
        self._dropped_visits = 0

    def add(
        self,
        patient_id: str,
        static: Mapping[str, str | float | None],
        visits: Sequence[tuple],
        labels: Mapping[str, float] | None = None,
    ) -> None:
        """Add one patient: its baseline features and ``(time, {modality: codes})``
        visits in time order, or ``(time, codes, {modality: {code: value}})`` for
        codes with a numeric value. Empty visits are dropped; a patient left with no
        visit is dropped (counted, and reported once by :meth:`build`)."""
        patient_id = str(patient_id)
        where = f"{self.source}: patient {patient_id!r}"
        if patient_id in self._seen_ids:
            raise SchemaError(f"{where}: duplicate patient id.")
        static_row = self._static_row(static, where)
        codes, numbers, counts, times = [], [], [], []
        for time, events, *rest in visits:
            results = rest[0] if rest else {}
            n_before = len(codes)
            for modality in self.schema.modalities:
                values = events.get(modality)
                if values:
                    m = self._modality_index[modality]
                    known = numeric_results(
                        results.get(modality, {}),
                        set(values),
                        f"{where}, field 'value'",
                    )
                    for value in dict.fromkeys(values):
                        codes.append(self._intern(m, value, where))
                        numbers.append(known.get(value, np.nan))
            unknown = set(events) - self._modality_index.keys()
            if unknown:
                raise SchemaError(
                    f"{where}, field 'modality': unknown modality "
                    f"{sorted(unknown)[0]!r};"
                    f" the schema has {list(self.schema.modalities)}."
                )
            if len(codes) == n_before:
                self._dropped_visits += 1
                continue
            counts.append(len(codes) - n_before)
            times.append(time)
        if not counts:
            self._dropped_patients += 1
            return
        check_times(times, where)
        self._seen_ids.add(patient_id)
        self._patient_ids.append(patient_id)
        for name, value in static_row.items():
            self._static[name].append(value)
        for name in dict.fromkeys([*self._labels, *(labels or {})]):
            column = self._labels.setdefault(
                name, [np.nan] * (len(self._patient_ids) - 1)
            )
            column.append(np.nan if labels is None else labels.get(name, np.nan))
        self._visit_counts.append(len(counts))
        self._visit_times.extend(times)
        self._event_counts.extend(counts)
        self._event_codes.extend(codes)
        self._event_values.extend(numbers)
        self._has_values = self._has_values or any(n == n for n in numbers)

    def _intern(self, modality: int, value: str, where: str) -> int:
        key = (modality, value)
        index = self._codes.get(key)
        if index is None:
            if not isinstance(value, str) or not value:
                raise SchemaError(
                    f"{where}, field 'code': codes must be non-empty strings. "
                    f"Got {value!r}."
                )
            index = self._codes[key] = len(self._codes)
        return index

    def _static_row(
        self, static: Mapping[str, str | float | None], where: str
    ) -> dict[str, float]:
        unknown = set(static) - set(self.schema.features)
        if unknown:
            raise SchemaError(
                f"{where}, field {sorted(unknown)[0]!r}: not a feature of the schema "
                f"(features: {list(self.schema.features)})."
            )
        row: dict[str, float] = {}
        for name, categories in self._category_index.items():
            value = static.get(name)
            if value is None:
                row[name] = -1
            elif str(value) in categories:
                row[name] = categories[str(value)]
            else:
                raise SchemaError(
                    f"{where}, field {name!r}: unknown category {value!r}; "
                    f"expected one "
                    f"of {list(categories)}."
                )
        for name in self.schema.numerical:
            value = static.get(name)
            try:
                row[name] = np.nan if value is None else float(value)
            except (TypeError, ValueError):
                raise SchemaError(
                    f"{where}, field {name!r}: expected a number. Got {value!r}."
                ) from None
        return row

    def build(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        times_are_placeholders: bool = False,
    ) -> Cohort:
        """The cohort of every patient added so far.

        If no visit has a time, visits get placeholder times one day apart and the
        cohort is marked ``times_are_placeholders``; mixing visits with and without
        times is an error.
        """
        if self._dropped_patients or self._dropped_visits:
            logger.warning(
                "%s: dropped %d visit(s) with no code and %d patient(s) with no visit.",
                self.source,
                self._dropped_visits,
                self._dropped_patients,
            )
        visit_counts = np.asarray(self._visit_counts, dtype=np.int64)
        visit_offsets = np.concatenate([[0], np.cumsum(visit_counts)])
        has_time = [t is not None for t in self._visit_times]
        if has_time and not any(has_time):
            times_are_placeholders = True
            within = np.arange(len(has_time)) - np.repeat(
                visit_offsets[:-1], visit_counts
            )
            times = np.datetime64(PLACEHOLDER_EPOCH, "us") + within.astype(
                "timedelta64[D]"
            )
        elif not all(has_time):
            first = int(np.searchsorted(visit_offsets, has_time.index(False), "right"))
            raise SchemaError(
                f"{self.source}: patient {self._patient_ids[first - 1]!r}, field "
                f"'time': some visits have times and others do not; give every visit a "
                f"time, or none (placeholders are then used)."
            )
        else:
            times = np.array(self._visit_times, dtype="datetime64[us]")
        code_items = sorted(self._codes.items(), key=lambda kv: kv[1])
        labels = {k: np.asarray(v, dtype=np.float32) for k, v in self._labels.items()}
        return Cohort(
            schema=self.schema,
            patient_ids=np.array(self._patient_ids, dtype=object),
            static={k: np.asarray(v) for k, v in self._static.items()},
            visit_offsets=visit_offsets,
            visit_times=times.reshape(-1),
            event_offsets=np.concatenate([[0], np.cumsum(self._event_counts)]),
            event_codes=np.asarray(self._event_codes, dtype=np.int32),
            event_values=np.asarray(self._event_values, dtype=np.float32)
            if self._has_values
            else None,
            code_values=np.array([value for (_, value), _ in code_items], dtype=object),
            code_modality=np.array([m for (m, _), _ in code_items], dtype=np.int8),
            times_are_placeholders=times_are_placeholders,
            labels=labels,
            metadata=metadata,
        )
