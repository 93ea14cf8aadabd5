"""Tests of the MIMIC-III reader, on fabricated tables in the v1.4 schema."""

from __future__ import annotations

import gzip
import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from ehrgen.data import Patient, Visit
from ehrgen.data.formats.meds import read_meds, write_meds
from ehrgen.data.formats.mimic3 import read_mimic3
from ehrgen.data.preprocess import Preprocessing
from ehrgen.errors import ConfigError, SchemaError

# Fabricated rows in the exact MIMIC-III v1.4 columns. Subject 10 has two admissions
# (the first of unknown ethnicity), a repeated and an empty diagnosis, a diagnosis of
# an unknown admission, a lab without HADM_ID inside her second admission and one
# before her first; subject 20 was over 89 (DOB shifted ~300 years back); 30 has no
# admission; 40's admission has no code; admission 500's subject is not in PATIENTS.
TABLES = {
    "PATIENTS": """\
ROW_ID,SUBJECT_ID,GENDER,DOB,DOD,DOD_HOSP,DOD_SSN,EXPIRE_FLAG
1,10,F,2050-06-15 00:00:00,,,,0
2,20,M,1800-01-01 00:00:00,2100-02-01 00:00:00,,,1
3,30,M,2080-01-01 00:00:00,,,,0
4,40,F,2070-03-01 00:00:00,,,,0
""",
    "ADMISSIONS": """\
ROW_ID,SUBJECT_ID,HADM_ID,ADMITTIME,DISCHTIME,DEATHTIME,ADMISSION_TYPE,\
ADMISSION_LOCATION,DISCHARGE_LOCATION,INSURANCE,LANGUAGE,RELIGION,MARITAL_STATUS,\
ETHNICITY,EDREGTIME,EDOUTTIME,DIAGNOSIS,HOSPITAL_EXPIRE_FLAG,HAS_CHARTEVENTS_DATA
1,10,100,2100-01-10 08:00:00,2100-01-15 12:00:00,,EMERGENCY,EMERGENCY ROOM ADMIT,\
HOME,Medicare,ENGL,CATHOLIC,MARRIED,UNKNOWN/NOT SPECIFIED,,,SEPSIS,0,1
2,10,101,2100-03-01 09:30:00,2100-03-05 10:00:00,,ELECTIVE,PHYS REFERRAL/NORMAL \
DELI,HOME,Medicaid,ENGL,CATHOLIC,MARRIED,WHITE,,,CHEST PAIN,0,1
3,20,200,2100-01-01 00:00:00,2100-01-03 00:00:00,2100-01-03 00:00:00,EMERGENCY,\
EMERGENCY ROOM ADMIT,DEAD/EXPIRED,Private,,,,BLACK/AFRICAN AMERICAN,,,FALL,1,1
4,40,400,2120-05-05 10:00:00,2120-05-06 10:00:00,,ELECTIVE,PHYS REFERRAL/NORMAL \
DELI,HOME,Self Pay,,,,HISPANIC OR LATINO,,,NONE,0,1
5,50,500,2110-05-05 10:00:00,2110-05-06 10:00:00,,ELECTIVE,PHYS REFERRAL/NORMAL \
DELI,HOME,Medicaid,,,,ASIAN,,,NONE,0,1
""",
    "DIAGNOSES_ICD": """\
ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE
1,10,100,2,0389
2,10,100,1,4019
3,10,100,3,4019
4,10,101,1,25000
5,20,200,1,V5861
6,20,200,2,E8889
7,10,999,1,4019
8,10,100,4,
""",
    "PROCEDURES_ICD": """\
ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE
1,10,100,1,3722
2,20,200,1,0066
""",
    "PRESCRIPTIONS": """\
ROW_ID,SUBJECT_ID,HADM_ID,ICUSTAY_ID,STARTDATE,ENDDATE,DRUG_TYPE,DRUG,DRUG_NAME_POE,\
DRUG_NAME_GENERIC,FORMULARY_DRUG_CD,GSN,NDC,PROD_STRENGTH,DOSE_VAL_RX,DOSE_UNIT_RX,\
FORM_VAL_DISP,FORM_UNIT_DISP,ROUTE
1,10,100,,2100-01-11 00:00:00,2100-01-12 00:00:00,MAIN,Heparin   Sodium,Heparin,\
Heparin,HEPA5I,,0,5000 units,5000,UNIT,1,mL,SC
2,10,100,,2100-01-10 00:00:00,2100-01-12 00:00:00,MAIN,  aspirin ,Aspirin,Aspirin,\
ASA81,004380,00904198261,81mg Tab,81,mg,1,TAB,PO
3,10,100,,2100-01-12 00:00:00,2100-01-12 00:00:00,MAIN,Aspirin,Aspirin,Aspirin,\
ASA81,004380,00904198261,81mg Tab,81,mg,1,TAB,PO
""",
    "LABEVENTS": """\
ROW_ID,SUBJECT_ID,HADM_ID,ITEMID,CHARTTIME,VALUE,VALUENUM,VALUEUOM,FLAG
1,10,100,50912,2100-01-10 09:00:00,1.1,1.1,mg/dL,
2,10,,50971,2100-03-02 07:00:00,4.1,4.1,mEq/L,
3,10,,50912,2099-12-01 00:00:00,0.9,0.9,mg/dL,
4,20,200,50971,2100-01-01 05:00:00,5.9,5.9,mEq/L,abnormal
5,20,200,50912,2100-01-01 06:00:00,2.0,2.0,mg/dL,abnormal
""",
    "D_LABITEMS": """\
ROW_ID,ITEMID,LABEL,FLUID,CATEGORY,LOINC_CODE
1,50912,Creatinine,Blood,Chemistry,2160-0
2,50971,Potassium,Blood,Chemistry,2823-3
""",
}

