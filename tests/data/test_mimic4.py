"""Tests of the MIMIC-IV reader, on fabricated tables in the hosp module's schema."""

from __future__ import annotations

import gzip
import logging
from datetime import datetime
from pathlib import Path

import pytest

from ehrgen.data import Patient, Visit
from ehrgen.data.formats.meds import read_meds, write_meds
from ehrgen.data.formats.mimic4 import read_mimic4
from ehrgen.data.preprocess import Preprocessing
from ehrgen.errors import SchemaError

# Fabricated rows in the exact MIMIC-IV (v2/v3) hosp columns. Subject 10000032 has an
# ICD-9 and an ICD-10 admission, a lab without hadm_id inside her first admission;
# 10000048 has anchor_age 91 (over 89); 10000099 has no admission.
TABLES = {
    "patients": """\
subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod
10000032,F,52,2180,2014 - 2016,2180-09-09
10000048,M,91,2126,2008 - 2010,
10000099,F,30,2150,2017 - 2019,
""",
    "admissions": """\
subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,\
admission_location,discharge_location,insurance,language,marital_status,race,\
edregtime,edouttime,hospital_expire_flag
10000032,22841357,2182-06-26 18:27:00,2182-06-27 18:49:00,,EW EMER.,P09Q6Y,\
EMERGENCY ROOM,HOME,Medicaid,ENGLISH,WIDOWED,WHITE,2182-06-26 15:54:00,\
2182-06-26 21:31:00,0
10000032,22595853,2180-05-06 22:23:00,2180-05-07 17:15:00,,URGENT,P874LG,\
TRANSFER FROM HOSPITAL,HOME,Other,ENGLISH,WIDOWED,PATIENT DECLINED TO ANSWER,\
2180-05-06 19:17:00,2180-05-06 23:30:00,0
10000048,23012345,2128-01-01 10:00:00,2128-01-05 10:00:00,,EW EMER.,P09Q6Y,\
EMERGENCY ROOM,HOME,Medicare,ENGLISH,MARRIED,HISPANIC/LATINO - PUERTO RICAN,,,0
""",
    "diagnoses_icd": """\
subject_id,hadm_id,seq_num,icd_code,icd_version
10000032,22595853,1,5723,9
10000032,22595853,2,78959,9
10000032,22841357,2,0389,9
10000032,22841357,1,I10,10
10000048,23012345,1,K7031,10
10000048,23012345,2,5723,9
""",
    "procedures_icd": """\
subject_id,hadm_id,seq_num,chartdate,icd_code,icd_version
10000032,22595853,1,2180-05-07,5491,9
10000032,22841357,1,2182-06-27,0DTJ4ZZ,10
""",
    "prescriptions": """\
subject_id,hadm_id,pharmacy_id,poe_id,poe_seq,order_provider_id,starttime,stoptime,\
drug_type,drug,formulary_drug_cd,gsn,ndc,prod_strength,form_rx,dose_val_rx,\
dose_unit_rx,form_val_disp,form_unit_disp,doses_per_24_hrs,route
10000032,22595853,12775705,10000032-55,55,P85UQ1,2180-05-07 01:00:00,\
2180-05-07 09:00:00,MAIN,Furosemide,FURO40I,008208,63323028001,40mg/4mL Vial,,40,mg,\
1,VIAL,1,IV
""",
    "labevents": """\
labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,\
storetime,value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,\
comments
1,10000032,,2704548,50931,P69FQC,2180-05-07 05:00:00,2180-05-07 08:00:00,95,95,\
mg/dL,70,100,,ROUTINE,
2,10000032,22595853,2704549,51006,P69FQC,2180-05-06 23:00:00,2180-05-07 01:00:00,\
10,10,mg/dL,6,20,,STAT,
3,10000099,,2704550,51006,,2150-01-01 00:00:00,,10,10,mg/dL,6,20,,STAT,
""",
    "d_labitems": """\
itemid,label,fluid,category
50931,Glucose,Blood,Chemistry
51006,Urea Nitrogen,Blood,Chemistry
""",
}

