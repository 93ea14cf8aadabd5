"""Tests of reading MIMIC event tables a block of rows at a time: tiny blocks (a
patient's rows over several of them) must give exactly the cohort of one block, and
of the whole-table path used when a table is not grouped by patient."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehrgen.data.formats import _mimic_events
from ehrgen.data.formats._mimic_common import _last_line_end
from ehrgen.data.formats.mimic3 import read_mimic3
from ehrgen.data.formats.mimic4 import read_mimic4
from ehrgen.errors import SchemaError
from tests.data import test_mimic3, test_mimic4

ONE_BLOCK = 1 << 30


def _read(
    reader,
    root: Path,
    block_bytes: int,
    *,
    whole: bool = False,
    allow_whole: bool = False,
    **options,
):
    """The cohort (or the SchemaError's message), the drop counts and the units
    (compared apart: cohort equality leaves them out), read with blocks of
    ``block_bytes``, or by the whole-table path. Fails if a table is read
    whole unasked (unless ``allow_whole``): the fixtures are grouped by patient."""
    fell_back = []

    def read_whole(*args, **kwargs):
        fell_back.append(args[0].name)
        return whole_path(*args, **kwargs)

    whole_path = _mimic_events.read_whole
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_mimic_events, "BLOCK_BYTES", block_bytes)
        patch.setattr(_mimic_events, "read_whole", read_whole)
        if whole:
            patch.setattr(_mimic_events._Blocks, "read", _not_grouped)
        try:
            cohort = reader(root, **options)
        except SchemaError as error:
            return str(error), None, None
    assert whole or allow_whole or not fell_back, f"read whole: {fell_back}"
    return cohort, cohort.metadata["dropped"], cohort.units()


def _not_grouped(self, dropped):
    raise _mimic_events._NotGrouped("forced by the test")


OPTIONS = [
    {},
    {"drug_code": "ndc", "lab_code": "label"},
    {"assign_orphan_labs": False},
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("block_bytes", [1, 30, 100])
def test_mimic3_tiny_blocks_read_as_one(tmp_path, block_bytes, options):
    """Check that blocks of a line or a few give the cohort and counts of one."""
    root = test_mimic3.write_mimic3(tmp_path, gz=("LABEVENTS",))
    one = _read(read_mimic3, root, ONE_BLOCK, **options)
    assert _read(read_mimic3, root, block_bytes, **options) == one
    assert _read(read_mimic3, root, ONE_BLOCK, whole=True, **options) == one
    if not options:
        assert list(one[0]) == test_mimic3.EXPECTED


@pytest.mark.parametrize("options", OPTIONS[:2])
@pytest.mark.parametrize("block_bytes", [1, 100])
def test_mimic4_tiny_blocks_read_as_one(tmp_path, block_bytes, options):
    """Check the same for MIMIC-IV (two keys per ICD code)."""
    root = test_mimic4.write_mimic4(tmp_path)
    one = _read(read_mimic4, root, ONE_BLOCK, **options)
    assert _read(read_mimic4, root, block_bytes, **options) == one
    assert _read(read_mimic4, root, ONE_BLOCK, whole=True, **options) == one


@pytest.mark.parametrize("block_bytes", [1, 60, 200])
def test_lab_units_are_those_of_one_block(tmp_path, block_bytes):
    """Check that the unit counts, summed over tiny blocks (a code's rows over
    several of them), and the whole-table path give the units of one block."""
    root = test_mimic3.write_mimic3(tmp_path, LABEVENTS=test_mimic3.UNIT_LABS)
    one = _read(read_mimic3, root, ONE_BLOCK)
    assert one[2] == test_mimic3.UNITS
    assert _read(read_mimic3, root, block_bytes) == one
    blocks, *_ = _read(read_mimic3, root, block_bytes)
    assert blocks.code_units.tolist() == one[0].code_units.tolist()
    whole, *_ = _read(read_mimic3, root, ONE_BLOCK, whole=True)
    assert whole.code_units.tolist() == one[0].code_units.tolist()


def test_errors_and_drops_are_those_of_one_block(tmp_path):
    """Check that an unparseable time is the same error, or the same dropped row,
    whatever the blocks."""
    text = test_mimic3.TABLES["LABEVENTS"].replace(
        "2100-01-01 06:00:00", "01/01/2100 6AM"
    )
    root = test_mimic3.write_mimic3(tmp_path, LABEVENTS=text)
    error, *_ = _read(read_mimic3, root, 1)
    assert "line 6, column 'CHARTTIME'" in error
    assert _read(read_mimic3, root, ONE_BLOCK) == (error, None, None)
    drop = {"invalid_rows": "drop"}
    one = _read(read_mimic3, root, ONE_BLOCK, **drop)
    assert one[1]["LABEVENTS"]["rows_invalid"] == 1
    assert _read(read_mimic3, root, 1, **drop) == one


def test_quoted_line_breaks_stay_in_their_block(tmp_path):
    """Check that a quoted field holding a line break is never cut in two."""
    text = test_mimic3.TABLES["LABEVENTS"].replace(
        "4.1,4.1,mEq/L,", '4.1,4.1,mEq/L,"see\nnote, ""a"""'
    )
    root = test_mimic3.write_mimic3(tmp_path, LABEVENTS=text)
    one = _read(read_mimic3, root, ONE_BLOCK)
    assert list(one[0]) == test_mimic3.EXPECTED
    for block_bytes in (1, 40, 60, 80):
        assert _read(read_mimic3, root, block_bytes) == one


