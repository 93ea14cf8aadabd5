"""The paper's preprocessing, as options every reader shares.

PromptEHR's MIMIC-III cohort keeps the most frequent codes of each modality (1,071
diagnoses, 668 procedures, 500 drugs and 185 lab tests). :class:`Preprocessing` holds
that choice and its relatives; :func:`preprocess` applies them to any
:class:`~ehrgen.data.cohort.Cohort`, and every reader (``read_mimic3``,
``read_mimic4``, ``read_omop``; the CLI for MEDS, JSONL and pickles) takes them as
``preprocessing=``. The steps, in this order:

1. keep only the chosen ``modalities`` (their order stays the schema's);
2. ``icd9_3digit``: map ICD-9-CM diagnoses to their 3-digit category (``ICD9CM//4019``
   -> ``ICD9CM//401``; E codes keep 4 characters, ``E8889`` -> ``E888``; V codes 3,
   ``V5861`` -> ``V58``) and ICD-9 procedures to their 2-digit category
   (``ICD9PROC//3722`` -> ``ICD9PROC//37``). Only codes that carry the system
   (``ICD9CM//``, ``ICD9PROC//``) are mapped, dotted or not; ICD-10 and other codes are
   left alone. Codes that fall into one category within a visit are kept once;
3. count each code's events (one per visit it appears in) and drop codes seen fewer than
   ``min_code_count`` times, and all but the ``top_k_codes`` most frequent of each
   modality (ties broken by the code string). Both filters use the same counts, so
   their order does not matter;
4. drop visits left with no code, then patients left with fewer than ``min_visits``
   visits (and always those with none).

Everything works on the cohort's flat arrays (numpy, no per-patient loop); the result
is a new cohort whose ``metadata["preprocessing"]`` holds the options and what was
dropped, and why.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ehrgen._config import ConfigMixin, check
from ehrgen.data import Cohort, CohortSchema
from ehrgen.errors import ConfigError, did_you_mean

__all__ = ["PAPER_TOP_K", "Preprocessing", "icd9_category", "preprocess"]

logger = logging.getLogger(__name__)

# The vocabulary sizes of the paper's MIMIC-III cohort.
PAPER_TOP_K: dict[str, int] = {
    "diagnosis": 1071,
    "procedure": 668,
    "drug": 500,
    "lab": 185,
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True, kw_only=True)
class Preprocessing(ConfigMixin):
    """What :func:`preprocess` keeps (see the module docstring for the steps).

    Example:
        >>> Preprocessing(top_k_codes={"diagnosis": 100}, min_visits=2).min_visits
        2
        >>> Preprocessing.paper().top_k_codes["lab"]
        185
    """

    # Keep only these modalities (None: all of the cohort's).
    modalities: tuple[str, ...] | None = None
    # ICD-9-CM diagnoses -> 3-digit categories, ICD-9 procedures -> 2-digit ones.
    icd9_3digit: bool = False
    # Keep the k most frequent codes of each modality; a mapping gives k per modality
    # (modalities it does not name are not cut).
    top_k_codes: int | Mapping[str, int] | None = None
    # Drop codes with fewer events (visits they appear in) than this.
    min_code_count: int = 1
    # Drop patients with fewer visits than this, once codes are filtered.
    min_visits: int = 1

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.modalities is not None:
            ok = not isinstance(self.modalities, str) and len(self.modalities) > 0
            check(ok, name, "modalities", "a non-empty list of names", self.modalities)
            modalities = tuple(self.modalities)
            ok = all(isinstance(m, str) and _NAME.match(m) for m in modalities)
            check(ok, name, "modalities", "lower-case names", self.modalities)
            ok = len(set(modalities)) == len(modalities)
            check(ok, name, "modalities", "names without repeats", self.modalities)
            object.__setattr__(self, "modalities", modalities)
        check(
            isinstance(self.icd9_3digit, bool),
            name,
            "icd9_3digit",
            "a bool",
            self.icd9_3digit,
        )
        object.__setattr__(self, "top_k_codes", self._checked_top_k())
        for field in ("min_code_count", "min_visits"):
            value = getattr(self, field)
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            check(ok, name, field, "a positive int", value)

    def _checked_top_k(self) -> int | dict[str, int] | None:
        top_k = self.top_k_codes
        expected = "a positive int, a mapping modality -> positive int, or None"
        if top_k is None:
            return None
        if isinstance(top_k, Mapping):
            ok = all(isinstance(k, str) and _positive_int(v) for k, v in top_k.items())
            check(ok, type(self).__name__, "top_k_codes", expected, top_k)
            return dict(top_k)
        check(_positive_int(top_k), type(self).__name__, "top_k_codes", expected, top_k)
        return top_k

    @classmethod
    def paper(cls) -> Preprocessing:
        """The paper's MIMIC-III vocabulary sizes (:data:`PAPER_TOP_K`)."""
        return cls(top_k_codes=dict(PAPER_TOP_K))

    @property
    def is_noop(self) -> bool:
        """True when the options keep every code, visit and patient."""
        return self == Preprocessing()

    def top_k_for(self, modality: str) -> int | None:
        """The number of codes kept for ``modality`` (None: no cut)."""
        if isinstance(self.top_k_codes, Mapping):
            return self.top_k_codes.get(modality)
        return self.top_k_codes


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# --------------------------------------------------------------------------- ICD-9