FIRST = datetime(2180, 5, 6, 22, 23)
SECOND = datetime(2182, 6, 26, 18, 27)
EXPECTED = [
    Patient(
        "10000032",
        {"gender": "F", "ethnicity": "white", "insurance": "Other", "age": 52.0},
        (
            Visit(
                {
                    "diagnosis": ("ICD9CM//5723", "ICD9CM//78959"),
                    "procedure": ("ICD9PROC//5491",),
                    "drug": ("FUROSEMIDE",),
                    "lab": ("ITEMID//51006", "ITEMID//50931"),
                },
                FIRST,
                {"lab": {"ITEMID//51006": 10.0, "ITEMID//50931": 95.0}},
            ),
            Visit(
                {
                    "diagnosis": ("ICD10CM//I10", "ICD9CM//0389"),
                    "procedure": ("ICD10PCS//0DTJ4ZZ",),
                },
                SECOND,
            ),
        ),
    ),
    Patient(
        "10000048",
        {"gender": "M", "ethnicity": "hispanic", "insurance": "Medicare", "age": 90.0},
        (
            Visit(
                {"diagnosis": ("ICD10CM//K7031", "ICD9CM//5723")},
                datetime(2128, 1, 1, 10),
            ),
        ),
    ),
]


def write_mimic4(
    root: Path, gz: tuple[str, ...] = ("labevents",), **changes: str | None
) -> Path:
    """Write the fixture tables to ``root/hosp`` (those in ``gz`` gzip-compressed,
    as distributed); ``changes`` replaces a table's text, or leaves it out."""
    hosp = root / "hosp"
    hosp.mkdir(parents=True, exist_ok=True)
    for name, text in {**TABLES, **changes}.items():
        if text is None:
            continue
        if name in gz:
            with gzip.open(hosp / f"{name}.csv.gz", "wt", encoding="utf-8") as file:
                file.write(text)
        else:
            (hosp / f"{name}.csv").write_text(text, encoding="utf-8")
    return root


def test_reads_the_exact_cohort(tmp_path):
    """Check visits, ICD-9 and ICD-10 codes of one patient with their version, the
    age from anchor_age (91 -> capped at 90) and the orphan lab assigned by time."""
    cohort = read_mimic4(write_mimic4(tmp_path))
    assert list(cohort) == EXPECTED
    assert cohort.schema.categorical["insurance"] == ("Medicare", "Other")
    dropped = cohort.metadata["dropped"]
    assert dropped["labevents"] == {
        "rows": 3,
        "rows_invalid": 0,
        "rows_without_code": 0,
        "rows_without_admission_id": 1,
        "rows_assigned_by_time": 1,
        "rows_with_unknown_admission": 0,
        "events": 2,
    }
    assert dropped["patients_without_admission"] == 1
    assert cohort.metadata["format"] == "MIMIC-IV"


def test_root_may_be_the_hosp_folder(tmp_path):
    """Check that the hosp folder itself, with all tables gzipped, reads the same."""
    root = write_mimic4(tmp_path, gz=tuple(TABLES))
    assert list(read_mimic4(root / "hosp")) == EXPECTED


def test_version_one_ethnicity_column(tmp_path):
    """Check that MIMIC-IV v1's 'ethnicity' column stands for 'race'."""
    text = TABLES["admissions"].replace(",race,", ",ethnicity,", 1)
    assert list(read_mimic4(write_mimic4(tmp_path, admissions=text))) == EXPECTED


def test_label_codes_and_dropped_orphans(tmp_path):
    """Check lab_code='label' and assign_orphan_labs=False together."""
    cohort = read_mimic4(
        write_mimic4(tmp_path), lab_code="label", assign_orphan_labs=False
    )
    assert cohort[0].visits[0].codes("lab") == ("LABEL//Urea Nitrogen",)


def test_bad_icd_version_is_an_error_or_dropped(tmp_path):
    """Check that an icd_version other than 9 or 10 names its line, and that
    invalid_rows='drop' drops and counts the row."""
    text = TABLES["diagnoses_icd"].replace("I10,10", "I10,11")
    root = write_mimic4(tmp_path, diagnoses_icd=text)
    with pytest.raises(SchemaError, match=r"line 5, column 'icd_version': expected 9"):
        read_mimic4(root)
    cohort = read_mimic4(root, invalid_rows="drop")
    assert cohort[0].visits[1].codes("diagnosis") == ("ICD9CM//0389",)
    assert cohort.metadata["dropped"]["diagnoses_icd"]["rows_invalid"] == 1