V100 = datetime(2100, 1, 10, 8)
V101 = datetime(2100, 3, 1, 9, 30)
V200 = datetime(2100, 1, 1)
EXPECTED = [
    Patient(
        "10",
        {"gender": "F", "ethnicity": "white", "insurance": "Medicare", "age": 49.0},
        (
            Visit(
                {
                    "diagnosis": ("ICD9CM//4019", "ICD9CM//0389"),
                    "procedure": ("ICD9PROC//3722",),
                    "drug": ("ASPIRIN", "HEPARIN SODIUM"),
                    "lab": ("ITEMID//50912",),
                },
                V100,
                {"lab": {"ITEMID//50912": np.float32(1.1)}},
            ),
            Visit(
                {"diagnosis": ("ICD9CM//25000",), "lab": ("ITEMID//50971",)},
                V101,
                {"lab": {"ITEMID//50971": np.float32(4.1)}},
            ),
        ),
    ),
    Patient(
        "20",
        {"gender": "M", "ethnicity": "black", "insurance": "Private", "age": 90.0},
        (
            Visit(
                {
                    "diagnosis": ("ICD9CM//V5861", "ICD9CM//E8889"),
                    "procedure": ("ICD9PROC//0066",),
                    "lab": ("ITEMID//50971", "ITEMID//50912"),
                },
                V200,
                {"lab": {"ITEMID//50971": np.float32(5.9), "ITEMID//50912": 2.0}},
            ),
        ),
    ),
]


