"""Tests of read_jsonl / write_jsonl: round trips, errors, overwrite and atomicity."""

from __future__ import annotations

import json
import math
import re
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehrgen.data import Cohort, CohortSchema, Patient, Visit
from ehrgen.data.formats.jsonl import read_jsonl, schema_sidecar, write_jsonl
from ehrgen.errors import EhrgenError, SchemaError
from tests.strategies import SCHEMA, cohorts

label_values = st.one_of(
    st.just(math.nan), st.floats(width=32, allow_nan=False, allow_infinity=False)
)


@st.composite
def labelled_cohorts(draw) -> Cohort:
    """Cohorts from tests.strategies, with labels (some missing) and metadata."""
    cohort = draw(cohorts())
    names = draw(st.lists(st.text(min_size=1, max_size=6), max_size=2, unique=True))
    n = len(cohort)
    labels = {
        name: draw(st.lists(label_values, min_size=n, max_size=n)) for name in names
    }
    metadata = {"source": draw(st.text(max_size=8)), "n": n}
    return Cohort.from_patients(
        list(cohort), cohort.schema, labels=labels, metadata=metadata
    )


def small_cohort(with_times: bool = True) -> Cohort:
    """Two patients, one labelled, unicode codes included."""

    def time(day: int) -> datetime | None:
        return datetime(2020, 1, day, 8, 30) if with_times else None

    patients = [
        Patient(
            "a",
            {"gender": "F", "age": 70.5},
            (
                Visit({"diagnosis": ["4019", "25000"], "drug": ["N02B"]}, time(1)),
                Visit({"lab": ["Créatinine\u2028x"]}, time(3)),
            ),
        ),
        Patient(
            "b", {"ethnicity": "asian"}, (Visit({"procedure": ["3893"]}, time(2)),)
        ),
    ]
    return Cohort.from_patients(
        patients, SCHEMA, labels={"mortality": [1.0, math.nan]}, metadata={"k": [1]}
    )


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- round trip


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cohort=labelled_cohorts())
def test_round_trip_keeps_the_cohort(cohort):
    """Check that read_jsonl(write_jsonl(c)) == c, metadata included."""
    with tempfile.TemporaryDirectory() as folder:
        path = write_jsonl(cohort, Path(folder) / "cohort.jsonl")
        again = read_jsonl(path)
        assert files_in(Path(folder)) == ["cohort.jsonl", "cohort.jsonl.schema.json"]
    assert again == cohort
    assert again.metadata == cohort.metadata
    assert list(again.labels) == list(cohort.labels)


def test_round_trip_with_placeholder_times_writes_null(tmp_path):
    """Check that placeholder times are written as null and come back as such."""
    cohort = small_cohort(with_times=False)
    assert cohort.times_are_placeholders
    path = write_jsonl(cohort, tmp_path / "c.jsonl")
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert [visit["time"] for visit in first["visits"]] == [None, None]
    again = read_jsonl(path)
    assert again.times_are_placeholders
    assert again == cohort


def test_written_lines_follow_the_documented_format(tmp_path):
    """Check the exact JSON of a line and the sidecar's content."""
    cohort = small_cohort()
    path = write_jsonl(cohort, tmp_path / "c.jsonl")
    text = path.read_text(encoding="utf-8")
    # Unicode line separators in codes are escaped, so any line splitter works.
    assert text.splitlines() == text.split("\n")[:-1]
    lines = text.split("\n")
    assert len(lines) == 3 and lines[-1] == ""
    assert "\\u2028" in lines[0]
    assert json.loads(lines[0]) == {
        "patient_id": "a",
        "static": {"gender": "F", "age": 70.5},
        "visits": [
            {
                "time": "2020-01-01T08:30:00",
                "events": {"diagnosis": ["4019", "25000"], "drug": ["N02B"]},
            },
            {"time": "2020-01-03T08:30:00", "events": {"lab": ["Créatinine\u2028x"]}},
        ],
        "labels": {"mortality": 1.0},
    }
    assert json.loads(lines[1])["labels"] == {"mortality": None}
    assert json.loads(schema_sidecar(path).read_text(encoding="utf-8")) == {
        "schema": SCHEMA.to_dict(),
        "times_are_placeholders": False,
        "metadata": {"k": [1]},
    }


