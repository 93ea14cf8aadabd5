"""Tiny MEDS datasets in other tools' conventions, written with pyarrow.

``write_meds_extract`` follows the MEDS extraction pipelines' MIMIC-IV output
(MEDS_transforms / MEDS-Extract): codes ``PREFIX//...`` with their systems and units
inside, diagnoses at discharge time, labs at chart time (some outside any stay, so
without ``hadm_id``), a static ``GENDER`` row and ``MEDS_BIRTH`` / ``MEDS_DEATH``.
``write_testing_helpers`` follows the ``meds-testing-helpers`` generator: ``static//N``
rows with no time, ``dynamic//N`` events.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# (subject_id, time, code, numeric_value, hadm_id)
MEDS_EXTRACT_ROWS = [
    (1, None, "GENDER//F", None, None),
    (1, datetime(1960, 1, 1), "MEDS_BIRTH", None, None),
    (1, datetime(2020, 1, 1, 6), "ED_REGISTRATION", None, 100),
    (
        1,
        datetime(2020, 1, 1, 8),
        "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM",
        None,
        100,
    ),
    (1, datetime(2020, 1, 1, 8), "RACE//WHITE", None, 100),
    (1, datetime(2020, 1, 1, 10), "LAB//50912//mg/dL", 1.2, 100),
    (1, datetime(2020, 1, 2, 9), "MEDICATION//START//Heparin", None, 100),
    (1, datetime(2020, 1, 3, 7), "LAB//50912//mg/dL", 1.0, 100),
    (1, datetime(2020, 1, 5, 12), "HOSPITAL_DISCHARGE//HOME", None, 100),
    (1, datetime(2020, 1, 5, 12), "DIAGNOSIS//ICD//9//4019", None, 100),
    (1, datetime(2020, 1, 5, 12), "DIAGNOSIS//ICD//9//25000", None, 100),
    (1, datetime(2020, 3, 1, 9), "LAB//50912//mg/dL", 1.1, None),
    (1, datetime(2020, 6, 1, 8), "HOSPITAL_ADMISSION//URGENT//TRANSFER", None, 101),
    (1, datetime(2020, 6, 1, 8), "RACE//BLACK", None, 101),
    (1, datetime(2020, 6, 1, 11), "LAB//50971//mEq/L", 4.1, 101),
    (1, datetime(2020, 6, 3, 15), "HOSPITAL_DISCHARGE//DIED", None, 101),
    (1, datetime(2020, 6, 3, 15), "DIAGNOSIS//ICD//10//I10", None, 101),
    (1, datetime(2020, 6, 3, 15), "MEDS_DEATH", None, None),
    (2, None, "GENDER//M", None, None),
    (2, datetime(1950, 7, 1), "MEDS_BIRTH", None, None),
    (2, datetime(2021, 2, 1, 8), "HOSPITAL_ADMISSION//ELECTIVE//REFERRAL", None, 200),
    (2, datetime(2021, 2, 1, 8), "RACE//ASIAN", None, 200),
    (2, datetime(2021, 2, 1, 9), "MEDICATION//START//Insulin", None, 200),
    (2, datetime(2021, 2, 2, 9), "MEDICATION//START//Insulin", None, 200),
    (2, datetime(2021, 2, 4, 10), "HOSPITAL_DISCHARGE//HOME", None, 200),
    (2, datetime(2021, 2, 4, 10), "DIAGNOSIS//ICD//10//E119", None, 200),
]


def write_meds_extract(root: Path) -> Path:
    """Write the MEDS-Extract-style dataset at ``root``; return ``root``."""
    subject, time, code, value, hadm = zip(*MEDS_EXTRACT_ROWS)
    table = pa.table(
        {
            "subject_id": pa.array(subject, pa.int64()),
            "time": pa.array(time, pa.timestamp("us")),
            "code": pa.array(code, pa.string()),
            "numeric_value": pa.array(value, pa.float32()),
            "hadm_id": pa.array(hadm, pa.int64()),
        }
    )
    _write(root, table, sorted(set(code)), "MIMIC-IV", "MEDS_transforms")
    return root


def write_testing_helpers(root: Path) -> Path:
    """Write a dataset in the ``meds-testing-helpers`` conventions; return ``root``."""
    t = datetime(2019, 5, 1)
    rows = [
        (7, None, "static//3", None),
        (7, datetime(1980, 1, 1), "MEDS_BIRTH", None),
        (7, t, "dynamic//5", 0.5),
        (7, t, "dynamic//2", None),
        (7, datetime(2019, 8, 1), "dynamic//5", 1.5),
        (7, datetime(2019, 8, 1), "other//1", None),
        (8, None, "static//0", None),
        (8, datetime(2019, 2, 1), "dynamic//1", None),
    ]
    subject, time, code, value = zip(*rows)
    table = pa.table(
        {
            "subject_id": pa.array(subject, pa.int64()),
            "time": pa.array(time, pa.timestamp("us")),
            "code": pa.array(code, pa.string()),
            "numeric_value": pa.array(value, pa.float32()),
        }
    )
    _write(root, table, sorted(set(code)), "simulated", "meds-testing-helpers")
    return root


def _write(root: Path, table: pa.Table, codes: list[str], name: str, etl: str) -> None:
    (root / "data" / "train").mkdir(parents=True)
    pq.write_table(table, root / "data" / "train" / "0.parquet")
    (root / "metadata").mkdir()
    dataset = {"dataset_name": name, "etl_name": etl, "meds_version": "0.3.3"}
    (root / "metadata" / "dataset.json").write_text(json.dumps(dataset))
    pq.write_table(
        pa.table(
            {
                "code": pa.array(codes, pa.string()),
                "description": pa.nulls(len(codes), pa.string()),
                "parent_codes": pa.array([[] for _ in codes], pa.list_(pa.string())),
            }
        ),
        root / "metadata" / "codes.parquet",
    )