def write_mimic3(root: Path, gz: tuple[str, ...] = (), **changes: str | None) -> Path:
    """Write the fixture tables to ``root`` (those in ``gz`` gzip-compressed);
    ``changes`` replaces a table's text, or leaves it out when None."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in {**TABLES, **changes}.items():
        if text is None:
            continue
        if name in gz:
            with gzip.open(root / f"{name}.csv.gz", "wt", encoding="utf-8") as file:
                file.write(text)
        else:
            (root / f"{name}.csv").write_text(text, encoding="utf-8")
    return root


def test_reads_the_exact_cohort(tmp_path):
    """Check patients, visits and times, codes in order (SEQ_NUM, first time), static
    values (age capped at 90 for a shifted DOB) and the leading zero of 0389."""
    cohort = read_mimic3(write_mimic3(tmp_path))
    assert list(cohort) == EXPECTED
    assert cohort.schema.modalities == ("diagnosis", "procedure", "drug", "lab")
    assert cohort.schema.categorical == {
        "gender": ("F", "M"),
        "ethnicity": ("white", "black", "hispanic", "asian", "other", "unknown"),
        "insurance": ("Medicare", "Private", "Self Pay"),  # first admissions
    }
    assert cohort.schema.numerical == ("age",)
    assert cohort.metadata["ages_capped"] == 1


def test_counts_what_it_drops(tmp_path, caplog):
    """Check metadata['dropped']: rows without code or admission, labs outside every
    admission, admissions without patient or code, patients without admission."""
    with caplog.at_level(logging.INFO):
        cohort = read_mimic3(write_mimic3(tmp_path))
    dropped = cohort.metadata["dropped"]
    assert dropped["DIAGNOSES_ICD"] == {
        "rows": 8,
        "rows_invalid": 0,
        "rows_without_code": 1,
        "rows_without_admission_id": 0,
        "rows_with_unknown_admission": 1,
        "events": 5,
    }
    assert dropped["LABEVENTS"] == {
        "rows": 5,
        "rows_invalid": 0,
        "rows_without_code": 0,
        "rows_without_admission_id": 1,
        "rows_assigned_by_time": 1,
        "rows_with_unknown_admission": 0,
        "events": 4,
    }
    assert dropped["admissions_without_patient"] == 1
    assert dropped["patients_without_admission"] == 1
    assert dropped["admissions_without_events"] == 1
    assert dropped["patients_without_events"] == 1
    assert "rows_with_unknown_admission 1" in caplog.text


def test_orphan_labs_can_be_dropped(tmp_path):
    """Check that assign_orphan_labs=False drops every lab row without HADM_ID."""
    cohort = read_mimic3(write_mimic3(tmp_path), assign_orphan_labs=False)
    assert cohort[0].visits[1].events == {"diagnosis": ("ICD9CM//25000",)}
    assert cohort.metadata["dropped"]["LABEVENTS"]["rows_without_admission_id"] == 2


def test_ndc_and_lab_label_codes(tmp_path):
    """Check drug_code='ndc' (NDC 0 means none) and lab_code='label'."""
    cohort = read_mimic3(write_mimic3(tmp_path), drug_code="ndc", lab_code="label")
    first = cohort[0].visits[0]
    assert first.codes("drug") == ("NDC//00904198261",)
    assert first.codes("lab") == ("LABEL//Creatinine",)
    assert cohort[1].visits[0].codes("lab") == ("LABEL//Potassium", "LABEL//Creatinine")
    assert cohort.metadata["dropped"]["PRESCRIPTIONS"]["rows_without_code"] == 1


def test_labels_shared_by_itemids_merge(tmp_path):
    """Check that two ITEMIDs with one label give one code per visit, and that an
    ITEMID missing from D_LABITEMS keeps its ITEMID code."""
    items = "ROW_ID,ITEMID,LABEL,FLUID,CATEGORY,LOINC_CODE\n"
    items += "1,50912,Creatinine,Blood,Chemistry,\n2,50971,Creatinine,Urine,Chem,\n"
    cohort = read_mimic3(write_mimic3(tmp_path, D_LABITEMS=items), lab_code="label")
    assert cohort[1].visits[0].codes("lab") == ("LABEL//Creatinine",)
    items = "ROW_ID,ITEMID,LABEL,FLUID,CATEGORY,LOINC_CODE\n1,50912,Creatinine,B,C,\n"
    cohort = read_mimic3(write_mimic3(tmp_path, D_LABITEMS=items), lab_code="label")
    assert cohort[1].visits[0].codes("lab") == ("ITEMID//50971", "LABEL//Creatinine")


def test_gzip_tables_read_the_same(tmp_path):
    """Check that .csv.gz tables (and lower-case file names) read as .csv ones."""
    root = write_mimic3(tmp_path, gz=tuple(TABLES))
    (root / "PATIENTS.csv.gz").rename(root / "patients.csv.gz")
    assert list(read_mimic3(root)) == EXPECTED


def test_missing_optional_table_drops_its_modality(tmp_path, caplog):
    """Check that without LABEVENTS the lab modality is left out, with a warning."""
    with caplog.at_level(logging.WARNING):
        cohort = read_mimic3(write_mimic3(tmp_path, LABEVENTS=None))
    assert cohort.schema.modalities == ("diagnosis", "procedure", "drug")
    assert cohort.metadata["missing_tables"] == ["LABEVENTS"]
    assert "no table LABEVENTS" in caplog.text


@pytest.mark.parametrize("table", ["PATIENTS", "ADMISSIONS", "DIAGNOSES_ICD"])
def test_missing_required_table_is_an_error(tmp_path, table):
    """Check that PATIENTS, ADMISSIONS and DIAGNOSES_ICD are required."""
    with pytest.raises(SchemaError, match=f"no table {table} .*needs it"):
        read_mimic3(write_mimic3(tmp_path, **{table: None}))


def test_missing_column_is_an_error_before_reading(tmp_path):
    """Check that a missing column names the file, the column and the columns found."""
    text = TABLES["LABEVENTS"].replace("CHARTTIME", "CHART_TIME")
    with pytest.raises(SchemaError, match=r"LABEVENTS.*no column 'CHARTTIME'"):
        read_mimic3(write_mimic3(tmp_path, LABEVENTS=text))


def test_duplicate_primary_keys_are_errors(tmp_path):
    """Check that a repeated HADM_ID or SUBJECT_ID names its two lines."""
    rows = TABLES["ADMISSIONS"].splitlines()
    text = "\n".join([*rows, rows[1].replace("1,10,100", "9,10,100", 1)]) + "\n"
    with pytest.raises(SchemaError, match="'HADM_ID': the key 100 .*lines 2 and 7"):
        read_mimic3(write_mimic3(tmp_path / "a", ADMISSIONS=text))
    text = TABLES["PATIENTS"] + "5,20,F,2050-01-01 00:00:00,,,,0\n"
    with pytest.raises(SchemaError, match="'SUBJECT_ID': the key 20 .*lines 3 and 6"):
        read_mimic3(write_mimic3(tmp_path / "p", PATIENTS=text))


def test_unparseable_time_is_an_error_or_dropped(tmp_path):
    """Check that a bad CHARTTIME names line, column and value; invalid_rows='drop'
    drops the row and counts it."""
    text = TABLES["LABEVENTS"].replace("2100-01-01 06:00:00", "01/01/2100 6AM")
    root = write_mimic3(tmp_path, LABEVENTS=text)
    with pytest.raises(
        SchemaError, match=r"line 6, column 'CHARTTIME': the timestamp '01/01/2100 6AM'"
    ):
        read_mimic3(root)
    cohort = read_mimic3(root, invalid_rows="drop")
    assert cohort[1].visits[0].codes("lab") == ("ITEMID//50971",)
    assert cohort.metadata["dropped"]["LABEVENTS"]["rows_invalid"] == 1


def test_unparseable_admission_time_is_an_error(tmp_path):
    """Check that a bad ADMITTIME is an error naming the admission's line."""
    text = TABLES["ADMISSIONS"].replace("2100-03-01 09:30:00", "2100-13-01 09:30:00")
    with pytest.raises(SchemaError, match=r"line 3, column 'ADMITTIME'"):
        read_mimic3(write_mimic3(tmp_path, ADMISSIONS=text))
    cohort = read_mimic3(tmp_path, invalid_rows="drop")
    assert len(cohort[0].visits) == 1
    assert cohort.metadata["dropped"]["admissions_with_invalid_times"] == 1


