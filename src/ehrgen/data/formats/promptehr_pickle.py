"""Read the data pickle of the reference PromptEHR implementation, safely.

The reference implementation (MIT licence) stores a cohort as a pickled dict:
``visit`` (per patient, per visit, one list of integer code ids per modality, in the
order of ``order``), ``voc`` (per modality, a ``promptehr.data.Voc`` whose ``idx2word``
maps ids to code strings), ``feature`` (a patients x features matrix:
``n_num_feature`` numerical columns, then integer-coded categorical ones of cardinality
``cat_cardinalties``, sic) and optionally ``y`` (a patient-level label).

Unpickling runs code named in the file, so the file is read with an unpickler that
resolves only ``promptehr.data.Voc`` (to a local plain class) and numpy's array and
scalar reconstruction helpers; any other global is refused before it is called.

What the cohort looks like:

* modalities ``diag``, ``prod``, ``med`` become ``diagnosis``, ``procedure``, ``drug``
  and their codes carry their code system: ``ICD9CM//4019``, ``ICD9PROC//3893``,
  ``ATC//N02B``;
* the first numerical column is ``age`` (standardised in the reference data), the
  others ``num_1``, ``num_2``...; categorical columns are ``cat_0``, ``cat_1``... (or
  the names given) with categories ``"0"`` .. ``"k-1"``;
* ``y`` becomes a label (an outcome, never a feature);
* patient ids are positions in the file (``"0"``, ``"1"``...); the file has no times,
  so visits get placeholder times (``cohort.times_are_placeholders``);
* repeated codes in one code list are dropped (their number is kept in
  ``metadata["repeated_code_lists"]``), as are visits with no code and patients with no
  visit; the vocabulary sizes the file declares are kept in
  ``metadata["declared_vocabulary"]``.
"""

from __future__ import annotations

import functools
import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ehrgen.data import Cohort, CohortBuilder, CohortSchema
from ehrgen.errors import ConfigError, SchemaError

__all__ = ["read_promptehr_pickle"]

logger = logging.getLogger(__name__)

# PromptEHR modality key -> (our modality, the code-system prefix of its codes).
MODALITIES: dict[str, tuple[str, str]] = {
    "diag": ("diagnosis", "ICD9CM//"),
    "prod": ("procedure", "ICD9PROC//"),
    "med": ("drug", "ATC//"),
}
_REQUIRED_KEYS = ("visit", "order", "voc")
_FEATURE_KEYS = ("n_num_feature", "cat_cardinalties")
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