def icd9_category(code: str) -> str:
    """The ICD-9 category of a code that carries its system, else the code itself.

    Diagnoses (``ICD9CM//``) keep 3 characters (4 for E codes), procedures
    (``ICD9PROC//``) 2 digits; a dot, when present, is dropped first.

    Example:
        >>> icd9_category("ICD9CM//4019"), icd9_category("ICD9CM//E888.9")
        ('ICD9CM//401', 'ICD9CM//E888')
        >>> icd9_category("ICD9PROC//3722"), icd9_category("ICD10CM//I10")
        ('ICD9PROC//37', 'ICD10CM//I10')
    """
    system, sep, value = code.partition("//")
    if not sep or system not in ("ICD9CM", "ICD9PROC"):
        return code
    value = value.replace(".", "").strip()
    if system == "ICD9PROC":
        length = 2
    elif value[:1].upper() == "E":
        length = 4
    else:
        length = 3
    return f"{system}//{value[:length]}" if value else code


# --------------------------------------------------------------------------- apply


def preprocess(
    cohort: Cohort, options: Preprocessing, *, source: str = "cohort"
) -> Cohort:
    """Apply ``options`` to ``cohort``: a new cohort, with what was dropped and why in
    ``metadata["preprocessing"]`` (also logged).

    Args:
        cohort: the cohort to filter (left unchanged).
        options: what to keep.
        source: a name for the cohort in the log.

    Raises:
        ConfigError: ``options`` names a modality the cohort does not have.

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> cohort = demo_cohort(50, seed=0)
        >>> small = preprocess(cohort, Preprocessing(top_k_codes=5))
        >>> max(small.stats().vocabulary.values()) <= 5
        True
        >>> preprocess(cohort, Preprocessing()) == cohort
        True
    """
    if not isinstance(options, Preprocessing):
        raise ConfigError(
            f"The 'options' parameter of preprocess must be a Preprocessing. Got "
            f"{type(options).__name__} instead."
        )
    modalities = _chosen_modalities(cohort.schema, options)
    per_modality: dict[str, dict[str, int]] = {}
    dropped: dict[str, Any] = {"modalities": per_modality}
    for name in cohort.schema.modalities:
        if name not in modalities:
            index = cohort.schema.modalities.index(name)
            n = int((cohort.event_modality == index).sum())
            per_modality[name] = {"modality_removed_events": n}
    codes = _Vocabulary.of(cohort, modalities, options.icd9_3digit)
    event_code = codes.new_id[cohort.event_codes]  # (E,) -1: modality removed
    event_visit = cohort.event_visit
    keep = event_code >= 0
    if codes.merged:
        first = _first_in_visit(event_visit, event_code, keep)
        codes.count(
            per_modality, "merged_by_icd9_3digit_events", event_code, keep & ~first
        )
        codes.count_codes(
            per_modality, "merged_by_icd9_3digit_codes", codes.merged_count
        )
        keep &= first
    counts = np.bincount(event_code[keep], minlength=len(codes.values))
    for reason, lost_codes in _infrequent(counts, codes, options).items():
        lost = keep & lost_codes[np.maximum(event_code, 0)]
        codes.count(per_modality, f"{reason}_events", event_code, lost)
        codes.count_codes(per_modality, f"{reason}_codes", lost_codes.astype(np.int64))
        keep &= ~lost
    result = _select(cohort, keep, event_visit, event_code, codes, options, dropped)
    report: dict[str, Any] = {
        "options": options.to_dict(),
        "before": _sizes(cohort),
        "after": _sizes(result),
        "dropped": dropped,
    }
    if "preprocessing" in cohort.metadata:
        report["previous"] = cohort.metadata["preprocessing"]
    result.metadata = {**cohort.metadata, "preprocessing": report}
    _log(source, report)
    return result