def test_non_integer_id_is_an_error(tmp_path):
    """Check that an id that is not an integer names its line, column and value."""
    text = TABLES["DIAGNOSES_ICD"].replace("4,10,101,1", "4,10,1O1,1")
    with pytest.raises(SchemaError, match=r"line 5, column 'HADM_ID'.*got '1O1'"):
        read_mimic3(write_mimic3(tmp_path, DIAGNOSES_ICD=text))


def test_icd_code_that_went_through_a_number_is_an_error(tmp_path):
    """Check that '389.0' (a code read as a number, its zero lost) is refused."""
    text = TABLES["DIAGNOSES_ICD"].replace(",0389", ",389.0")
    with pytest.raises(SchemaError, match=r"line 2, column 'ICD9_CODE'.*'389.0'"):
        read_mimic3(write_mimic3(tmp_path, DIAGNOSES_ICD=text))


def test_admissions_at_one_time_stay_apart(tmp_path):
    """Check that two admissions at the same time become visits 1 us apart."""
    text = TABLES["ADMISSIONS"].replace("2100-03-01 09:30:00", "2100-01-10 08:00:00")
    cohort = read_mimic3(write_mimic3(tmp_path, ADMISSIONS=text))
    times = [v.time for v in cohort[0].visits]
    assert times == [V100, V100.replace(microsecond=1)]
    assert cohort.metadata["visits_sharing_a_time"] == 1


