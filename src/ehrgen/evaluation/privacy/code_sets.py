"""Patients as sets of codes, and the nearest-neighbour distances between them.

Privacy attacks compare real and synthetic patients by what they contain, whatever
their ids or times. Two views of a patient:

* **code set**: every ``(modality, code)`` the patient has, in any visit;
* **visit-aware code set**: every ``(visit position, modality, code)``, so that two
  patients are identical only when they have the same codes in the same visits, in the
  same order.

The distance between two sets A and B is the **Jaccard distance**
``1 - |A & B| / |A | B|`` (0 for identical sets, 1 for disjoint ones). On the
visit-aware view it equals ``1 - sum_t |A_t & B_t| / sum_t |A_t | B_t|``, a distance
between visit sequences aligned by position.

Cohorts are compared in one :class:`CodeIndex` (codes are matched by modality name and
code string, never by the cohorts' internal code numbers), and the distances are
computed with sparse matrix products, in blocks of rows so that memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from ehrgen.data import Cohort

__all__ = [
    "CodeIndex",
    "jaccard_distances",
    "nearest_distances",
    "nearest_neighbours",
    "patient_sets",
    "sequence_keys",
]

_BLOCK_ROWS = 512


@dataclass(frozen=True)
class CodeIndex:
    """One column number for each ``(modality, code)`` seen in any of some cohorts.

    Example:
        >>> from ehrgen.data import Patient, Visit
        >>> visit = Visit({"diagnosis": ("x",)})
        >>> a = Cohort.from_patients([Patient("1", {}, (visit,))])
        >>> CodeIndex.of(a).size
        1
    """

    keys: dict[tuple[str, str], int]

    @classmethod
    def of(cls, *cohorts: Cohort) -> CodeIndex:
        keys: dict[tuple[str, str], int] = {}
        for cohort in cohorts:
            for key in _code_keys(cohort):
                keys.setdefault(key, len(keys))
        return cls(keys)

    @property
    def size(self) -> int:
        return len(self.keys)

    def columns(self, cohort: Cohort) -> np.ndarray:
        """(C,) this index's column of each of the cohort's codes."""
        return np.array([self.keys[k] for k in _code_keys(cohort)], dtype=np.int64)


def _code_keys(cohort: Cohort) -> Iterator[tuple[str, str]]:
    modalities = cohort.schema.modalities
    for value, modality in zip(cohort.code_values, cohort.code_modality):
        yield modalities[modality], str(value)


def patient_sets(
    cohort: Cohort, index: CodeIndex, *, visit_aware: bool = False
) -> sparse.csr_matrix:
    """(patients, columns) 0/1 matrix of each patient's code set.

    With ``visit_aware``, column ``position * index.size + code``: the code in the
    patient's visit at that position (0 for the first visit).
    """
    columns = index.columns(cohort)[cohort.event_codes]
    event_patient = cohort.visit_patient[cohort.event_visit]
    n_columns = index.size
    if visit_aware:
        position = np.arange(cohort.n_visits) - cohort.visit_offsets[:-1].repeat(
            np.diff(cohort.visit_offsets)
        )
        columns = position[cohort.event_visit] * index.size + columns
        longest = int(np.diff(cohort.visit_offsets).max(initial=1))
        n_columns = index.size * max(longest, 1)
    matrix = sparse.csr_matrix(
        (np.ones(len(columns), np.float32), (event_patient, columns)),
        shape=(len(cohort), n_columns),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # a code repeated across visits counts once
    return matrix


def _same_width(a: sparse.csr_matrix, b: sparse.csr_matrix):
    width = max(a.shape[1], b.shape[1])
    a = a if a.shape[1] == width else _widen(a, width)
    b = b if b.shape[1] == width else _widen(b, width)
    return a, b


def _widen(m: sparse.csr_matrix, width: int) -> sparse.csr_matrix:
    return sparse.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], width))


def _distance_blocks(
    a: sparse.csr_matrix, b: sparse.csr_matrix
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, dense Jaccard distances of a block of a's rows to every row of b)."""
    a, b = _same_width(a, b)
    size_a = np.asarray(a.sum(axis=1), dtype=np.float64).ravel()
    size_b = np.asarray(b.sum(axis=1), dtype=np.float64).ravel()
    bt = b.T.tocsc()
    for start in range(0, a.shape[0], _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, a.shape[0])
        shared = (a[start:stop] @ bt).toarray().astype(np.float64)
        union = size_a[start:stop, None] + size_b[None, :] - shared
        with np.errstate(invalid="ignore", divide="ignore"):
            distance = np.where(union > 0, 1.0 - shared / union, 0.0)
        yield start, distance