class _Voc:
    """Local stand-in for ``promptehr.data.Voc``: a plain holder of attributes.

    Unpickling sets ``idx2word`` and ``word2idx`` in its ``__dict__``; it has no
    behaviour that a crafted file could trigger.
    """

    idx2word: Any = None
    word2idx: Any = None


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    # Ask numpy for the helpers it pickles with, rather than importing
    # numpy.core.multiarray by name: that finds the right objects on numpy 1.x and
    # 2.x and avoids numpy 2's deprecation warning for numpy.core.
    reconstruct = np.ndarray(0).__reduce__()[0]
    scalar = np.bool_(False).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("promptehr.data", "Voc"): _Voc,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed_globals`."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals().get((module, name))
        if allowed is None:
            raise SchemaError(
                f"{self._path}: refused to load the global '{module}.{name}' named in "
                f"the pickle; only promptehr.data.Voc and numpy's array helpers are "
                f"allowed, and nothing named in the file was run. The file is not a "
                f"PromptEHR data pickle, or it was crafted to run code."
            )
        return allowed


def _unpickle(path: Path) -> Any:
    """The object in ``path``, read with the restricted unpickler."""
    try:
        file = path.open("rb")
    except OSError as err:
        raise SchemaError(
            f"{path}: cannot open the PromptEHR pickle ({err.strerror or err}). "
            f"Check the path."
        ) from err
    with file:
        try:
            return _RestrictedUnpickler(file, path).load()
        except SchemaError:
            raise
        # A damaged or foreign pickle can fail in many ways inside the unpickler;
        # each means the same thing to the caller.
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            OverflowError,
            MemoryError,
            RecursionError,
        ) as err:
            raise SchemaError(
                f"{path}: not a readable pickle ({type(err).__name__}: {err}); "
                f"expected the data pickle of the reference PromptEHR implementation. "
                f"Is the file truncated?"
            ) from err


def read_promptehr_pickle(
    path: str | Path,
    *,
    categorical_names: Sequence[str] | None = None,
    label_name: str = "y",
) -> Cohort:
    """Read the reference PromptEHR implementation's data pickle as a cohort.

    Args:
        path: the pickle (``data.pkl``).
        categorical_names: names of the categorical feature columns, in order
            (default ``cat_0``, ``cat_1``...).
        label_name: the name of the label ``y`` becomes.

    Returns:
        The cohort, with placeholder visit times and the labels of ``y``.

    Raises:
        SchemaError: the file is missing, damaged, names a global other than the
            allowed ones, or does not hold the expected structure (the message names
            the file and the field).
        ConfigError: ``categorical_names`` or ``label_name`` is invalid.

    Example:
        >>> cohort = read_promptehr_pickle("data.pkl")  # doctest: +SKIP
        >>> cohort.schema.modalities  # doctest: +SKIP
        ('diagnosis', 'procedure', 'drug')
    """
    path = Path(path)
    names = _check_arguments(categorical_names, label_name)
    data = _unpickle(path)
    if not isinstance(data, dict):
        raise SchemaError(
            f"{path}: expected a pickled dict with keys {list(_REQUIRED_KEYS)}. "
            f"Got a {type(data).__name__} instead."
        )
    for key in _REQUIRED_KEYS:
        if key not in data:
            raise SchemaError(
                f"{path}: missing field {key!r}; the dict has {sorted(map(str, data))}."
            )
    keys = _modality_keys(data["order"], path)
    tables = {key: _code_table(data["voc"], key, path) for key in keys}
    patients = _patient_list(data["visit"], path)
    categorical, numerical, static = _features(data, len(patients), names, path)
    labels = _labels(data, len(patients), label_name, path)
    used = {MODALITIES[key][0] for key in keys}
    schema = CohortSchema(
        modalities=tuple(m for m, _ in MODALITIES.values() if m in used),
        categorical=categorical,
        numerical=numerical,
    )
    builder = CohortBuilder(schema, source=str(path))
    repeated = 0
    for p, visits in enumerate(patients):
        events, n_repeated = _patient_visits(visits, p, keys, tables, path)
        repeated += n_repeated
        builder.add(str(p), static[p], events, labels=labels[p] if labels else None)
    metadata = {
        "source_format": "promptehr_pickle",
        "declared_vocabulary": {MODALITIES[k][0]: len(tables[k]) for k in keys},
        "repeated_code_lists": repeated,
    }
    return builder.build(metadata=metadata)


def _check_arguments(
    categorical_names: Sequence[str] | None, label_name: str
) -> list[str] | None:
    if not isinstance(label_name, str) or not label_name:
        raise ConfigError(
            f"The 'label_name' parameter of read_promptehr_pickle must be a non-empty "
            f"string. Got {label_name!r} instead."
        )
    if categorical_names is None:
        return None
    names = list(categorical_names) if not isinstance(categorical_names, str) else []
    if (
        not names
        or not all(isinstance(n, str) and _NAME_PATTERN.match(n) for n in names)
        or len(set(names)) != len(names)
    ):
        raise ConfigError(
            f"The 'categorical_names' parameter of read_promptehr_pickle must be a "
            f"list of unique lower-case identifiers (letters, digits, '_'). Got "
            f"{categorical_names!r} instead."
        )
    return names


def _modality_keys(order: Any, path: Path) -> list[str]:
    """The modality keys of ``order``, checked."""
    if not isinstance(order, (list, tuple)) or not order:
        raise SchemaError(
            f"{path}: field 'order' must be a non-empty list of modality names "
            f"(e.g. ['diag', 'prod', 'med']). Got {order!r}."
        )
    for key in order:
        if not isinstance(key, str) or key not in MODALITIES:
            raise SchemaError(
                f"{path}: field 'order': unknown modality {key!r}; expected names "
                f"among {list(MODALITIES)}."
            )
    if len(set(order)) != len(order):
        raise SchemaError(f"{path}: field 'order' repeats a modality. Got {order!r}.")
    return list(order)


def _code_table(voc: Any, key: str, path: Path) -> dict[int, str]:
    """Code id -> prefixed code string, from ``voc[key].idx2word``."""
    if not isinstance(voc, dict) or key not in voc:
        found = sorted(map(str, voc)) if isinstance(voc, dict) else type(voc).__name__
        raise SchemaError(
            f"{path}: field 'voc' must map each modality of 'order' to its "
            f"vocabulary; {key!r} is missing (got {found})."
        )
    idx2word = getattr(voc[key], "idx2word", None)
    if not isinstance(idx2word, dict):
        raise SchemaError(
            f"{path}: field 'voc'[{key!r}] must be a promptehr.data.Voc with an "
            f"'idx2word' dict. Got {type(voc[key]).__name__} instead."
        )
    prefix = MODALITIES[key][1]
    table = {}
    for index, word in idx2word.items():
        if not isinstance(index, (int, np.integer)) or not isinstance(word, str):
            raise SchemaError(
                f"{path}: field 'voc'[{key!r}].idx2word must map integer ids to code "
                f"strings. Got {index!r}: {word!r}."
            )
        table[int(index)] = prefix + word
    return table


def _patient_list(visits: Any, path: Path) -> list[Any]:
    if not isinstance(visits, (list, tuple)) or not visits:
        raise SchemaError(
            f"{path}: field 'visit' must be a non-empty list with one list of visits "
            f"per patient. Got {type(visits).__name__} of length "
            f"{len(visits) if isinstance(visits, (list, tuple)) else 'n/a'}."
        )
    return list(visits)


def _patient_visits(
    visits: Any,
    p: int,
    keys: list[str],
    tables: Mapping[str, dict[int, str]],
    path: Path,
) -> tuple[list[tuple[None, dict[str, list[str]]]], int]:
    """Patient ``p``'s visits as ``(None, {modality: codes})`` and the number of its
    code lists that repeat a code."""
    if not isinstance(visits, (list, tuple)):
        raise SchemaError(
            f"{path}: field 'visit', patient {p}: expected a list of visits. "
            f"Got {type(visits).__name__}."
        )
    out, repeated = [], 0
    for v, visit in enumerate(visits):
        if not isinstance(visit, (list, tuple)) or len(visit) != len(keys):
            raise SchemaError(
                f"{path}: field 'visit', patient {p}, visit {v}: expected {len(keys)} "
                f"code lists, one per modality of 'order' {keys}. Got {visit!r:.80}."
            )
        events = {}
        for key, codes in zip(keys, visit, strict=True):
            mapped = _map_codes(
                codes, tables[key], f"patient {p}, visit {v}", key, path
            )
            repeated += len(set(mapped)) < len(mapped)
            events[MODALITIES[key][0]] = mapped
        out.append((None, events))
    return out, repeated


def _map_codes(
    codes: Any, table: dict[int, str], where: str, key: str, path: Path
) -> list[str]:
    if isinstance(codes, np.ndarray):
        codes = codes.tolist()
    if not isinstance(codes, (list, tuple)):
        raise SchemaError(
            f"{path}: field 'visit', {where}, modality {key!r}: expected a list of "
            f"code ids. Got {type(codes).__name__}."
        )
    try:
        return [table[code] for code in codes]
    except (KeyError, TypeError):
        bad = next(c for c in codes if not _in_table(c, table))
        raise SchemaError(
            f"{path}: field 'visit', {where}, modality {key!r}: code id {bad!r} is not "
            f"in the vocabulary 'voc'[{key!r}] ({len(table)} codes)."
        ) from None


def _in_table(code: Any, table: dict[int, str]) -> bool:
    try:
        return code in table
    except TypeError:  # unhashable
        return False


def _features(
    data: dict[str, Any], n: int, names: list[str] | None, path: Path
) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...], list[dict[str, Any]]]:
    """The categorical and numerical features of the schema, and each patient's
    static values, from ``feature``, ``n_num_feature`` and ``cat_cardinalties``."""
    if "feature" not in data:
        return {}, (), [{} for _ in range(n)]
    matrix = _feature_matrix(data["feature"], n, path)
    n_num, cardinalities = _feature_layout(data, matrix.shape[1], path)
    if names is None:
        names = [f"cat_{j}" for j in range(len(cardinalities))]
    elif len(names) != len(cardinalities):
        raise ConfigError(
            f"The 'categorical_names' parameter of read_promptehr_pickle must name "
            f"each of the {len(cardinalities)} categorical columns of {path}. Got "
            f"{len(names)} names ({names}) instead."
        )
    numerical = tuple(["age", *(f"num_{j}" for j in range(1, n_num))][:n_num])
    if set(numerical) & set(names):
        raise ConfigError(
            f"The 'categorical_names' parameter of read_promptehr_pickle must not "
            f"reuse the numerical feature names {list(numerical)}. Got {names} instead."
        )
    columns: list[list[Any]] = [matrix[:, j].tolist() for j in range(n_num)]
    for j, (name, k) in enumerate(zip(names, cardinalities, strict=True)):
        column = matrix[:, n_num + j]
        known = ~np.isnan(column)
        bad = known & ((column != np.round(column)) | (column < 0) | (column >= k))
        if bad.any():
            p = int(np.argmax(bad))
            raise SchemaError(
                f"{path}: field 'feature', patient {p}, column {n_num + j} ({name!r}): "
                f"expected a category index in 0..{k - 1} ('cat_cardinalties'). Got "
                f"{column[p]!r}."
            )
        columns.append(
            [str(int(x)) if ok else None for x, ok in zip(column, known, strict=True)]
        )
    categorical = {
        name: tuple(map(str, range(k)))
        for name, k in zip(names, cardinalities, strict=True)
    }
    all_names = [*numerical, *names]
    static = [
        dict(zip(all_names, row, strict=True)) for row in zip(*columns, strict=True)
    ]
    return categorical, numerical, static or [{} for _ in range(n)]


def _feature_matrix(feature: Any, n: int, path: Path) -> np.ndarray:
    matrix = np.asarray(feature) if isinstance(feature, (np.ndarray, list)) else None
    if matrix is None or matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise SchemaError(
            f"{path}: field 'feature' must be a 2-D numerical array (patients x "
            f"features). Got {type(feature).__name__} "
            f"{getattr(matrix, 'shape', '')}."
        )
    if matrix.shape[0] != n:
        raise SchemaError(
            f"{path}: field 'feature' has {matrix.shape[0]} rows but 'visit' has {n} "
            f"patients; expected one row per patient."
        )
    return matrix.astype(np.float64)


def _feature_layout(
    data: dict[str, Any], n_columns: int, path: Path
) -> tuple[int, list[int]]:
    """``n_num_feature`` and ``cat_cardinalties``, checked against the matrix."""
    for key in _FEATURE_KEYS:
        if key not in data:
            raise SchemaError(
                f"{path}: missing field {key!r}, needed to read field 'feature'."
            )
    n_num, cards = data["n_num_feature"], data["cat_cardinalties"]
    if not isinstance(n_num, (int, np.integer)) or not 0 <= n_num <= n_columns:
        raise SchemaError(
            f"{path}: field 'n_num_feature' must be an integer in 0..{n_columns} (the "
            f"columns of 'feature'). Got {n_num!r}."
        )
    if not isinstance(cards, (list, tuple, np.ndarray)) or not all(
        isinstance(k, (int, np.integer)) and k > 0 for k in cards
    ):
        raise SchemaError(
            f"{path}: field 'cat_cardinalties' must be a list of positive integers. "
            f"Got {cards!r}."
        )
    if int(n_num) + len(cards) != n_columns:
        raise SchemaError(
            f"{path}: field 'feature' has {n_columns} columns but 'n_num_feature' "
            f"({n_num}) and 'cat_cardinalties' ({len(cards)} columns) describe "
            f"{int(n_num) + len(cards)}."
        )
    return int(n_num), [int(k) for k in cards]


def _labels(
    data: dict[str, Any], n: int, label_name: str, path: Path
) -> list[dict[str, float]] | None:
    """Each patient's ``{label_name: y}``, or None when the file has no ``y``."""
    if "y" not in data:
        return None
    y = data["y"]
    values = np.asarray(y) if isinstance(y, (list, tuple, np.ndarray)) else None
    if (
        values is None
        or values.shape != (n,)
        or not (values.dtype == bool or np.issubdtype(values.dtype, np.number))
    ):
        raise SchemaError(
            f"{path}: field 'y' must hold one boolean or number per patient ({n}). "
            f"Got {type(y).__name__} of shape {getattr(values, 'shape', 'n/a')}."
        )
    return [{label_name: value} for value in values.astype(np.float64).tolist()]