def test_quoted_fields_read(tmp_path):
    """Check that fully quoted tables (header included, as v1.4 ships) read the same."""
    quoted = {
        name: "".join(
            ",".join(f'"{field}"' if field else "" for field in line.split(",")) + "\n"
            for line in text.splitlines()
        )
        for name, text in TABLES.items()
    }
    assert list(read_mimic3(write_mimic3(tmp_path, **quoted))) == EXPECTED


def test_lower_case_columns_read(tmp_path):
    """Check that lower-case column names (as in the MIMIC-III demo) read the same."""
    lower = {}
    for name, text in TABLES.items():
        header, _, rest = text.partition("\n")
        lower[name] = header.lower() + "\n" + rest
    assert list(read_mimic3(write_mimic3(tmp_path, **lower))) == EXPECTED


def test_preprocessing_is_applied_and_chooses_tables(tmp_path):
    """Check min_code_count=2 (a code seen once is dropped) and that modalities
    not kept are not even read (a broken LABEVENTS is then harmless)."""
    options = Preprocessing(modalities=("diagnosis", "lab"), min_code_count=2)
    cohort = read_mimic3(
        write_mimic3(tmp_path, LABEVENTS=TABLES["LABEVENTS"] + "6,x,y,z,w,,,,\n"),
        preprocessing=Preprocessing(modalities=("diagnosis",)),
    )
    assert cohort.schema.modalities == ("diagnosis",)
    cohort = read_mimic3(write_mimic3(tmp_path), preprocessing=options)
    assert [[v.events for v in p.visits] for p in cohort] == [
        [{"lab": ("ITEMID//50912",)}, {"lab": ("ITEMID//50971",)}],
        [{"lab": ("ITEMID//50971", "ITEMID//50912")}],
    ]
    report = cohort.metadata["preprocessing"]
    assert report["dropped"]["modalities"]["diagnosis"]["rare_codes"] == 5


def test_survives_meds_round_trip(tmp_path):
    """Check that write_meds -> read_meds gives back the same cohort and units."""
    cohort = read_mimic3(write_mimic3(tmp_path / "raw"))
    back = read_meds(write_meds(cohort, tmp_path / "meds"))
    assert back == cohort
    assert back.units() == cohort.units() != {}


