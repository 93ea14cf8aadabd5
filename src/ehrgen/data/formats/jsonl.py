"""JSON Lines: one patient per line, for people and small tools.

Each line is one JSON object::

    {"patient_id": "17", "static": {"gender": "F", "age": 70.0},
     "visits": [{"time": "2020-01-01T00:00:00", "events": {"diagnosis": ["4019"]}}],
     "labels": {"mortality": 0.0}}

``static`` holds the known baseline features (a missing one is absent or null), ``time``
is an ISO 8601 time or null (a cohort with placeholder times is written with null
times), ``events`` maps a modality to its codes, ``values`` (written only for visits
with one) maps a modality to ``{code: number}`` for the codes with a numeric result
(``{"lab": {"50912//mg/dL": 1.4}}``), and ``labels`` (written only when the cohort has
labels; null when missing) holds patient-level outcomes.

Beside ``cohort.jsonl`` a sidecar ``cohort.jsonl.schema.json`` keeps what lines cannot:
the schema (modality order, every category, even unused ones), whether times are
placeholders, and the cohort's metadata. Both files are written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from ehrgen._io import atomic_file
from ehrgen.data import Cohort, CohortBuilder, CohortSchema, Patient, Visit
from ehrgen.errors import SchemaError, did_you_mean

__all__ = ["read_jsonl", "schema_sidecar", "write_jsonl"]

_PATIENT_KEYS = ("patient_id", "static", "visits", "labels")
_VISIT_KEYS = ("time", "events", "values")
_SIDECAR_KEYS = ("schema", "times_are_placeholders", "metadata")
_LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


def schema_sidecar(path: str | Path) -> Path:
    """The schema sidecar of a JSON Lines file: ``<path>.schema.json``.

    Example:
        >>> schema_sidecar("out/cohort.jsonl").name
        'cohort.jsonl.schema.json'
    """
    path = Path(path)
    return path.with_name(path.name + ".schema.json")


# --------------------------------------------------------------------------- writing


def write_jsonl(cohort: Cohort, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a cohort as JSON Lines, plus its schema sidecar.

    Both files are first written to temporary files in the same folder and then
    renamed over their targets (the sidecar first), so a reader never sees a partly
    written file and a failed write leaves the old files as they were. Missing
    folders are created.

    Args:
        cohort: the cohort to write.
        path: the ``.jsonl`` file; the sidecar is ``<path>.schema.json``.
        overwrite: replace existing files (otherwise an existing file is an error).

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: the file or its sidecar exists and ``overwrite`` is False
            (an :class:`~ehrgen.errors.EhrgenError` and a :class:`FileExistsError`).
        SchemaError: a label or the metadata cannot be written as JSON.

    Example:
        >>> import tempfile
        >>> cohort = Cohort.from_patients(
        ...     [Patient("1", {"gender": "F"}, (Visit({"diagnosis": ["4019"]}),))]
        ... )
        >>> path = write_jsonl(cohort, Path(tempfile.mkdtemp()) / "cohort.jsonl")
        >>> read_jsonl(path) == cohort
        True
    """
    path = Path(path)
    sidecar = schema_sidecar(path)
    header = _dumps(
        {
            "schema": cohort.schema.to_dict(),
            "times_are_placeholders": cohort.times_are_placeholders,
            "metadata": cohort.metadata,
        },
        f"{sidecar}: the cohort's metadata",
        indent=2,
    )
    # The inner block's file is renamed first: a crash in between leaves the new
    # schema beside the old lines, never new lines without their schema.
    with (
        atomic_file(path, overwrite=overwrite) as lines_tmp,
        atomic_file(sidecar, overwrite=overwrite) as sidecar_tmp,
    ):
        _write_text(lines_tmp, lambda file: _write_lines(cohort, file))
        _write_text(sidecar_tmp, lambda file: file.write(header + "\n"))
    return path