def _chosen_modalities(schema: CohortSchema, options: Preprocessing) -> tuple[str, ...]:
    if options.modalities is None:
        return schema.modalities
    for name in options.modalities:
        if name not in schema.modalities:
            raise ConfigError(
                f"The 'modalities' option of Preprocessing must name modalities of the "
                f"cohort, {list(schema.modalities)}. Got {name!r} instead."
                f"{did_you_mean(name, schema.modalities)}"
            )
    return tuple(m for m in schema.modalities if m in options.modalities)


@dataclass
class _Vocabulary:
    """The codes after modality selection and ICD-9 mapping.

    ``new_id`` maps each old code to its new one (-1 for codes of removed modalities
    and unused ones); ``values`` and ``modality`` describe the new codes, with
    modality indices into the kept modalities.
    """

    new_id: np.ndarray  # (C_old,) int64
    values: np.ndarray  # (C,) object
    modality: np.ndarray  # (C,) int8
    names: tuple[str, ...]  # the kept modalities
    merged_codes: np.ndarray  # (C,) bool: new codes that old ones were merged into
    merged_count: np.ndarray  # (C,) int64: old codes merged away into each

    @property
    def merged(self) -> bool:
        return bool(self.merged_codes.any())

    @classmethod
    def of(cls, cohort: Cohort, modalities: tuple[str, ...], icd9: bool) -> _Vocabulary:
        rank = np.array(
            [
                modalities.index(m) if m in modalities else -1
                for m in cohort.schema.modalities
            ],
            dtype=np.int64,
        )
        used = np.zeros(len(cohort.code_values), dtype=bool)
        used[cohort.event_codes] = True
        old_modality = np.where(used, rank[cohort.code_modality], -1)
        old_values = cohort.code_values
        if icd9:
            old_values = np.array(
                [icd9_category(v) for v in old_values.tolist()], object
            )
        index: dict[tuple[int, str], int] = {}
        new_id = np.full(len(old_values), -1, dtype=np.int64)
        for c in np.flatnonzero(old_modality >= 0).tolist():
            key = (int(old_modality[c]), old_values[c])
            new_id[c] = index.setdefault(key, len(index))
        values = np.array([v for _, v in index], dtype=object)
        modality = np.array([m for m, _ in index], dtype=np.int8)
        sources = np.bincount(new_id[new_id >= 0], minlength=len(index))
        return cls(new_id, values, modality, modalities, sources > 1, sources - 1)

    def count(
        self, dropped: dict, key: str, event_code: np.ndarray, mask: np.ndarray
    ) -> None:
        """Add the number of ``mask``'s events of each modality to ``dropped``."""
        per = np.bincount(self.modality[event_code[mask]], minlength=len(self.names))
        for name, n in zip(self.names, per.tolist()):
            if n:
                dropped.setdefault(name, {})[key] = n

    def count_codes(self, dropped: dict, key: str, per_code: np.ndarray) -> None:
        """Add ``per_code`` ((C,) counts of old codes per new code) per modality."""
        per = np.bincount(self.modality, weights=per_code, minlength=len(self.names))
        for name, n in zip(self.names, per.astype(np.int64).tolist()):
            if n:
                dropped.setdefault(name, {})[key] = n


def _first_in_visit(
    event_visit: np.ndarray, event_code: np.ndarray, keep: np.ndarray
) -> np.ndarray:
    """(E,) True for the first kept event of each (visit, code) pair."""
    rows = np.flatnonzero(keep)
    out = np.zeros(len(keep), dtype=bool)
    if not len(rows):
        return out
    key = event_visit[rows] * np.int64(event_code.max() + 1) + event_code[rows]
    _, first = np.unique(key, return_index=True)
    out[rows[first]] = True
    return out