def test_missing_optional_table_warns(tmp_path, caplog):
    """Check that without prescriptions the drug modality is left out, with a
    warning, and that a missing admissions table is an error."""
    with caplog.at_level(logging.WARNING):
        cohort = read_mimic4(write_mimic4(tmp_path / "a", prescriptions=None))
    assert cohort.schema.modalities == ("diagnosis", "procedure", "lab")
    assert "no table prescriptions" in caplog.text
    with pytest.raises(SchemaError, match="no table admissions"):
        read_mimic4(write_mimic4(tmp_path / "b", admissions=None))


def test_missing_column_and_duplicate_key(tmp_path):
    """Check a missing icd_version column and a repeated hadm_id."""
    text = TABLES["procedures_icd"].replace(",icd_version", ",version")
    with pytest.raises(SchemaError, match="procedures_icd.*no column 'icd_version'"):
        read_mimic4(write_mimic4(tmp_path / "a", procedures_icd=text))
    rows = TABLES["admissions"].splitlines()
    text = TABLES["admissions"] + rows[-1].replace("10000048,", "10000032,", 1) + "\n"
    with pytest.raises(SchemaError, match="'hadm_id': the key 23012345"):
        read_mimic4(write_mimic4(tmp_path / "b", admissions=text))


def test_preprocessing_icd9_3digit_and_min_code_count(tmp_path):
    """Check that 3-digit ICD-9 categories leave ICD-10 alone, and that
    min_code_count=2 keeps the one code seen in two visits."""
    options = Preprocessing(icd9_3digit=True, modalities=("diagnosis",))
    cohort = read_mimic4(write_mimic4(tmp_path), preprocessing=options)
    assert [v.codes("diagnosis") for p in cohort for v in p.visits] == [
        ("ICD9CM//572", "ICD9CM//789"),
        ("ICD10CM//I10", "ICD9CM//038"),
        ("ICD10CM//K7031", "ICD9CM//572"),
    ]
    options = Preprocessing(modalities=("diagnosis",), min_code_count=2)
    cohort = read_mimic4(tmp_path, preprocessing=options)
    assert [p.patient_id for p in cohort] == ["10000032", "10000048"]
    assert [v.codes("diagnosis") for p in cohort for v in p.visits] == [
        ("ICD9CM//5723",),
        ("ICD9CM//5723",),
    ]


def test_survives_meds_round_trip(tmp_path):
    """Check that write_meds -> read_meds gives back the same cohort and units."""
    cohort = read_mimic4(write_mimic4(tmp_path / "raw"))
    back = read_meds(write_meds(cohort, tmp_path / "meds"))
    assert back == cohort
    assert back.units() == cohort.units() != {}


def test_lab_units_are_the_most_frequent_with_a_value(tmp_path):
    """Check valueuom: 51006's 3 mmol/L with a value beat its mg/dL (2 with a value,
    of which one of a patient without admission, and 3 without); 50931 keeps its
    one mg/dL; a labevents without valueuom has no units."""
    extra = "".join(
        f"{i},10000032,22595853,{i},51006,,2180-05-07 0{i - 3}:00:00,,{v},{v},{u},"
        ",,,ROUTINE,\n"
        for i, v, u in [
            (4, 3.6, "mmol/L"),
            (5, "", "mg/dL"),
            (6, 3.5, "mmol/L"),
            (7, "___", "mg/dL"),
            (8, 3.4, "mmol/L"),
            (9, "", "mg/dL"),
        ]
    )
    cohort = read_mimic4(
        write_mimic4(tmp_path / "a", labevents=TABLES["labevents"] + extra)
    )
    assert cohort.units() == {
        ("lab", "ITEMID//50931"): "mg/dL",
        ("lab", "ITEMID//51006"): "mmol/L",
    }
    assert cohort[0].visits[0].values["lab"]["ITEMID//51006"] == pytest.approx(3.4)
    header, *rows = TABLES["labevents"].replace(",valueuom", "").split("\n")
    without = "\n".join([header, *(r.replace("mg/dL,", "") for r in rows)])
    cohort = read_mimic4(write_mimic4(tmp_path / "b", labevents=without))
    assert list(cohort) == EXPECTED
    assert cohort.code_units is None
