"""Tests of how MEDS events become visits (``visit_by``, ``--visit-by``): by admission
and discharge codes, by a time window, and on datasets made by ``meds-testing-helpers``
(a third-party generator)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrgen.data.formats.meds import read_meds
from ehrgen.errors import ConfigError
from tests.data.fixtures_meds_extract import write_meds_extract
from tests.data.test_import_cli import MEDS_EXTRACT_ARGS, invoke

T0 = datetime(2020, 1, 1, 8)


def _write(root, rows):
    """A MEDS folder of (subject, hours after T0 or None, code) rows."""
    subject, hours, code = zip(*rows)
    table = pa.table(
        {
            "subject_id": pa.array(subject, pa.int64()),
            "time": pa.array(
                [None if h is None else T0 + timedelta(hours=h) for h in hours],
                pa.timestamp("us"),
            ),
            "code": pa.array(code, pa.string()),
            "numeric_value": pa.array([None] * len(rows), pa.float32()),
        }
    )
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / "data" / "0.parquet")
    return root


STAYS = [
    (1, 0, "HOSPITAL_ADMISSION//EW"),
    (1, 1, "LAB//a"),
    (1, 30, "DIAGNOSIS//x"),  # stamped at discharge: in the stay
    (1, 30, "HOSPITAL_DISCHARGE//HOME"),
    (1, 100, "LAB//b"),  # between stays
    (1, 200, "HOSPITAL_ADMISSION//URGENT"),  # no discharge: lasts until the next
    (1, 250, "LAB//c"),
    (1, 300, "HOSPITAL_DISCHARGE//TRANSFER"),
    (1, 300, "HOSPITAL_ADMISSION//TRANSFER"),  # the same instant as a discharge
    (1, 300, "DIAGNOSIS//y"),  # goes to the stay that opens
    (1, 310, "HOSPITAL_DISCHARGE//HOME"),
    (2, -5, "LAB//d"),  # before any admission
    (2, 0, "HOSPITAL_ADMISSION//EW"),
    (2, 2, "DRUG//z"),
]


def test_admission_visits_hold_the_events_from_admission_to_discharge(tmp_path):
    """Check stays: discharge-time events in, events between stays out (counted),
    an unclosed admission lasting until the next one, a transfer at one instant."""
    root = _write(tmp_path / "m", STAYS)
    cohort = read_meds(root, visit_by="admission")
    first, second = cohort
    assert [(v.time, v.events) for v in first.visits] == [
        (T0, {"diagnosis": ("x",), "lab": ("a",)}),
        (T0 + timedelta(hours=200), {"lab": ("c",)}),
        (T0 + timedelta(hours=300), {"diagnosis": ("y",)}),
    ]
    assert [(v.time, v.events) for v in second.visits] == [(T0, {"drug": ("z",)})]
    unused = {(u["prefix"], u["reason"]): u["events"]
              for u in cohort.metadata["unused_events"]}  # fmt: skip
    assert unused == {
        ("HOSPITAL_ADMISSION", "admission or discharge (visit boundary)"): 4,
        ("HOSPITAL_DISCHARGE", "admission or discharge (visit boundary)"): 3,
        ("LAB", "outside any admission"): 2,
    }


def test_a_mapped_admission_code_is_an_event_of_its_stay(tmp_path):
    root = _write(tmp_path / "m", STAYS)
    cohort = read_meds(
        root,
        visit_by="admission",
        prefix_to_modality={"HOSPITAL_ADMISSION": "admission", "LAB": "lab"},
        unknown_prefixes="drop",
    )
    assert [v.events for v in cohort[0].visits] == [
        {"admission": ("EW",), "lab": ("a",)},
        {"admission": ("URGENT",), "lab": ("c",)},
        {"admission": ("TRANSFER",)},
    ]


def test_window_visits_split_where_events_are_further_apart_than_the_window(
    tmp_path,
):
    rows = [(1, h, "LAB//a") for h in (0, 20, 40, 70, 71, 200)]
    root = _write(tmp_path / "m", rows)
    hours = [
        [round((v.time - T0).total_seconds() / 3600) for v in p.visits]
        for p in read_meds(root, visit_by="window:24h")
    ]
    assert hours == [[0, 70, 200]]  # 0-20-40 chain, then 70-71, then 200
    assert read_meds(root, visit_by="window:1d").n_visits == 3
    assert read_meds(root, visit_by="window:30min").n_visits == 6
    assert read_meds(root, visit_by="window:2.5d").n_visits == 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"visit_by": "id"}, "visit_id_column"),
        ({"visit_by": "window:0h"}, "positive duration"),
        ({"visit_by": "window:3 weeks"}, "positive duration"),
        ({"visit_by": "stay"}, "time, id, admission or window"),
        ({"visit_by": "time", "visit_id_column": "hadm_id"}, "leave one"),
        ({"admission_prefixes": ("A", "D")}, "only with"),
        ({"visit_by": "admission", "admission_prefixes": ("A", "A")}, "different"),
        ({"visit_by": "admission", "admission_prefixes": ("ADM", "DIS")}, "'ADM'"),
    ],
)
def test_visit_options_are_checked(tmp_path, options, message):
    root = _write(tmp_path / "m", STAYS)
    with pytest.raises(ConfigError, match=message):
        read_meds(root, **options)


def test_meds_extract_imports_by_admission_codes(tmp_path):
    """Check --visit-by admission on MEDS-Extract's MIMIC-IV conventions: the same
    stays as by hadm_id, each at its admission row, the lab between stays dropped."""
    src = write_meds_extract(tmp_path / "src")
    args = [a for a in MEDS_EXTRACT_ARGS if a not in ("--visit-id-column", "hadm_id")]
    out = str(tmp_path / "out")
    result = invoke("data", "import", "meds", str(src), "--out", out, *args,
                    "--visit-by", "admission")  # fmt: skip
    assert result.exit_code == 0, result.output
    by_stay = read_meds(tmp_path / "out")
    invoke("data", "import", "meds", str(src), "--out", str(tmp_path / "by-id"),
           *MEDS_EXTRACT_ARGS)  # fmt: skip
    by_id = read_meds(tmp_path / "by-id")
    assert [[v.events for v in p.visits] for p in by_stay] == [
        [v.events for v in p.visits] for p in by_id
    ]
    assert [v.time for v in by_stay[0].visits] == [
        datetime(2020, 1, 1, 8),
        datetime(2020, 6, 1, 8),
    ]
    listing = read_meds(
        src,
        prefix_to_modality={"DIAGNOSIS": "diagnosis", "LAB": "lab"},
        unknown_prefixes="drop",
        visit_by="admission",
    ).metadata["unused_events"]
    assert {"prefix": "LAB", "events": 1, "reason": "outside any admission"} in listing


# --------------------------------------------------------------- meds-testing-helpers


def _import(src, out, *options):
    """``ehrgen data import meds SRC --out OUT OPTIONS``: the result, the cohort
    written and the source's rows (dicts)."""
    result = invoke("data", "import", "meds", str(src), "--out", str(out), *options)
    assert result.exit_code == 0, result.output
    shards = sorted((src / "data").rglob("*.parquet"))
    rows = pa.concat_tables([pq.read_table(p) for p in shards]).to_pylist()
    return result, read_meds(out), rows