def test_no_labels_key_when_the_cohort_has_none(tmp_path):
    """Check that lines carry no 'labels' key for a cohort without labels."""
    cohort = Cohort.from_patients(list(small_cohort()), SCHEMA)
    path = write_jsonl(cohort, tmp_path / "c.jsonl")
    assert all("labels" not in json.loads(line) for line in path.open())
    assert read_jsonl(path).labels == {}


def test_schema_argument_wins_over_sidecar_and_inference(tmp_path):
    """Check the schema order of preference: argument, sidecar, inference."""
    cohort = small_cohort()
    path = write_jsonl(cohort, tmp_path / "c.jsonl")
    wider = CohortSchema(
        modalities=(*SCHEMA.modalities, "note"),
        categorical=SCHEMA.categorical,
        numerical=SCHEMA.numerical,
    )
    assert read_jsonl(path, schema=wider).schema == wider
    assert read_jsonl(path).schema == SCHEMA
    schema_sidecar(path).unlink()
    inferred = read_jsonl(path)
    assert inferred.schema.categorical == {"ethnicity": ("asian",), "gender": ("F",)}
    assert list(inferred) == list(cohort)
    assert inferred.metadata == {}


def test_hand_written_lines_are_read(tmp_path):
    """Check that minimal lines (no static, null time, int id, UTC offset) read."""
    path = tmp_path / "hand.jsonl"
    path.write_text(
        "\ufeff"
        '{"patient_id": 7, "visits": [{"time": "2020-01-01T01:00:00+01:00", '
        '"events": {"diagnosis": ["4019"]}}], "labels": {"y": true}}\n'
        "\n"
        '{"patient_id": "8", "static": {"age": 3, "gender": null}, "visits": '
        '[{"time": "2020-02-01", "events": {"drug": ["N02B", "N02B"]}}]}\n',
        encoding="utf-8",
    )
    cohort = read_jsonl(path)
    assert cohort[0].patient_id == "7"
    assert cohort[0].visits[0].time == datetime(2020, 1, 1)
    assert cohort[1].static == {"age": 3.0}
    assert cohort[1].visits[0].events == {"drug": ("N02B",)}
    assert cohort.labels["y"][0] == 1.0 and math.isnan(cohort.labels["y"][1])


# --------------------------------------------------------------------------- errors

GOOD = '{"patient_id": "1", "visits": [{"time": null, "events": {"diagnosis": ["x"]}}]}'
BAD_LINES = {
    "invalid json": ('{"patient_id": "2", "visits": [}', "invalid JSON"),
    "not an object": ("[1, 2]", "expected a JSON object"),
    "missing id": ('{"visits": []}', "field 'patient_id': expected a non-empty"),
    "visits not a list": (
        '{"patient_id": "2", "visits": {"time": null}}',
        "field 'visits': expected a list",
    ),
    "bad time": (
        '{"patient_id": "2", "visits": [{"time": "yesterday", "events": {}}]}',
        r"field 'visits\[0\].time': expected an ISO 8601 time",
    ),
    "code not a string": (
        '{"patient_id": "2", "visits": [{"time": null, '
        '"events": {"drug": ["a", 4019]}}]}',
        r"field 'visits\[0\].events.drug\[1\]': codes must be non-empty strings",
    ),
    "codes not a list": (
        '{"patient_id": "2", "visits": [{"time": null, "events": {"drug": "a"}}]}',
        r"field 'visits\[0\].events.drug': expected a list",
    ),
    "unknown modality": (
        '{"patient_id": "2", "visits": [{"time": null, "events": {"vitals": ["a"]}}]}',
        "field 'modality': unknown modality 'vitals'",
    ),
    "unknown key": (
        '{"patient_id": "2", "visit": []}',
        "field 'visit': unknown key in a patient.*Did you mean 'visits'",
    ),
    "bad static": (
        '{"patient_id": "2", "static": {"age": true}, "visits": []}',
        "field 'static.age': expected a string",
    ),
    "unknown category": (
        '{"patient_id": "2", "static": {"gender": "X"}, "visits": '
        '[{"time": null, "events": {"drug": ["a"]}}]}',
        "field 'gender': unknown category 'X'",
    ),
    "bad label": (
        '{"patient_id": "2", "visits": [], "labels": {"y": "yes"}}',
        "field 'labels.y': expected a number",
    ),
    "duplicate id": (
        '{"patient_id": "1", "visits": [{"time": null, "events": {"drug": ["a"]}}]}',
        "patient '1': duplicate patient id",
    ),
    "times mixed": (
        '{"patient_id": "2", "visits": [{"time": "2020-01-01", '
        '"events": {"drug": ["a"]}}]}',
        r"field 'visits\[0\].time': this visit has a time but a visit on line 1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_line_names_file_line_and_field(tmp_path, case):
    """Check that a faulty second line raises a SchemaError naming path:2 and field."""
    line, message = BAD_LINES[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n{line}\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=re.escape(f"{path}:2") + ".*" + message):
        read_jsonl(path, schema=SCHEMA)


def test_non_utf8_bytes_name_the_line(tmp_path):
    """Check that bytes that are not UTF-8 raise a SchemaError naming the line."""
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        GOOD.encode() + b"\n" + GOOD.replace('"x"', '"\xe9"').encode("latin-1")
    )
    with pytest.raises(SchemaError, match=re.escape(f"{path}:2: not UTF-8")):
        read_jsonl(path)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file_has_no_patient(tmp_path, content):
    """Check that a file without any patient line is a SchemaError."""
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SchemaError, match="no patient"):
        read_jsonl(path)