def _write_text(path: Path, write: Callable[[TextIO], Any]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as file:
        write(file)
        file.flush()
        # Make the data durable before the rename makes it visible.
        os.fsync(file.fileno())


def _write_lines(cohort: Cohort, file: TextIO) -> None:
    labels = {name: values.tolist() for name, values in cohort.labels.items()}
    for p, patient in enumerate(cohort):
        record = _patient_record(patient)
        if labels:
            record["labels"] = {
                name: None if math.isnan(values[p]) else values[p]
                for name, values in labels.items()
            }
        file.write(_dumps(record, f"patient {patient.patient_id!r}") + "\n")


def _patient_record(patient: Patient) -> dict[str, Any]:
    return {
        "patient_id": patient.patient_id,
        "static": dict(patient.static),
        "visits": [_visit_record(visit) for visit in patient.visits],
    }


def _visit_record(visit: Visit) -> dict[str, Any]:
    record: dict[str, Any] = {
        "time": None if visit.time is None else visit.time.isoformat(),
        "events": {m: list(codes) for m, codes in visit.events.items()},
    }
    if visit.values:
        record["values"] = {m: dict(by_code) for m, by_code in visit.values.items()}
    return record


def _dumps(value: Any, what: str, indent: int | None = None) -> str:
    # Strict JSON (no NaN or Infinity), so that any JSON tool can read the file;
    # non-ASCII codes stay readable, except the characters that str.splitlines and
    # similar tools take for line breaks (JSON escapes the ASCII ones itself).
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, indent=indent)
    except (TypeError, ValueError) as err:
        raise SchemaError(
            f"Cannot write {what} as JSON: {err}. Values must be strings, finite "
            f"numbers, lists or dicts."
        ) from None
    return text.translate(_LINE_BREAKS)


# --------------------------------------------------------------------------- reading


class _Record(NamedTuple):
    """One parsed line."""

    line: int
    patient_id: str
    static: dict[str, str | float]
    visits: list[tuple[datetime | None, dict[str, list[str]], dict[str, dict]]]
    labels: dict[str, float] | None


def read_jsonl(path: str | Path, *, schema: CohortSchema | None = None) -> Cohort:
    """Read a cohort from JSON Lines (see the module docstring for the format).

    The schema is ``schema`` when given, else the sidecar's (``<path>.schema.json``)
    when there is one, else inferred from the patients
    (:meth:`CohortSchema.infer`). The sidecar also gives the metadata. Whether times
    are placeholders follows the lines: when every time is null, visits get
    placeholder times.

    Args:
        path: the ``.jsonl`` file.
        schema: the schema to read with (unknown modalities or features are errors).

    Returns:
        The cohort.

    Raises:
        SchemaError: the file is missing, empty or malformed; the message names the
            file, the line and the field.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "cohort.jsonl"
        >>> _ = path.write_text(
        ...     '{"patient_id": "1", "visits": [{"time": null, '
        ...     '"events": {"diagnosis": ["4019"]}}]}\\n'
        ... )
        >>> read_jsonl(path)[0].visits[0].codes("diagnosis")
        ('4019',)
    """
    path = Path(path)
    header = _read_sidecar(path)
    records = list(_parse_file(path))
    if not records:
        raise SchemaError(
            f"{path}: no patient; expected one JSON object per line, one per patient."
        )
    _check_time_mix(records, path)
    sidecar_schema, metadata = header if header is not None else (None, None)
    schema = schema or sidecar_schema or CohortSchema.infer(_as_patients(records))
    builder = CohortBuilder(schema, source=str(path))
    for record in records:
        # The builder names its source in errors; make that the line.
        builder.source = f"{path}:{record.line}"
        builder.add(record.patient_id, record.static, record.visits, record.labels)
    builder.source = str(path)
    return builder.build(metadata=metadata)