def _infrequent(
    counts: np.ndarray, codes: _Vocabulary, options: Preprocessing
) -> dict[str, np.ndarray]:
    """(C,) masks of the codes dropped for being rare, then for missing the top k."""
    present = counts > 0
    rare = present & (counts < options.min_code_count)
    outside = np.zeros(len(counts), dtype=bool)
    order = np.lexsort((np.argsort(np.argsort(codes.values.astype(str))), -counts))
    for m, name in enumerate(codes.names):
        k = options.top_k_for(name)
        if k is None:
            continue
        ranked = order[(codes.modality[order] == m) & present[order] & ~rare[order]]
        outside[ranked[k:]] = True
    return {"rare": rare, "top_k": outside}


def _select(
    cohort: Cohort,
    keep: np.ndarray,
    event_visit: np.ndarray,
    event_code: np.ndarray,
    codes: _Vocabulary,
    options: Preprocessing,
    dropped: dict[str, Any],
) -> Cohort:
    """The cohort of the kept events, without empty visits and short patients."""
    per_visit = np.bincount(event_visit[keep], minlength=cohort.n_visits)
    visit_patient = cohort.visit_patient
    nonempty = per_visit > 0
    per_patient = np.bincount(visit_patient[nonempty], minlength=len(cohort))
    patients = per_patient >= options.min_visits
    visits = nonempty & patients[visit_patient]
    keep &= visits[event_visit]
    dropped["visits_left_empty"] = int((~nonempty).sum())
    dropped["patients_left_without_visits"] = int((per_patient == 0).sum())
    dropped["patients_below_min_visits"] = int(
        ((per_patient > 0) & (per_patient < options.min_visits)).sum()
    )
    dropped["visits_of_dropped_patients"] = int((nonempty & ~visits).sum())
    used, event_codes = np.unique(event_code[keep], return_inverse=True)
    visit_offsets = np.zeros(int(patients.sum()) + 1, dtype=np.int64)
    np.cumsum(per_patient[patients], out=visit_offsets[1:])
    event_offsets = np.zeros(int(visits.sum()) + 1, dtype=np.int64)
    np.cumsum(per_visit[visits], out=event_offsets[1:])
    return Cohort(
        schema=CohortSchema(
            modalities=codes.names,
            categorical=cohort.schema.categorical,
            numerical=cohort.schema.numerical,
        ),
        patient_ids=cohort.patient_ids[patients],
        static={k: v[patients] for k, v in cohort.static.items()},
        visit_offsets=visit_offsets,
        visit_times=cohort.visit_times[visits],
        event_offsets=event_offsets,
        event_codes=event_codes.astype(np.int32).reshape(-1),
        event_values=None if cohort.event_values is None else cohort.event_values[keep],
        code_values=codes.values[used],
        code_modality=codes.modality[used],
        code_units=None if cohort.code_units is None else _units(cohort, codes)[used],
        times_are_placeholders=cohort.times_are_placeholders,
        labels={k: v[patients] for k, v in cohort.labels.items()},
        metadata=cohort.metadata,
    )


def _units(cohort: Cohort, codes: _Vocabulary) -> np.ndarray:
    """(C,) the unit of each new code: that of an old code mapped to it."""
    units = np.full(len(codes.values), None, dtype=object)
    old = np.flatnonzero(codes.new_id >= 0)
    units[codes.new_id[old]] = cohort.code_units[old]
    return units


def _sizes(cohort: Cohort) -> dict[str, Any]:
    used = np.unique(cohort.event_codes)
    per_modality = np.bincount(
        cohort.code_modality[used], minlength=len(cohort.schema.modalities)
    )
    return {
        "patients": len(cohort),
        "visits": cohort.n_visits,
        "events": cohort.n_events,
        "codes": dict(zip(cohort.schema.modalities, per_modality.tolist())),
    }


def _log(source: str, report: dict[str, Any]) -> None:
    before, after = report["before"], report["after"]
    logger.info(
        "%s: preprocessing kept %d of %d patients, %d of %d visits, %d of %d events; "
        "codes per modality %s (were %s).",
        source,
        after["patients"],
        before["patients"],
        after["visits"],
        before["visits"],
        after["events"],
        before["events"],
        after["codes"],
        before["codes"],
    )
    if after["patients"] == 0:
        logger.warning("%s: preprocessing left no patient.", source)