def test_missing_file_is_a_schema_error(tmp_path):
    """Check that reading a missing file raises a SchemaError naming it."""
    path = tmp_path / "absent.jsonl"
    with pytest.raises(SchemaError, match=re.escape(f"{path}: cannot open")):
        read_jsonl(path)


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        ("{not json", "unreadable schema sidecar"),
        ('{"metadata": {}}', "field 'schema': missing"),
        ('{"schema": {"modalitis": ["a"]}}', "field 'schema'.*Did you mean"),
    ],
)
def test_broken_sidecar_is_named(tmp_path, sidecar, message):
    """Check that a broken sidecar raises a SchemaError naming the sidecar."""
    path = tmp_path / "c.jsonl"
    path.write_text(GOOD + "\n", encoding="utf-8")
    schema_sidecar(path).write_text(sidecar, encoding="utf-8")
    with pytest.raises(SchemaError, match=message) as info:
        read_jsonl(path)
    assert str(schema_sidecar(path)) in str(info.value)


# --------------------------------------------------------------------------- writing


def test_existing_files_are_not_overwritten(tmp_path):
    """Check that an existing file or sidecar is kept unless overwrite=True."""
    cohort = small_cohort()
    path = write_jsonl(cohort, tmp_path / "c.jsonl")
    before = path.read_bytes()
    smaller = cohort[:1]
    with pytest.raises(EhrgenError, match="already exists; pass overwrite=True"):
        write_jsonl(smaller, path)
    assert path.read_bytes() == before
    path.unlink()
    with pytest.raises(FileExistsError, match=re.escape(str(schema_sidecar(path)))):
        write_jsonl(smaller, path)
    write_jsonl(smaller, path, overwrite=True)
    assert read_jsonl(path) == smaller


def test_missing_folders_are_created(tmp_path):
    """Check that writing into a folder that does not exist creates it."""
    path = write_jsonl(small_cohort(), tmp_path / "new" / "deeper" / "c.jsonl")
    assert read_jsonl(path) == small_cohort()


def test_write_leaves_no_temporary_file(tmp_path):
    """Check that a successful write leaves only the two target files."""
    write_jsonl(small_cohort(), tmp_path / "c.jsonl")
    write_jsonl(small_cohort(False), tmp_path / "c.jsonl", overwrite=True)
    assert files_in(tmp_path) == ["c.jsonl", "c.jsonl.schema.json"]


def test_failed_write_keeps_old_files_and_leaves_no_temporary(tmp_path):
    """Check that a write failing midway leaves the old files intact and no debris."""
    path = write_jsonl(small_cohort(), tmp_path / "c.jsonl")
    before = (path.read_bytes(), schema_sidecar(path).read_bytes())
    infinite = Cohort.from_patients(
        list(small_cohort()), SCHEMA, labels={"y": [0.0, math.inf]}
    )
    with pytest.raises(SchemaError, match="patient 'b' as JSON"):
        write_jsonl(infinite, path, overwrite=True)
    assert (path.read_bytes(), schema_sidecar(path).read_bytes()) == before
    assert files_in(tmp_path) == ["c.jsonl", "c.jsonl.schema.json"]
    opaque = Cohort.from_patients(list(small_cohort()), metadata={"x": object()})
    with pytest.raises(SchemaError, match="metadata as JSON"):
        write_jsonl(opaque, tmp_path / "d.jsonl")
    assert files_in(tmp_path) == ["c.jsonl", "c.jsonl.schema.json"]