def _read_sidecar(path: Path) -> tuple[CohortSchema, dict[str, Any]] | None:
    """The sidecar's schema and metadata, or None when there is no sidecar."""
    sidecar = schema_sidecar(path)
    if not sidecar.exists():
        return None
    try:
        header = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SchemaError(
            f"{sidecar}: unreadable schema sidecar ({err}). Fix or delete it, or pass "
            f"schema= to read_jsonl."
        ) from None
    if not isinstance(header, dict) or "schema" not in header:
        raise SchemaError(
            f"{sidecar}, field 'schema': missing; expected an object with keys "
            f"{list(_SIDECAR_KEYS)}."
        )
    _check_keys(header, _SIDECAR_KEYS, str(sidecar), "sidecar")
    metadata = header.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise SchemaError(
            f"{sidecar}, field 'metadata': expected an object. "
            f"Got {type(metadata).__name__}."
        )
    try:
        return CohortSchema.from_dict(header["schema"]), metadata
    except (SchemaError, TypeError, AttributeError) as err:
        raise SchemaError(f"{sidecar}, field 'schema': {err}") from None


def _parse_file(path: Path) -> Iterator[_Record]:
    try:
        file = path.open("rb")
    except OSError as err:
        raise SchemaError(
            f"{path}: cannot open the JSON Lines file ({err.strerror or err}). Check "
            f"the path."
        ) from None
    with file:
        # Binary lines split on b"\n" only; text mode would also split on the
        # Unicode line separators that a code string may hold.
        for number, raw in enumerate(file, start=1):
            if raw.strip():
                yield _parse_line(raw, number, f"{path}:{number}")


def _parse_line(raw: bytes, number: int, where: str) -> _Record:
    try:
        # A byte-order mark may start the first line of files saved by some editors.
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise SchemaError(
            f"{where}: not UTF-8 text (byte {err.start + 1} of the line). Save the "
            f"file as UTF-8."
        ) from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise SchemaError(
            f"{where}: invalid JSON ({err.msg} at column {err.colno}); expected one "
            f"JSON object per line."
        ) from None
    if not isinstance(record, dict):
        raise SchemaError(
            f"{where}: expected a JSON object (one patient). "
            f"Got {type(record).__name__}."
        )
    _check_keys(record, _PATIENT_KEYS, where, "patient")
    visits = record.get("visits")
    if not isinstance(visits, list):
        raise SchemaError(
            f"{where}, field 'visits': expected a list of visits. "
            f"Got {_describe(visits)}."
        )
    return _Record(
        line=number,
        patient_id=_parse_patient_id(record.get("patient_id"), where),
        static=_parse_static(record.get("static"), where),
        visits=[_parse_visit(visit, i, where) for i, visit in enumerate(visits)],
        labels=_parse_labels(record.get("labels"), where),
    )