@pytest.mark.parametrize("whole", [False, True])
def test_labs_at_one_time_order_by_code(tmp_path, whole):
    """Check ties of first time within a visit: codes in code order, whether their
    row names the admission or was assigned to it by time; a code found both ways
    keeps the value of the rows that name the admission."""
    labs = """\
ROW_ID,SUBJECT_ID,HADM_ID,ITEMID,CHARTTIME,VALUE,VALUENUM,VALUEUOM,FLAG
1,10,100,50971,2100-01-10 09:00:00,,3.0,,
2,10,,50912,2100-01-10 09:00:00,,1.0,,
3,10,,51006,2100-01-10 09:00:00,,5.0,,
4,10,100,51006,2100-01-10 09:00:00,,6.0,,
"""
    root = test_mimic3.write_mimic3(tmp_path, LABEVENTS=labs)
    cohort, *_ = _read(read_mimic3, root, 1, whole=whole)
    visit = cohort[0].visits[0]
    assert visit.codes("lab") == ("ITEMID//50912", "ITEMID//50971", "ITEMID//51006")
    assert visit.values["lab"] == {
        "ITEMID//50912": 1.0,
        "ITEMID//50971": 3.0,
        "ITEMID//51006": 6.0,
    }


def test_last_line_end_skips_quoted_line_breaks():
    assert _last_line_end(b"a,b\nc,d") == 4
    assert _last_line_end(b'a,"b\nc",d\n') == 10
    assert _last_line_end(b'a,b\nc,"d\ne') == 4
    assert _last_line_end(b'a,"b\nc') == 0
    assert _last_line_end(b"no line end") == 0


def test_table_not_grouped_by_patient_is_read_whole(tmp_path, caplog):
    """Check that a patient whose rows come back after another's is noticed, and
    that the table is then read whole, to the same cohort."""
    header, first, *rest = test_mimic3.TABLES["LABEVENTS"].splitlines()
    text = "\n".join([header, *rest, first]) + "\n"  # patient 10, 20, then 10
    root = test_mimic3.write_mimic3(tmp_path, LABEVENTS=text)
    with caplog.at_level(logging.INFO):
        cohort, dropped, units = _read(read_mimic3, root, 1, allow_whole=True)
    assert "LABEVENTS.csv (table LABEVENTS): patient 10 has rows in two" in caplog.text
    assert "reading the table whole" in caplog.text
    assert list(cohort) == test_mimic3.EXPECTED
    assert (cohort, dropped, units) == _read(read_mimic3, root, ONE_BLOCK)