# Lab rows for the units: 50912 has mg/dL twice with a value, umol/L once with a
# value and three times without one (empty, or a VALUENUM that is not a number);
# 50971 has mmol/L then mEq/L, once each (a tie); 51006 has a value without unit and
# a unit without value; 51237 a blank unit.
UNIT_LABS = """\
ROW_ID,SUBJECT_ID,HADM_ID,ITEMID,CHARTTIME,VALUE,VALUENUM,VALUEUOM,FLAG
1,10,100,50912,2100-01-10 09:00:00,1.1,1.1,mg/dL,
2,10,100,50912,2100-01-10 10:00:00,,,umol/L,
3,10,100,50971,2100-01-10 10:00:00,4.1,4.1,mmol/L,
4,10,100,51006,2100-01-10 11:00:00,7,7,,
5,10,,50912,2100-03-02 07:00:00,,,umol/L,
6,10,101,50912,2100-03-02 08:00:00,pending,pending,umol/L,
7,10,101,51006,2100-03-02 08:00:00,,,mg/dL,
8,20,200,50912,2100-01-01 06:00:00,2.0,2.0,mg/dL,
9,20,200,50912,2100-01-01 07:00:00,90,90,umol/L,
10,20,200,50971,2100-01-01 05:00:00,5.9,5.9,mEq/L,
11,20,200,51237,2100-01-01 05:00:00,1.0,1.0,  ,
"""
UNITS = {("lab", "ITEMID//50912"): "mg/dL", ("lab", "ITEMID//50971"): "mEq/L"}


def test_lab_units_are_the_most_frequent_with_a_value(tmp_path):
    """Check each code's unit: the most frequent among rows with a value (rows
    without one do not count), ties to the smaller string, None without one;
    code_units aligned with code_values."""
    cohort = read_mimic3(write_mimic3(tmp_path, LABEVENTS=UNIT_LABS))
    assert cohort.units() == UNITS
    units = dict(zip(cohort.code_values.tolist(), cohort.code_units.tolist()))
    assert units["ITEMID//51006"] is None
    assert units["ITEMID//51237"] is None
    assert units["ICD9CM//4019"] is None
    assert len(cohort.code_units) == len(cohort.code_values)


def test_lab_units_of_itemids_sharing_a_label_pool(tmp_path):
    """Check that with lab_code='label' the rows of ITEMIDs merged into one label
    are counted together: 50912's 2 mg/dL lose to 51006's 3 umol/L."""
    labs = """\
ROW_ID,SUBJECT_ID,HADM_ID,ITEMID,CHARTTIME,VALUE,VALUENUM,VALUEUOM,FLAG
1,10,100,50912,2100-01-10 09:00:00,1.1,1.1,mg/dL,
2,10,100,51006,2100-01-10 10:00:00,99,99,umol/L,
3,10,101,50912,2100-03-02 08:00:00,1.0,1.0,mg/dL,
4,20,200,51006,2100-01-01 06:00:00,80,80,umol/L,
5,20,200,51006,2100-01-01 07:00:00,90,90,umol/L,
"""
    items = "ROW_ID,ITEMID,LABEL,FLUID,CATEGORY,LOINC_CODE\n"
    items += "1,50912,Creatinine,Blood,Chem,\n2,51006,Creatinine,Blood,Chem,\n"
    root = write_mimic3(tmp_path, LABEVENTS=labs, D_LABITEMS=items)
    assert read_mimic3(root).units() == {
        ("lab", "ITEMID//50912"): "mg/dL",
        ("lab", "ITEMID//51006"): "umol/L",
    }
    cohort = read_mimic3(root, lab_code="label")
    assert cohort.units() == {("lab", "LABEL//Creatinine"): "umol/L"}