def test_meds_testing_helpers_sample_imports_one_visit_per_admission(tmp_path):
    """The MEDS example dataset as ``meds-testing-helpers`` writes it (ADMISSION//...
    and DISCHARGE around HR and TEMP readings), imported from the command line."""
    from meds_testing_helpers.dataset import MEDSDataset
    from meds_testing_helpers.static_sample_data import SIMPLE_STATIC_SHARDED_BY_SPLIT

    src = tmp_path / "sample"
    dataset = MEDSDataset.from_yaml(SIMPLE_STATIC_SHARDED_BY_SPLIT)
    dataset.write(src)
    result, cohort, table = _import(
        src,
        tmp_path / "out",
        "--prefix-map",
        "ADMISSION=department,HR=lab,TEMP=lab",
        "--visit-by",
        "admission",
        "--admission-codes",
        "ADMISSION,DISCHARGE",
    )
    admissions = sorted(
        (r["subject_id"], r["code"].split("//")[1])
        for r in table
        if r["code"].startswith("ADMISSION//")
    )
    visits = sorted(
        (int(p.patient_id), code)
        for p in cohort
        for v in p.visits
        for code in v.events["department"]
    )
    assert visits == admissions  # one visit per admission, its department kept
    assert all(v.events["lab"] == ("HR", "TEMP") for p in cohort for v in p.visits)
    assert "DISCHARGE" in result.output and "visit boundary" in result.output


