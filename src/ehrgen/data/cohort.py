"""The data model: visits, patients, the schema of a cohort, and the cohort itself.

A :class:`Patient` is a small frozen value: an id, baseline (static) features and visits
in time order; a :class:`Visit` maps each modality (diagnosis, procedure, drug,
lab, ...) to its codes, a *set* kept in first-seen order. These objects are what
users read and write by hand.

A :class:`Cohort` stores many patients columnar, in flat numpy arrays with offsets (the
layout of a compressed sparse row matrix), so a MIMIC-IV-sized cohort (300k patients,
100M events) costs about 4 bytes per event plus the distinct code strings once. Patients
are materialised only when asked for (``cohort[i]``, iteration).

Conventions, relied on by every reader and writer:

* codes within a modality of one visit are unique (duplicates are dropped, order kept);
* visits with no code are dropped, and so are patients with no visit (one warning counts
  them);
* visit times within a patient strictly increase. A cohort whose source has no
  times gets placeholder times one day apart that keep the visits' order, and says so in
  ``times_are_placeholders`` so that later stages never learn visit gaps from them;
* numerical static features are kept at float32 precision, as MEDS stores them;
* events of a visit are stored grouped by modality, in the schema's modality order.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from ehrgen.data.records import Patient, Visit
from ehrgen.data.schema import CohortSchema
from ehrgen.errors import SchemaError

__all__ = ["Cohort", "CohortStats", "Distribution"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class Distribution:
    """Summary of a distribution of counts."""

    mean: float
    std: float
    min: float
    p25: float
    median: float
    p75: float
    p90: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> Distribution:
        """Summarise ``values`` (all zeros when empty)."""
        if values.size == 0:
            return cls(*([0.0] * 8))
        q = np.quantile(values, [0.25, 0.5, 0.75, 0.9])
        return cls(
            mean=float(values.mean()),
            std=float(values.std()),
            min=float(values.min()),
            p25=float(q[0]),
            median=float(q[1]),
            p75=float(q[2]),
            p90=float(q[3]),
            max=float(values.max()),
        )


@dataclass(frozen=True)
class CohortStats:
    """What :meth:`Cohort.stats` reports.

    ``codes_per_visit`` counts, for each modality, its codes in every visit (zeros
    included); ``visits_with_modality`` is the share of visits where it appears.
    """

    n_patients: int
    n_visits: int
    n_events: int
    vocabulary: dict[str, int]
    visits_per_patient: Distribution
    codes_per_visit: dict[str, Distribution]
    visits_with_modality: dict[str, float]
    categorical: dict[str, dict[str, int]]
    numerical: dict[str, Distribution]
    times_are_placeholders: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""

        def plain(value: Any) -> Any:
            if isinstance(value, Distribution):
                return dict(value.__dict__)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        return {k: plain(v) for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------- cohort


class Cohort:
    """Patients stored columnar, with their schema.

    Build one with :meth:`from_patients` or :class:`CohortBuilder`; readers such as
    :func:`ehrgen.data.read_meds` return one. ``len(cohort)``, ``cohort[i]`` (a
    :class:`Patient`), ``cohort[a:b]`` or ``cohort[[i, j]]`` (a sub-cohort) and
    iteration work as for a sequence.

    Attributes (read-only numpy arrays):
        patient_ids: (P,) object array of str.
        static: feature -> (P,) array; categorical features as int32 category indices
            (-1 when missing), numerical ones as float32 (NaN when missing).
        visit_offsets: (P+1,) int64; patient p's visits are
            ``visit_offsets[p]:visit_offsets[p+1]``.
        visit_times: (V,) datetime64[us].
        event_offsets: (V+1,) int64; visit v's events are
            ``event_offsets[v]:event_offsets[v+1]``.
        event_codes: (E,) int32 indices into ``code_values`` / ``code_modality``.
        event_values: (E,) float32 numeric value of each event (a lab's result), NaN
            where it has none; None when no event has one.
        code_values: (C,) object array of code strings.
        code_modality: (C,) int8 index of each code's modality in ``schema.modalities``.
        code_units: (C,) object array, the unit of each code's values (``"mg/dL"``;
            None for a code without one); None when no code has one. A code keeps
            one unit: readers take the most frequent among its results.
        labels: name -> (P,) float32 patient-level outcomes (not features: a model is
            never conditioned on them), NaN when missing.
        metadata: free-form facts about the source (JSON-ready).
    """

    def __init__(
        self,
        *,
        schema: CohortSchema,
        patient_ids: np.ndarray,
        static: Mapping[str, np.ndarray],
        visit_offsets: np.ndarray,
        visit_times: np.ndarray,
        event_offsets: np.ndarray,
        event_codes: np.ndarray,
        code_values: np.ndarray,
        code_modality: np.ndarray,
        event_values: np.ndarray | None = None,
        code_units: np.ndarray | Sequence[str | None] | None = None,
        times_are_placeholders: bool = False,
        labels: Mapping[str, np.ndarray] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.schema = schema
        self.patient_ids = _frozen(np.asarray(patient_ids, dtype=object))
        self.static = {
            name: _frozen(
                np.asarray(
                    static[name],
                    dtype=np.int32 if name in schema.categorical else np.float32,
                )
            )
            for name in schema.features
        }
        self.visit_offsets = _frozen(np.asarray(visit_offsets, dtype=np.int64))
        self.visit_times = _frozen(np.asarray(visit_times, dtype="datetime64[us]"))
        self.event_offsets = _frozen(np.asarray(event_offsets, dtype=np.int64))
        self.event_codes = _frozen(np.asarray(event_codes, dtype=np.int32))
        self.event_values = (
            None
            if event_values is None
            else _frozen(np.asarray(event_values, dtype=np.float32))
        )
        self.code_values = _frozen(np.asarray(code_values, dtype=object))
        self.code_modality = _frozen(np.asarray(code_modality, dtype=np.int8))
        self.code_units = None if code_units is None else _frozen(_units(code_units))
        self.times_are_placeholders = bool(times_are_placeholders)
        self.labels = {
            k: _frozen(np.asarray(v, dtype=np.float32))
            for k, v in (labels or {}).items()
        }
        self.metadata = dict(metadata or {})
        self._index: dict[str, int] | None = None
        self._check_shapes()

    def _check_shapes(self) -> None:
        n = len(self.patient_ids)
        expected = {
            "visit_offsets": (self.visit_offsets, n + 1),
            "event_offsets": (self.event_offsets, len(self.visit_times) + 1),
            "code_modality": (self.code_modality, len(self.code_values)),
            **(
                {}
                if self.code_units is None
                else {"code_units": (self.code_units, len(self.code_values))}
            ),
            **(
                {}
                if self.event_values is None
                else {"event_values": (self.event_values, len(self.event_codes))}
            ),
            **{f"static[{k!r}]": (v, n) for k, v in self.static.items()},
            **{f"labels[{k!r}]": (v, n) for k, v in self.labels.items()},
        }
        for name, (array, size) in expected.items():
            if array.shape != (size,):
                raise SchemaError(
                    f"Cohort array {name} must have shape ({size},). "
                    f"Got {array.shape} instead."
                )
        if self.visit_offsets[-1] != len(self.visit_times) or (
            self.event_offsets[-1] != len(self.event_codes)
        ):
            raise SchemaError("Cohort offsets do not match the visit or event arrays.")

    # ---- construction

    @classmethod
    def from_patients(
        cls,
        patients: Iterable[Patient],
        schema: CohortSchema | None = None,
        *,
        labels: Mapping[str, Sequence[float]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Cohort:
        """Build a cohort from :class:`Patient` objects.

        The schema is inferred when not given (see :meth:`CohortSchema.infer`).
        ``labels`` maps an outcome name to one value per patient, in input order.

        Example:
            >>> p = Patient("1", {"gender": "F"}, (Visit({"diagnosis": ("4019",)}),))
            >>> Cohort.from_patients([p]).stats().n_events
            1
        """
        patients = list(patients)
        schema = schema or CohortSchema.infer(patients)
        from ehrgen.data.builder import CohortBuilder  # builder imports this module

        builder = CohortBuilder(schema)
        labels = labels or {}
        for i, patient in enumerate(patients):
            builder.add(
                patient.patient_id,
                patient.static,
                [(v.time, v.events, v.values) for v in patient.visits],
                labels={name: values[i] for name, values in labels.items()},
            )
        return builder.build(metadata=metadata)

    # ---- sequence protocol

    def __len__(self) -> int:
        return len(self.patient_ids)

    @property
    def n_visits(self) -> int:
        """The number of visits over all patients."""
        return len(self.visit_times)

    @property
    def n_events(self) -> int:
        """The number of (visit, code) events over all patients."""
        return len(self.event_codes)

    @overload
    def __getitem__(self, key: int) -> Patient: ...
    @overload
    def __getitem__(self, key: slice | Sequence[int] | np.ndarray) -> Cohort: ...
    def __getitem__(self, key: Any) -> Patient | Cohort:
        if isinstance(key, (int, np.integer)):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"Patient index {key} out of range for {n} patients.")
            return self._patient(int(key) % n)
        if isinstance(key, slice):
            return self.select(np.arange(len(self))[key])
        return self.select(np.asarray(key, dtype=np.int64))

    def __iter__(self) -> Iterator[Patient]:
        for p in range(len(self)):
            yield self._patient(p)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cohort):
            return NotImplemented
        return (
            self.schema == other.schema
            and self.times_are_placeholders == other.times_are_placeholders
            and len(self) == len(other)
            and self.labels.keys() == other.labels.keys()
            and all(
                np.array_equal(v, other.labels[k], equal_nan=True)
                for k, v in self.labels.items()
            )
            and all(a == b for a, b in zip(self, other))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Cohort({len(self)} patients, {self.n_visits} visits, {self.n_events} "
            f"events, modalities={list(self.schema.modalities)})"
        )

    def patient(self, patient_id: str) -> Patient:
        """The patient with this id (a :class:`KeyError` if absent)."""
        if self._index is None:
            self._index = {pid: i for i, pid in enumerate(self.patient_ids)}
        return self._patient(self._index[str(patient_id)])

    def _patient(self, p: int) -> Patient:
        static: dict[str, str | float] = {}
        for name, values in self.static.items():
            value = values[p]
            if name in self.schema.categorical:
                if value >= 0:
                    static[name] = self.schema.categorical[name][value]
            elif not np.isnan(value):
                static[name] = float(value)
        visits = []
        for v in range(self.visit_offsets[p], self.visit_offsets[p + 1]):
            span = slice(self.event_offsets[v], self.event_offsets[v + 1])
            codes = self.event_codes[span]
            numbers = (
                self.event_values[span].tolist()
                if self.event_values is not None
                else itertools.repeat(math.nan)
            )
            events: dict[str, list[str]] = {}
            values: dict[str, dict[str, float]] = {}
            for code, number in zip(codes.tolist(), numbers):
                modality = self.schema.modalities[self.code_modality[code]]
                events.setdefault(modality, []).append(self.code_values[code])
                if number == number:
                    values.setdefault(modality, {})[self.code_values[code]] = number
            # Placeholder times belong to the storage, not to the data: hide them.
            time = None if self.times_are_placeholders else self.visit_times[v].item()
            visits.append(Visit({k: tuple(c) for k, c in events.items()}, time, values))
        return Patient(str(self.patient_ids[p]), static, tuple(visits))

    # ---- derived views

    @property
    def visit_patient(self) -> np.ndarray:
        """(V,) the patient index of each visit."""
        return np.repeat(np.arange(len(self)), np.diff(self.visit_offsets))

    @property
    def event_visit(self) -> np.ndarray:
        """(E,) the visit index of each event."""
        return np.repeat(np.arange(self.n_visits), np.diff(self.event_offsets))

    @property
    def event_modality(self) -> np.ndarray:
        """(E,) the modality index of each event."""
        return self.code_modality[self.event_codes]

    def select(self, indices: Sequence[int] | np.ndarray) -> Cohort:
        """The sub-cohort of these patient indices, in this order."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"Patient indices out of range for {len(self)} patients.")
        idx = idx % max(len(self), 1)
        visit_idx, visit_offsets = _gather_ranges(self.visit_offsets, idx)
        event_idx, event_offsets = _gather_ranges(self.event_offsets, visit_idx)
        return Cohort(
            schema=self.schema,
            patient_ids=self.patient_ids[idx],
            static={k: v[idx] for k, v in self.static.items()},
            visit_offsets=visit_offsets,
            visit_times=self.visit_times[visit_idx],
            event_offsets=event_offsets,
            event_codes=self.event_codes[event_idx],
            event_values=None
            if self.event_values is None
            else self.event_values[event_idx],
            code_values=self.code_values,
            code_modality=self.code_modality,
            code_units=self.code_units,
            times_are_placeholders=self.times_are_placeholders,
            labels={k: v[idx] for k, v in self.labels.items()},
            metadata=self.metadata,
        )

    def with_patient_ids(self, patient_ids: Sequence[str]) -> Cohort:
        """The same cohort with these patient ids (one per patient, unique).

        Example:
            >>> p = Patient("a", {}, (Visit({"diagnosis": ("4019",)}),))
            >>> Cohort.from_patients([p]).with_patient_ids(["7"])[0].patient_id
            '7'
        """
        ids = np.asarray([str(i) for i in patient_ids], dtype=object)
        if len(ids) != len(self) or len(set(ids.tolist())) != len(ids):
            raise SchemaError(
                f"with_patient_ids needs {len(self)} unique ids, one per patient. "
                f"Got {len(ids)} ids, {len(set(ids.tolist()))} of them distinct."
            )
        return self.replace(patient_ids=ids)

    #: The constructor's arguments, which :meth:`replace` copies or replaces.
    _FIELDS = (
        "schema", "patient_ids", "static", "visit_offsets", "visit_times",
        "event_offsets", "event_codes", "event_values", "code_values",
        "code_modality", "code_units", "times_are_placeholders", "labels",
        "metadata",
    )  # fmt: skip

    def units(self) -> dict[tuple[str, str], str]:
        """``(modality, code) -> unit`` of every code of the events that has one.

        Example:
            >>> p = Patient("a", {}, (Visit({"lab": ("Creatinine",)}),))
            >>> cohort = Cohort.from_patients([p])
            >>> cohort.replace(code_units=["mg/dL"]).units()
            {('lab', 'Creatinine'): 'mg/dL'}
        """
        if self.code_units is None:
            return {}
        modalities = self.schema.modalities
        used = np.unique(self.event_codes)
        return {
            (modalities[self.code_modality[c]], str(self.code_values[c])): str(unit)
            for c, unit in zip(used.tolist(), self.code_units[used].tolist())
            if unit is not None
        }

    def with_units(self, units: Mapping[tuple[str, str], str]) -> Cohort:
        """The cohort with ``(modality, code) -> unit`` given to its codes (those
        not named keep theirs), as :meth:`units` returns them.

        Example:
            >>> p = Patient("a", {}, (Visit({"lab": ("Creatinine",)}),))
            >>> cohort = Cohort.from_patients([p])
            >>> cohort.with_units({("lab", "Creatinine"): "mg/dL"}).units()
            {('lab', 'Creatinine'): 'mg/dL'}
        """
        if not units:
            return self
        modalities = self.schema.modalities
        current = (
            [None] * len(self.code_values)
            if self.code_units is None
            else self.code_units.tolist()
        )
        code_units = [
            units.get((modalities[m], str(code)), unit)
            for m, code, unit in zip(
                self.code_modality.tolist(), self.code_values.tolist(), current
            )
        ]
        return self.replace(code_units=code_units)

    def replace(self, **changes: Any) -> Cohort:
        """A cohort with some constructor arguments changed (checked again), the
        others shared with this one.

        Example:
            >>> p = Patient("a", {}, (Visit({"diagnosis": ("4019",)}),))
            >>> measured = Cohort.from_patients([p]).replace(event_values=[5.0])
            >>> measured[0].visits[0].values
            {'diagnosis': {'4019': 5.0}}
        """
        unknown = sorted(set(changes) - set(self._FIELDS))
        if unknown:
            raise TypeError(
                f"Cohort.replace got unknown field {unknown[0]!r}; fields are "
                f"{list(self._FIELDS)}."
            )
        return Cohort(**{name: getattr(self, name) for name in self._FIELDS} | changes)

    def split(self, fractions: Sequence[float], seed: int = 0) -> tuple[Cohort, ...]:
        """Split by patient into disjoint cohorts of the given fractions.

        Sizes are rounded so that they add up to ``len(self)``; each part keeps the
        cohort's order.

        Example:
            >>> from ehrgen.data.demo import demo_cohort
            >>> train, test = demo_cohort(100, seed=0).split([0.8, 0.2], seed=0)
            >>> len(train), len(test)
            (80, 20)
        """
        fractions = np.asarray(fractions, dtype=float)
        if fractions.ndim != 1 or fractions.size == 0 or (fractions < 0).any():
            raise SchemaError(
                f"The 'fractions' parameter of Cohort.split must be non-negative "
                f"numbers. Got {fractions.tolist()} instead."
            )
        if abs(fractions.sum() - 1.0) > 1e-6:
            raise SchemaError(
                f"The 'fractions' parameter of Cohort.split must add up to 1. Got "
                f"{fractions.tolist()} (sum {fractions.sum():g}) instead."
            )
        n = len(self)
        exact = fractions * n
        sizes = np.floor(exact).astype(int)
        order = np.argsort(-(exact - sizes), kind="stable")
        sizes[order[: n - sizes.sum()]] += 1
        permutation = np.random.default_rng(seed).permutation(n)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return tuple(
            self.select(np.sort(permutation[a:b])) for a, b in zip(bounds, bounds[1:])
        )

    def stats(self) -> CohortStats:
        """Counts and distributions: patients, visits, events, vocabularies, visits
        per patient, codes per visit and modality, baseline features."""
        modalities = self.schema.modalities
        event_modality = self.event_modality
        per_visit = np.zeros((self.n_visits, len(modalities)), dtype=np.int64)
        np.add.at(per_visit, (self.event_visit, event_modality), 1)
        used = np.unique(self.event_codes)
        categorical = {}
        for name, categories in self.schema.categorical.items():
            counts = np.bincount(
                self.static[name][self.static[name] >= 0], minlength=len(categories)
            )
            categorical[name] = dict(zip(categories, counts.tolist()))
            missing = int((self.static[name] < 0).sum())
            if missing:
                categorical[name]["<missing>"] = missing
        return CohortStats(
            n_patients=len(self),
            n_visits=self.n_visits,
            n_events=self.n_events,
            vocabulary={
                m: int((self.code_modality[used] == i).sum())
                for i, m in enumerate(modalities)
            },
            visits_per_patient=Distribution.of(np.diff(self.visit_offsets)),
            codes_per_visit={
                m: Distribution.of(per_visit[:, i]) for i, m in enumerate(modalities)
            },
            visits_with_modality={
                m: float((per_visit[:, i] > 0).mean()) if self.n_visits else 0.0
                for i, m in enumerate(modalities)
            },
            categorical=categorical,
            numerical={
                name: Distribution.of(v[~np.isnan(v)])
                for name in self.schema.numerical
                for v in [self.static[name]]
            },
            times_are_placeholders=self.times_are_placeholders,
        )


def _units(units: Any) -> np.ndarray:
    """Units as an object array, None (never NaN or "") where a code has none."""
    return np.array(
        [u if isinstance(u, str) and u else None for u in list(units)], dtype=object
    )


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _gather_ranges(
    offsets: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The element indices of ``rows`` of a CSR structure and their new offsets."""
    lengths = offsets[rows + 1] - offsets[rows]
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    starts = np.repeat(offsets[rows] - new_offsets[:-1], lengths)
    return np.arange(new_offsets[-1], dtype=np.int64) + starts, new_offsets