# --------------------------------------------------------------------------- random

HOUR = 3600


def _time(hours: int) -> str:
    return f"2100-01-{1 + hours // 24:02d} {hours % 24:02d}:00:00"


@st.composite
def mimic3_tables(draw) -> dict[str, str]:
    """Small MIMIC-III tables grouped by patient (in any patient order): admissions
    that may share a time or overlap, codes repeated within a visit, labs without
    HADM_ID, times shared by several rows, empty values, units and codes, unknown
    admissions, unparseable times."""
    subjects = draw(st.lists(st.integers(1, 9), min_size=1, max_size=4, unique=True))
    patients = ["ROW_ID,SUBJECT_ID,GENDER,DOB"]
    admissions = ["ROW_ID,SUBJECT_ID,HADM_ID,ADMITTIME,DISCHTIME,ETHNICITY,INSURANCE"]
    diagnoses = ["ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE"]
    drugs = ["ROW_ID,SUBJECT_ID,HADM_ID,STARTDATE,DRUG"]
    labs = ["ROW_ID,SUBJECT_ID,HADM_ID,ITEMID,CHARTTIME,VALUENUM,VALUEUOM"]
    hours = st.integers(0, 30)
    for subject in subjects:
        patients.append(f"{subject},{subject},F,2050-01-01 00:00:00")
        hadms = [subject * 10 + i for i in range(draw(st.integers(0, 3)))]
        for hadm in hadms:
            start = draw(hours)
            end = start + draw(st.integers(0, 20))
            admissions.append(
                f"{hadm},{subject},{hadm},{_time(start)},{_time(end)},WHITE,Private"
            )
        known = st.sampled_from([*hadms, 999]) if hadms else st.just(999)
        for _ in range(draw(st.integers(0, 5))):
            code = draw(st.sampled_from(["0389", "4019", "25000", ""]))
            seq = draw(st.integers(1, 3))
            diagnoses.append(f"0,{subject},{draw(known)},{seq},{code}")
        for _ in range(draw(st.integers(0, 4))):
            drug = draw(st.sampled_from(["Aspirin", " aspirin ", "Heparin", ""]))
            drugs.append(f"0,{subject},{draw(known)},{_time(draw(hours))},{drug}")
        for _ in range(draw(st.integers(0, 8))):
            hadm = draw(st.one_of(st.just(""), known))
            item = draw(st.sampled_from(["50912", "50971", "51006"]))
            bad = draw(st.integers(0, 9)) == 0
            when = "bad time" if bad else _time(draw(hours))
            value = draw(st.sampled_from(["", "1.0", "2.5", "7"]))
            unit = draw(st.sampled_from(["", "mg/dL", "mmol/L"]))
            labs.append(f"0,{subject},{hadm},{item},{when},{value},{unit}")
    return {
        "PATIENTS": "\n".join(patients) + "\n",
        "ADMISSIONS": "\n".join(admissions) + "\n",
        "DIAGNOSES_ICD": "\n".join(diagnoses) + "\n",
        "PROCEDURES_ICD": "ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE\n",
        "PRESCRIPTIONS": "\n".join(drugs) + "\n",
        "LABEVENTS": "\n".join(labs) + "\n",
    }


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(tables=mimic3_tables(), block_bytes=st.sampled_from([1, 50, 120]))
def test_random_tables_read_alike_in_any_blocks(tables, block_bytes):
    """Check that tiny blocks, one block and the whole-table path give the same
    cohort (units included, or the same error) and the same counts, on random
    tables."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, text in tables.items():
            (root / f"{name}.csv").write_text(text, encoding="utf-8")
        drop = {"invalid_rows": "drop"}
        one = _read(read_mimic3, root, ONE_BLOCK, **drop)
        assert _read(read_mimic3, root, block_bytes, **drop) == one
        assert _read(read_mimic3, root, ONE_BLOCK, whole=True, **drop) == one