def test_meds_testing_helpers_generated_dataset_imports_by_window(tmp_path):
    """A random dataset from the ``meds-testing-helpers`` generator, imported with a
    prefix map and one-hour windows; visits checked against the raw shards."""
    from meds_testing_helpers.dataset_generator import (
        MEDSDataDFGenerator,
        MEDSDatasetGenerator,
    )
    from meds_testing_helpers.rvs import (
        DatetimeGenerator,
        PositiveIntGenerator,
        PositiveTimeDeltaGenerator,
        ProportionGenerator,
    )

    generator = MEDSDataDFGenerator(
        birth_datetime_per_subject=DatetimeGenerator(
            [np.datetime64("1960-01-01", "us"), np.datetime64("1980-02-02", "us")]
        ),
        start_data_datetime_per_subject=DatetimeGenerator(
            [np.datetime64("2021-01-01", "us"), np.datetime64("2022-02-02", "us")]
        ),
        time_between_birth_and_data_per_subject=PositiveTimeDeltaGenerator(
            [np.timedelta64(40, "Y"), np.timedelta64(50, "Y")]
        ),
        time_between_data_and_death_per_subject=PositiveTimeDeltaGenerator(
            [np.timedelta64(2, "D")]
        ),
        time_between_data_events_per_subject=PositiveTimeDeltaGenerator(
            [np.timedelta64(3, "h"), np.timedelta64(20, "m")]
        ),
        num_events_per_subject=PositiveIntGenerator([2, 4, 6]),
        num_measurements_per_event=PositiveIntGenerator([1, 2, 3]),
        num_static_measurements_per_subject=PositiveIntGenerator([1]),
        frac_dynamic_code_occurrences_with_value=ProportionGenerator([0, 0.5]),
        frac_static_code_occurrences_with_value=ProportionGenerator([0]),
        static_vocab_size=3,
        dynamic_vocab_size=12,
        frac_subjects_with_death=0.5,
    )
    dataset = MEDSDatasetGenerator(data_generator=generator, shard_size=7).sample(
        20, np.random.default_rng(3)
    )
    src = tmp_path / "generated"
    dataset.write(src)
    _, cohort, rows = _import(
        src,
        tmp_path / "out",
        "--prefix-map",
        "dynamic=diagnosis",
        "--unknown-prefixes",
        "drop",
        "--visit-by",
        "window:1h",
    )
    times: dict[int, list[datetime]] = {}
    for r in rows:
        if r["code"].startswith("dynamic//"):
            times.setdefault(r["subject_id"], []).append(r["time"])
    expected = {}
    for subject, stamps in times.items():
        stamps = sorted(stamps)
        gaps = [b - a > timedelta(hours=1) for a, b in zip(stamps, stamps[1:])]
        expected[subject] = 1 + sum(gaps)
    assert {int(p.patient_id): len(p.visits) for p in cohort} == expected
    assert max(expected.values()) > 1  # the windows did split someone's events