def test_labs_without_units_read_as_before(tmp_path):
    """Check that a LABEVENTS without VALUEUOM, or with it empty, reads the same
    cohort with no units (code_units None)."""
    without = "\n".join(
        ",".join(f for i, f in enumerate(line.split(",")) if i != 7)
        for line in TABLES["LABEVENTS"].splitlines()
    )
    for name, labs in [
        ("without", without + "\n"),
        ("empty", TABLES["LABEVENTS"].replace("mg/dL", "").replace("mEq/L", "")),
    ]:
        cohort = read_mimic3(write_mimic3(tmp_path / name, LABEVENTS=labs))
        assert list(cohort) == EXPECTED
        assert cohort.code_units is None


def test_lab_units_survive_preprocessing(tmp_path):
    """Check that units follow the codes preprocessing keeps, and that a cohort
    left without any code that has a unit has code_units None."""
    root = write_mimic3(tmp_path / "a", LABEVENTS=UNIT_LABS)
    options = Preprocessing(modalities=("diagnosis", "lab"), top_k_codes={"lab": 1})
    cohort = read_mimic3(root, preprocessing=options)
    assert cohort.units() == {("lab", "ITEMID//50912"): "mg/dL"}
    assert len(cohort.code_units) == len(cohort.code_values)
    options = Preprocessing(min_code_count=2, icd9_3digit=True)
    assert read_mimic3(root, preprocessing=options).units() == UNITS
    # Only 51237, seen in one visit, has a unit: min_code_count=2 drops it.
    labs = """\
ROW_ID,SUBJECT_ID,HADM_ID,ITEMID,CHARTTIME,VALUE,VALUENUM,VALUEUOM,FLAG
1,10,100,50912,2100-01-10 09:00:00,1.1,1.1,,
2,10,101,50912,2100-03-02 08:00:00,1.0,1.0,,
3,20,200,51237,2100-01-01 05:00:00,1.0,1.0,g/dL,
"""
    root = write_mimic3(tmp_path / "b", LABEVENTS=labs)
    assert read_mimic3(root).units() == {("lab", "ITEMID//51237"): "g/dL"}
    cohort = read_mimic3(root, preprocessing=Preprocessing(min_code_count=2))
    assert cohort.code_units is None


def test_invalid_options_are_config_errors(tmp_path):
    """Check the messages of a wrong option and a wrong modality."""
    with pytest.raises(ConfigError, match="'drug_code' parameter .* Got 'atc'"):
        read_mimic3(tmp_path, drug_code="atc")
    with pytest.raises(ConfigError, match="Did you mean 'lab'"):
        read_mimic3(tmp_path, preprocessing=Preprocessing(modalities=("labs",)))
    with pytest.raises(SchemaError, match="not a folder"):
        read_mimic3(tmp_path / "nowhere")


def test_a_dropped_row_gives_no_value_or_unit(tmp_path):
    """Check that a lab row dropped for a bad time (invalid_rows='drop') neither
    supplies its visit's value nor votes for its code's unit."""
    text = TABLES["LABEVENTS"] + (
        "6,20,200,50912,bad time,9.0,9.0,umol/L,\n"
        "7,20,200,50912,not a time,9.0,9.0,umol/L,\n"
    )
    cohort = read_mimic3(write_mimic3(tmp_path, LABEVENTS=text), invalid_rows="drop")
    assert cohort[1].visits[0].values["lab"]["ITEMID//50912"] == pytest.approx(2.0)
    assert cohort.units()[("lab", "ITEMID//50912")] == "mg/dL"
    assert cohort.metadata["dropped"]["LABEVENTS"]["rows_invalid"] == 2


def test_upper_case_gzip_suffix_reads(tmp_path):
    """Check that LABEVENTS.CSV.GZ (upper case, as some copies are named) reads."""
    root = write_mimic3(tmp_path, gz=("LABEVENTS",))
    (root / "LABEVENTS.csv.gz").rename(root / "LABEVENTS.CSV.GZ")
    assert list(read_mimic3(root)) == EXPECTED
