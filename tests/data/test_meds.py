"""Tests of MEDS reading and writing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehrgen._io import OutputExistsError
from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.formats.meds import read_meds, write_meds
from ehrgen.errors import ConfigError, SchemaError
from tests.strategies import cohorts


def _cohort() -> Cohort:
    return Cohort.from_patients(
        [
            Patient(
                "10",
                {"gender": "F", "age": 70.5},
                (
                    Visit(
                        {"diagnosis": ["ICD9CM//4019"], "drug": ["ATC//C09A"]},
                        datetime(2020, 1, 1, 8),
                    ),
                    Visit({"lab": ["Creatinine"]}, datetime(2020, 2, 1)),
                ),
            ),
            Patient(
                "11",
                {"gender": "M"},
                (Visit({"procedure": ["ICD9PROC//3722"]}, datetime(2021, 1, 1)),),
            ),
        ],
        labels={"mortality": [1.0, 0.0]},
    )


def _write_foreign(root: Path, table: pa.Table, name: str = "0.parquet") -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "data" / name)
    return root


def _foreign_table(codes, times=None, subjects=None, values=None) -> pa.Table:
    n = len(codes)
    return pa.table(
        {
            "subject_id": pa.array(subjects or [1] * n, pa.int64()),
            "time": pa.array(times or [datetime(2020, 1, 1)] * n, pa.timestamp("us")),
            "code": pa.array(codes, pa.string()),
            "numeric_value": pa.array(values or [None] * n, pa.float32()),
        }
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cohort=cohorts())
def test_round_trip(tmp_path_factory, cohort):
    """Check that read_meds(write_meds(c)) == c, placeholder times included."""
    root = write_meds(cohort, tmp_path_factory.mktemp("meds") / "c")
    assert read_meds(root) == cohort


def test_layout_follows_meds(tmp_path):
    """Check the files, column types, sort order and code spelling of MEDS v0.4."""
    root = write_meds(_cohort(), tmp_path / "c")
    table = pq.read_table(root / "data" / "train" / "0.parquet")
    assert table.schema.field("subject_id").type == pa.int64()
    assert table.schema.field("time").type == pa.timestamp("us")
    assert table.schema.field("code").type == pa.string()
    assert table.schema.field("numeric_value").type == pa.float32()
    rows = table.to_pylist()
    assert [r["code"] for r in rows[:3]] == ["GENDER//F", "AGE", "LABEL//mortality"]
    assert all(r["time"] is None for r in rows[:3]) and rows[1]["numeric_value"] == 70.5
    assert rows[3]["code"] == "DIAGNOSIS//ICD9CM//4019"
    assert rows[3]["time"] == rows[4]["time"] == datetime(2020, 1, 1, 8)
    assert [r["subject_id"] for r in rows] == sorted(r["subject_id"] for r in rows)
    meta = json.loads((root / "metadata" / "dataset.json").read_text())
    assert meta["meds_version"].startswith("0.4") and meta["etl_name"] == "ehrgen"
    codes = (
        pq.read_table(root / "metadata" / "codes.parquet").column("code").to_pylist()
    )
    assert "LAB//Creatinine" in codes and "GENDER//M" in codes
    splits = pq.read_table(root / "metadata" / "subject_splits.parquet").to_pylist()
    assert splits == [
        {"subject_id": 10, "split": "train"},
        {"subject_id": 11, "split": "train"},
    ]


def test_splits_are_written_and_selectable(tmp_path):
    """Check that a {split: cohort} mapping is written in folders and read by split."""
    cohort = _cohort()
    a, b = cohort[[0]], cohort[[1]]
    root = write_meds({"train": a, "held_out": b}, tmp_path / "c")
    assert (root / "data" / "held_out" / "0.parquet").exists()
    assert read_meds(root, split="held_out") == b
    assert read_meds(root, split="train") == a
    with pytest.raises(SchemaError, match="no subject in split 'tuning'"):
        read_meds(root, split="tuning")


def test_existing_output_is_never_overwritten_silently(tmp_path):
    """Check that an existing folder needs overwrite=True, and a failed write leaves
    the old one intact with no temporary folder behind."""
    root = write_meds(_cohort(), tmp_path / "c")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_meds(_cohort(), root)
    with pytest.raises(SchemaError):
        write_meds({}, root, overwrite=True)
    assert read_meds(root) == _cohort()
    write_meds(_cohort()[[1]], root, overwrite=True)
    assert len(read_meds(root)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_foreign_dataset_groups_visits_by_time(tmp_path):
    """Check that another tool's MEDS data become visits by timestamp, with
    modalities from prefixes, static rows as features and MEDS_BIRTH as age."""
    t1, t2 = datetime(2020, 1, 1), datetime(2020, 6, 1)
    table = _foreign_table(
        [
            "MEDS_BIRTH",
            "GENDER//F",
            "DIAGNOSIS//ICD//10//I10",
            "MEDICATION//X",
            "DIAGNOSIS//ICD//10//I10",
            "LAB//50912",
            "MEDS_DEATH",
        ],
        times=[datetime(1950, 1, 1), None, t1, t1, t1, t2, t2],
    )
    cohort = read_meds(_write_foreign(tmp_path / "f", table))
    patient = cohort[0]
    assert patient.static["gender"] == "F"
    assert patient.static["age"] == pytest.approx(70.0, abs=0.01)
    assert [v.events for v in patient.visits] == [
        {"diagnosis": ("ICD//10//I10",), "drug": ("X",)},
        {"lab": ("50912",)},
    ]
    assert cohort.metadata["ignored_meds_codes"] == {"MEDS_BIRTH": 1, "MEDS_DEATH": 1}


def test_foreign_dataset_visits_by_admission_id(tmp_path):
    """Check that a named admission-id column groups events into visits."""
    table = _foreign_table(
        ["DIAGNOSIS//a", "DIAGNOSIS//b", "DIAGNOSIS//c"],
        times=[datetime(2020, 1, 1), datetime(2020, 1, 3), datetime(2020, 2, 1)],
    ).append_column("hadm_id", pa.array([7, 7, 8], pa.int64()))
    cohort = read_meds(_write_foreign(tmp_path / "f", table), visit_id_column="hadm_id")
    assert [v.events["diagnosis"] for v in cohort[0].visits] == [("a", "b"), ("c",)]
    assert cohort[0].visits[0].time == datetime(2020, 1, 1)


def test_unknown_prefixes_are_reported(tmp_path):
    """Check that unmapped prefixes are an error naming them, or dropped and counted."""
    root = _write_foreign(
        tmp_path / "f", _foreign_table(["DIAGNOSIS//a", "VITALS//hr"])
    )
    with pytest.raises(SchemaError, match=r"row 1, column 'code'.*'VITALS' \(1 rows\)"):
        read_meds(root)
    cohort = read_meds(root, unknown_prefixes="drop")
    assert cohort.metadata["dropped_unknown_prefixes"] == {"VITALS": 1}
    mapped = read_meds(
        root, prefix_to_modality={"DIAGNOSIS": "diagnosis", "VITALS": "vital"}
    )
    assert mapped.schema.modalities == ("diagnosis", "vital")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            pa.table(
                {
                    "subject_id": pa.array([1], pa.int64()),
                    "code": pa.array(["DIAGNOSIS//a"]),
                }
            ),
            r"0.parquet: missing column 'time'",
        ),
        (
            _foreign_table(["DIAGNOSIS//a"]).set_column(
                0, "subject_id", pa.array(["1"], pa.string())
            ),
            r"0.parquet, column 'subject_id': expected an integer. Got string",
        ),
        (
            _foreign_table(["DIAGNOSIS//a", None]),
            r"0.parquet, row 1, column 'code': null value",
        ),
        (
            _foreign_table(["DIAGNOSIS//a", "DIAGNOSIS//b"]).set_column(
                0, "subject_id", pa.array([1, None], pa.int64())
            ),
            r"0.parquet, row 1, column 'subject_id': null value",
        ),
        (
            _foreign_table(["GENDER//F"], times=[None]),
            r"holds no visit event: the cohort is empty",
        ),
    ],
)
def test_malformed_data_are_named(tmp_path, table, message):
    """Check that malformed shards are refused naming file, row and column."""
    with pytest.raises(SchemaError, match=message):
        read_meds(_write_foreign(tmp_path / "f", table))


def test_truncated_parquet_is_named(tmp_path):
    """Check that a truncated shard gives a SchemaError naming the file."""
    root = write_meds(_cohort(), tmp_path / "c")
    shard = root / "data" / "train" / "0.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(SchemaError, match=r"0.parquet: not a readable Parquet file"):
        read_meds(root)


def test_not_a_meds_folder(tmp_path):
    """Check that a folder without data shards is refused with a hint."""
    with pytest.raises(SchemaError, match="no data/\\*\\*/\\*.parquet file"):
        read_meds(tmp_path)


def test_non_integer_patient_ids_survive(tmp_path):
    """Check that string patient ids are mapped to int64 subject ids and restored."""
    cohort = Cohort.from_patients(
        [Patient("p-01", {}, (Visit({"drug": ["x"]}, datetime(2020, 1, 1)),))]
    )
    root = write_meds(cohort, tmp_path / "c")
    ids = pq.read_table(root / "data" / "train" / "0.parquet").column("subject_id")
    assert ids.type == pa.int64()
    assert list(read_meds(root).patient_ids) == ["p-01"]
    assert np.array_equal(read_meds(root).labels.get("x", np.zeros(0)), np.zeros(0))


def test_unused_rows_are_listed_by_prefix_and_reason(tmp_path):
    """Check metadata["unused_events"] for each reason a row goes unused."""
    t1, t2 = datetime(2020, 1, 1), datetime(2020, 1, 2)
    table = _foreign_table(
        ["ADMIT//x", "DIAGNOSIS//a", "DIAGNOSIS", "DIAGNOSIS//b", "MEDS_DEATH", "FOO"],
        times=[t1, t2, t2, t2, t2, None],
    ).append_column("adm", pa.array([5, 5, 5, None, None, None], pa.int64()))
    root = _write_foreign(tmp_path / "f", table)
    cohort = read_meds(root, visit_id_column="adm", unknown_prefixes="drop")
    assert cohort.metadata["unused_events"] == [
        {"prefix": "ADMIT", "events": 1, "reason": "no modality mapped"},
        {"prefix": "DIAGNOSIS", "events": 1, "reason": "no adm"},
        {"prefix": "FOO", "events": 1, "reason": "static code with no value and no "
         "numeric_value"},
        {"prefix": "MEDS_DEATH", "events": 1, "reason": "MEDS code, not used"},
    ]  # fmt: skip
    # The visit is at its admission's earliest row, though that row maps to nothing.
    # A mapped code with no "//" is its own code (as "HR" mapped to lab is "HR").
    assert [(v.time, v.events) for v in cohort[0].visits] == [
        (t1, {"diagnosis": ("a", "DIAGNOSIS")})
    ]


def test_static_prefixes(tmp_path):
    """Check that static_prefixes turn timed codes into features (earliest value),
    leave out other static rows, and may not name a mapped prefix."""
    t1, t2 = datetime(2020, 1, 1), datetime(2020, 2, 1)
    table = _foreign_table(
        ["RACE//B", "RACE//A", "DIAGNOSIS//a", "DIAGNOSIS//b", "GENDER//F"],
        times=[t2, t1, t1, t2, None],
    )
    root = _write_foreign(tmp_path / "f", table)
    cohort = read_meds(root, static_prefixes=["RACE"])
    assert cohort[0].static == {"race": "A"}
    assert [v.events["diagnosis"] for v in cohort[0].visits] == [("a",), ("b",)]
    reasons = {u["prefix"]: u["reason"] for u in cohort.metadata["unused_events"]}
    assert reasons == {
        "RACE": "a later value of a static prefix",
        "GENDER": "static; prefix not in static_prefixes",
    }
    with pytest.raises(ConfigError, match=r"\['DIAGNOSIS'\] are both static"):
        read_meds(root, static_prefixes=["DIAGNOSIS"])
    with pytest.raises(ConfigError, match="must be a list of prefixes"):
        read_meds(root, static_prefixes="RACE")


def test_visit_id_column_with_no_ids_is_an_error(tmp_path):
    """Check that a visit-id column holding only nulls is a clear error."""
    table = _foreign_table(["DIAGNOSIS//a"]).append_column(
        "adm", pa.array([None], pa.int64())
    )
    with pytest.raises(SchemaError, match="No visit event has a 'adm'"):
        read_meds(_write_foreign(tmp_path / "f", table), visit_id_column="adm")


def _shards(rows: list[tuple], tmp: Path, assign) -> Path:
    """(subject, day, code, value) rows written over shards by ``assign(i, row)``."""
    by_shard: dict[int, list[tuple]] = {}
    for i, row in enumerate(rows):
        by_shard.setdefault(assign(i, row), []).append(row)
    for shard, part in by_shard.items():
        subjects, days, codes, values = (list(c) for c in zip(*part))
        times = [None if d is None else datetime(2020, 1, 1) + timedelta(days=d)
                 for d in days]  # fmt: skip
        table = _foreign_table(codes, times, subjects, values)
        _write_foreign(tmp, table, f"{shard}.parquet")
    return tmp


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(1, 6),
            st.one_of(st.none(), st.integers(0, 5)),
            st.sampled_from(
                [
                    "DIAGNOSIS//a",
                    "DIAGNOSIS//b",
                    "LAB//c",
                    "DRUG//d",
                    "GENDER//F",
                    "MEDS_BIRTH",
                ]
            ),
            st.one_of(st.none(), st.floats(0, 10, width=32)),
        ),
        min_size=1,
        max_size=40,
    ).filter(
        lambda rows: any(
            r[1] is not None and "//" in r[2] and "GENDER" not in r[2] for r in rows
        )
    ),
    shards=st.integers(1, 4),
)
def test_shards_read_apart_give_the_cohort_read_at_once(tmp_path_factory, rows, shards):
    """Check that the shard-by-shard read equals one read of all rows (in the
    shards' order), whether each subject lies in one shard or (falling back to one
    read) in several; static rows may lie in any shard."""
    for assign in (lambda i, r: r[0] % shards, lambda i, r: i % shards):
        ordered = sorted(enumerate(rows), key=lambda item: assign(*item))
        whole = _shards([r for _, r in ordered], tmp_path_factory.mktemp("w"),
                        lambda i, r: 0)  # fmt: skip
        apart = _shards(rows, tmp_path_factory.mktemp("a"), assign)
        expected = read_meds(whole, unknown_prefixes="drop")
        cohort = read_meds(apart, unknown_prefixes="drop")
        assert cohort == expected
        assert cohort.metadata["unused_events"] == expected.metadata["unused_events"]


def test_many_shards_join_into_the_cohort_written(tmp_path):
    """Check a read over many shards whose joined arrays outgrow their first
    allocation (thousands of events and visits, lab values included)."""
    from ehrgen.data.demo import demo_cohort

    cohort = demo_cohort(400, seed=3)
    assert cohort.n_events > 5000 and cohort.event_values is not None
    root = write_meds(cohort, tmp_path / "c", shard_patients=37)
    assert len(list((root / "data").rglob("*.parquet"))) == 11
    assert read_meds(root) == cohort