def jaccard_distances(a: sparse.csr_matrix, b: sparse.csr_matrix) -> np.ndarray:
    """(len(a), len(b)) dense Jaccard distances; for small inputs and tests.

    Example:
        >>> m = sparse.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]], np.float32))
        >>> jaccard_distances(m, m).round(3).tolist()
        [[0.0, 0.667], [0.667, 0.0]]
    """
    blocks = [d for _, d in _distance_blocks(a, b)]
    return np.concatenate(blocks) if blocks else np.zeros((0, b.shape[0]))


def nearest_neighbours(
    a: sparse.csr_matrix,
    b: sparse.csr_matrix,
    k: int,
    *,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """(len(a), k) indices of the k nearest rows of ``b`` to each row of ``a``, nearest
    first (ties in any order).

    Args:
        exclude: (len(a),) a row of ``b`` that row i of ``a`` may not pick (-1: none),
            e.g. the patient itself.

    Example:
        >>> m = sparse.csr_matrix(np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], "f4"))
        >>> nearest_neighbours(m, m, 1, exclude=np.array([0, 1, 2])).tolist()
        [[2], [2], [0]]
    """
    k = min(k, b.shape[0] - (exclude is not None))
    out = np.zeros((a.shape[0], max(k, 0)), dtype=np.int64)
    if k <= 0:
        return out
    for start, distance in _distance_blocks(a, b):
        rows = np.arange(distance.shape[0])
        if exclude is not None:
            skip = exclude[start : start + len(rows)]
            distance[rows[skip >= 0], skip[skip >= 0]] = np.inf
        part = np.argpartition(distance, k - 1, axis=1)[:, :k]
        order = np.argsort(distance[rows[:, None], part], axis=1, kind="stable")
        out[start : start + len(rows)] = part[rows[:, None], order]
    return out


def nearest_distances(
    a: sparse.csr_matrix, b: sparse.csr_matrix, *, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``, the Jaccard distance to its nearest row of ``b`` and that
    row's index.

    Args:
        exclude_self: ``a`` and ``b`` are the same rows; row i of ``a`` may not pick
            row i of ``b`` (leave-one-out: the nearest *other* patient).

    Example:
        >>> m = sparse.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]], np.float32))
        >>> d, i = nearest_distances(m, m, exclude_self=True)
        >>> d.round(3).tolist(), i.tolist()
        ([0.667, 0.667], [1, 0])
    """
    n = a.shape[0]
    nearest, which = np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
    if b.shape[0] == 0 or (exclude_self and b.shape[0] < 2):
        return nearest, which
    for start, distance in _distance_blocks(a, b):
        if exclude_self:
            rows = np.arange(distance.shape[0])
            distance[rows, rows + start] = np.inf
        best = distance.argmin(axis=1)
        which[start : start + len(best)] = best
        nearest[start : start + len(best)] = distance[np.arange(len(best)), best]
    return nearest, which


def sequence_keys(cohort: Cohort, index: CodeIndex) -> np.ndarray:
    """(patients,) a hashable key of each patient's whole record: its visits in order,
    each as the sorted columns of its codes; equal keys mean identical records."""
    columns = index.columns(cohort)[cohort.event_codes]
    keys = np.empty(len(cohort), dtype=object)
    for p in range(len(cohort)):
        visits = []
        for v in range(cohort.visit_offsets[p], cohort.visit_offsets[p + 1]):
            a, b = cohort.event_offsets[v], cohort.event_offsets[v + 1]
            visits.append(tuple(np.sort(columns[a:b]).tolist()))
        keys[p] = tuple(visits)
    return keys