def _parse_patient_id(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise SchemaError(
            f"{where}, field 'patient_id': expected a non-empty string. "
            f"Got {_describe(value)}."
        )
    return value


def _parse_static(value: Any, where: str) -> dict[str, str | float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SchemaError(
            f"{where}, field 'static': expected an object feature -> value. "
            f"Got {_describe(value)}."
        )
    static: dict[str, str | float] = {}
    for name, feature in value.items():
        if feature is None:  # missing, as if absent
            continue
        if isinstance(feature, bool) or not isinstance(feature, (str, int, float)):
            raise SchemaError(
                f"{where}, field 'static.{name}': expected a string (categorical) or "
                f"a number (numerical). Got {_describe(feature)}."
            )
        static[name] = feature
    return static


def _parse_visit(
    visit: Any, i: int, where: str
) -> tuple[datetime | None, dict[str, list[str]], dict[str, dict[str, float]]]:
    field = f"visits[{i}]"
    if not isinstance(visit, dict):
        raise SchemaError(
            f"{where}, field '{field}': expected an object with 'time' and "
            f"'events'. Got {_describe(visit)}."
        )
    _check_keys(visit, _VISIT_KEYS, where, field)
    events = visit.get("events")
    if not isinstance(events, dict):
        raise SchemaError(
            f"{where}, field '{field}.events': expected an object modality -> codes. "
            f"Got {_describe(events)}."
        )
    for modality, codes in events.items():
        if not isinstance(codes, list):
            raise SchemaError(
                f"{where}, field '{field}.events.{modality}': expected a list of "
                f"code strings. Got {_describe(codes)}."
            )
        for j, code in enumerate(codes):
            if not isinstance(code, str) or not code:
                raise SchemaError(
                    f"{where}, field '{field}.events.{modality}[{j}]': codes must be "
                    f"non-empty strings. Got {_describe(code)}."
                )
    values = _parse_values(visit.get("values"), events, where, f"{field}.values")
    return _parse_time(visit.get("time"), where, f"{field}.time"), events, values


def _parse_values(
    values: Any, events: dict[str, list[str]], where: str, field: str
) -> dict[str, dict[str, float]]:
    """``{modality: {code: number}}`` for codes of the visit (null: none)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SchemaError(
            f"{where}, field '{field}': expected an object modality -> {{code: "
            f"number}}. Got {_describe(values)}."
        )
    parsed: dict[str, dict[str, float]] = {}
    for modality, by_code in values.items():
        if not isinstance(by_code, dict):
            raise SchemaError(
                f"{where}, field '{field}.{modality}': expected an object code -> "
                f"number. Got {_describe(by_code)}."
            )
        for code, number in by_code.items():
            if code not in events.get(modality, ()):
                raise SchemaError(
                    f"{where}, field '{field}.{modality}.{code}': not one of the "
                    f"visit's {modality} codes."
                )
            if number is None:
                continue
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise SchemaError(
                    f"{where}, field '{field}.{modality}.{code}': expected a number. "
                    f"Got {_describe(number)}."
                )
            parsed.setdefault(modality, {})[code] = float(number)
    return parsed


def _parse_time(value: Any, where: str, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        time = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        time = None
    if time is None:
        raise SchemaError(
            f"{where}, field '{field}': expected an ISO 8601 time such as "
            f"'2020-01-01T08:30:00', or null. Got {_describe(value)}."
        )
    if time.tzinfo is not None:
        # Cohorts hold naive times; keep the instant by converting to UTC.
        time = time.astimezone(timezone.utc).replace(tzinfo=None)
    return time


def _parse_labels(value: Any, where: str) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SchemaError(
            f"{where}, field 'labels': expected an object name -> number. "
            f"Got {_describe(value)}."
        )
    labels = {}
    for name, label in value.items():
        if label is not None and not isinstance(label, (int, float)):
            raise SchemaError(
                f"{where}, field 'labels.{name}': expected a number, a boolean or "
                f"null. Got {_describe(label)}."
            )
        labels[name] = math.nan if label is None else float(label)
    return labels


def _check_keys(
    record: dict[str, Any], known: tuple[str, ...], where: str, what: str
) -> None:
    for key in record:
        if key not in known:
            raise SchemaError(
                f"{where}, field {key!r}: unknown key in a {what}; expected keys among "
                f"{list(known)}.{did_you_mean(key, known)}"
            )


def _check_time_mix(records: list[_Record], path: Path) -> None:
    """Every visit has a time, or none has: name the first line that breaks it."""
    first_line = {True: 0, False: 0}  # has a time -> first line seen
    describe = {True: "has a time", False: "has no time"}
    for record in records:
        for i, (time, *_) in enumerate(record.visits):
            kind = time is not None
            first_line[kind] = first_line[kind] or record.line
            if first_line[not kind]:
                raise SchemaError(
                    f"{path}:{record.line}, field 'visits[{i}].time': this visit "
                    f"{describe[kind]} but a visit on line {first_line[not kind]} "
                    f"{describe[not kind]}; give every visit a time, or none "
                    f"(placeholders are then used)."
                )


def _as_patients(records: Iterable[_Record]) -> Iterator[Patient]:
    for record in records:
        visits = tuple(
            Visit(events, time, values) for time, events, values in record.visits
        )
        yield Patient(record.patient_id, record.static, visits)


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({type(value).__name__})" if value is not None else "null"
