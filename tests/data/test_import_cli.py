"""Tests of `ehrgen data import` for MIMIC-III, MIMIC-IV, OMOP, other tools' MEDS and
the preprocessing options."""

from __future__ import annotations

import sys
import types
from datetime import datetime

import pytest
from typer.testing import CliRunner

from ehrgen.cli import app, main
from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.jsonl import write_jsonl
from ehrgen.data.formats.meds import read_meds, write_meds
from ehrgen.data.formats.mimic3 import read_mimic3
from ehrgen.data.preprocess import Preprocessing, preprocess
from tests.data.fixtures_meds_extract import write_meds_extract, write_testing_helpers
from tests.data.test_mimic3 import write_mimic3
from tests.data.test_mimic4 import write_mimic4

runner = CliRunner()


def invoke(*args: str):
    """Run ``ehrgen ARGS`` with typer's runner; return its result."""
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_mimic3_import_with_preprocessing(tmp_path):
    """Check that the import equals read_mimic3 + the options, and prints the drops."""
    raw = write_mimic3(tmp_path / "raw")
    result = invoke(
        "data",
        "import",
        "mimic3",
        str(raw),
        "--out",
        str(tmp_path / "out"),
        "--top-k-codes",
        "diagnosis=2,lab=1",
        "--modalities",
        "diagnosis,lab",
        "--lab-code",
        "label",
    )
    assert result.exit_code == 0, result.output
    assert "Dropped while reading" in result.output
    assert "Preprocessing kept 2 of 2 patients" in result.output
    options = Preprocessing(
        modalities=("diagnosis", "lab"), top_k_codes={"diagnosis": 2, "lab": 1}
    )
    expected = read_mimic3(raw, preprocessing=options, lab_code="label")
    assert read_meds(tmp_path / "out") == expected
    assert expected.stats().vocabulary == {"diagnosis": 2, "lab": 1}


def test_mimic4_import_with_icd9_3digit_and_min_visits(tmp_path):
    """Check the mimic4 kind with --icd9-3digit and --min-visits 2."""
    raw = write_mimic4(tmp_path / "raw")
    result = invoke(
        "data",
        "import",
        "mimic4",
        str(raw),
        "--out",
        str(tmp_path / "out"),
        "--icd9-3digit",
        "--min-visits",
        "2",
        "--drop-orphan-labs",
    )
    assert result.exit_code == 0, result.output
    cohort = read_meds(tmp_path / "out")
    assert [p.patient_id for p in cohort] == ["10000032"]
    assert cohort[0].visits[1].codes("diagnosis") == ("ICD10CM//I10", "ICD9CM//038")
    assert cohort[0].visits[0].codes("lab") == ("ITEMID//51006",)


def test_options_apply_to_meds_and_jsonl_imports(tmp_path):
    """Check that the preprocessing options work on MEDS and JSONL sources too."""
    cohort = demo_cohort(30, seed=0)
    write_meds(cohort, tmp_path / "meds")
    write_jsonl(cohort, tmp_path / "c.jsonl")
    options = Preprocessing(min_code_count=3, min_visits=2)
    expected = preprocess(cohort, options)
    for kind, src in (("meds", "meds"), ("jsonl", "c.jsonl")):
        out = tmp_path / f"out-{kind}"
        result = invoke(
            "data",
            "import",
            kind,
            str(tmp_path / src),
            "--out",
            str(out),
            "--min-code-count",
            "3",
            "--min-visits",
            "2",
        )
        assert result.exit_code == 0, result.output
        assert read_meds(out) == expected


def test_omop_import_passes_the_options(tmp_path, monkeypatch):
    """Check that the omop kind calls read_omop(src, preprocessing=...)."""
    calls = []

    def read_omop(source, *, preprocessing=None):
        calls.append((source, preprocessing))
        return demo_cohort(5, seed=0)

    module = types.ModuleType("ehrgen.data.formats.omop")
    module.read_omop = read_omop
    monkeypatch.setitem(sys.modules, "ehrgen.data.formats.omop", module)
    result = invoke(
        "data",
        "import",
        "omop",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--top-k-codes",
        "paper",
    )
    assert result.exit_code == 0, result.output
    assert calls == [(tmp_path, Preprocessing.paper())]
    assert len(read_meds(tmp_path / "o")) == 5


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the console script in-process; return (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["ehrgen", *args])
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--top-k-codes", "many"), "--top-k-codes must be a number"),
        (("--min-visits", "0"), "'min_visits' parameter of Preprocessing"),
        (("--lab-code", "label"), "--lab-code apply to mimic3 and mimic4"),
        (("--modalities", "diagnoses"), "Did you mean 'diagnosis'"),
        (("--prefix-map", "DIAGNOSIS"), "--prefix-map must be PREFIX=modality pairs"),
        (("--prefix-map", "DX=Diag"), "Got 'DX=Diag' instead"),
        (("--prefix-map", "A=drug,A=lab"), "maps 'A' to both 'drug' and 'lab'"),
        (("--unknown-prefixes", "keep"), "--unknown-prefixes must be 'error' or"),
        (("--static-prefix", "GENDER//F"), "--static-prefix takes code prefixes"),
        (
            ("--prefix-map", "DIAGNOSIS=diagnosis", "--static-prefix", "DIAGNOSIS"),
            "both static (static_prefixes, --static-prefix) and mapped",
        ),
        (("--visit-id-column", "hadm_id"), "missing column 'hadm_id'"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, monkeypatch, capsys, args, message):
    """Check that bad options end with exit code 2 and one clear line."""
    write_meds(demo_cohort(5, seed=0), tmp_path / "meds")
    code, err = run_main(
        monkeypatch,
        capsys,
        "data",
        "import",
        "meds",
        str(tmp_path / "meds"),
        "--out",
        str(tmp_path / "out"),
        *args,
    )
    assert code == 2
    assert message in " ".join(err.split())


def test_missing_omop_module_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """Check the error when the OMOP reader cannot be imported."""
    monkeypatch.setitem(sys.modules, "ehrgen.data.formats.omop", None)
    code, err = run_main(
        monkeypatch,
        capsys,
        "data",
        "import",
        "omop",
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2 and "OMOP reader is not available" in err


def test_mimic_schema_error_is_one_line(tmp_path, monkeypatch, capsys):
    """Check that a reader's SchemaError reaches the user as one line, exit code 2."""
    raw = write_mimic3(tmp_path / "raw", ADMISSIONS=None)
    code, err = run_main(
        monkeypatch,
        capsys,
        "data",
        "import",
        "mimic3",
        str(raw),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2 and "no table ADMISSIONS" in err


MEDS_EXTRACT_ARGS = (
    "--prefix-map",
    "DIAGNOSIS=diagnosis,MEDICATION=drug",
    "--prefix-map",
    "LAB=lab",
    "--unknown-prefixes",
    "drop",
    "--visit-id-column",
    "hadm_id",
)


def test_meds_extract_import_gives_one_visit_per_admission(tmp_path):
    """Check that MEDS-Extract's MIMIC-IV conventions import with a prefix map and
    hadm_id visits, and that the summary lists every row not used, with its reason."""
    src = write_meds_extract(tmp_path / "src")
    result = invoke(
        "data", "import", "meds", str(src), "--out", str(tmp_path / "out"),
        *MEDS_EXTRACT_ARGS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cohort = read_meds(tmp_path / "out")
    assert cohort.schema.modalities == ("diagnosis", "drug", "lab")
    first, second = cohort
    assert [v.events for v in first.visits] == [
        {
            "diagnosis": ("ICD//9//4019", "ICD//9//25000"),
            "drug": ("START//Heparin",),
            "lab": ("50912//mg/dL",),
        },
        {"diagnosis": ("ICD//10//I10",), "lab": ("50971//mEq/L",)},
    ]
    # A visit is at its admission's earliest row (ED registration), whatever it maps to.
    assert [v.time for v in first.visits] == [
        datetime(2020, 1, 1, 6),
        datetime(2020, 6, 1, 8),
    ]
    assert second.visits[0].events == {
        "diagnosis": ("ICD//10//E119",),
        "drug": ("START//Insulin",),
    }
    assert first.static["gender"] == "F" and second.static["gender"] == "M"
    assert first.static["age"] == pytest.approx(60.0, abs=0.01)
    lines = [line.strip() for line in result.output.splitlines()]
    summary = lines[lines.index("Not used while reading:") + 1 :][:6]
    assert summary == [
        "HOSPITAL_ADMISSION 3 events: no modality mapped",
        "HOSPITAL_DISCHARGE 3 events: no modality mapped",
        "RACE 3 events: no modality mapped",
        "ED_REGISTRATION 1 events: no modality mapped",
        "LAB 1 events: no hadm_id",
        "MEDS_DEATH 1 events: MEDS code, not used",
    ]


def test_static_prefix_makes_timed_codes_baseline_features(tmp_path):
    """Check that --static-prefix RACE gives each patient their earliest race."""
    src = write_meds_extract(tmp_path / "src")
    result = invoke(
        "data", "import", "meds", str(src), "--out", str(tmp_path / "out"),
        *MEDS_EXTRACT_ARGS, "--static-prefix", "GENDER,RACE",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cohort = read_meds(tmp_path / "out")
    assert [p.static["race"] for p in cohort] == ["WHITE", "ASIAN"]
    assert "RACE 1 events: a later value of a static prefix" in result.output
    assert "RACE 3 events" not in result.output


def test_meds_testing_helpers_dataset_imports(tmp_path):
    """Check the meds-testing-helpers conventions (static//N, dynamic//N)."""
    src = write_testing_helpers(tmp_path / "src")
    result = invoke(
        "data", "import", "meds", str(src), "--out", str(tmp_path / "out"),
        "--prefix-map", "dynamic=diagnosis", "--unknown-prefixes", "drop",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cohort = read_meds(tmp_path / "out")
    assert [[v.events for v in p.visits] for p in cohort] == [
        [{"diagnosis": ("5", "2")}, {"diagnosis": ("5",)}],
        [{"diagnosis": ("1",)}],
    ]
    assert [p.static["static"] for p in cohort] == ["3", "0"]
    assert "other 1 events: no modality mapped" in result.output


def test_unmapped_prefixes_error_names_the_options(tmp_path, monkeypatch, capsys):
    """Check that without a map the error is one line naming the CLI options, and
    that the MEDS options are refused for other kinds."""
    src = write_meds_extract(tmp_path / "src")
    out = str(tmp_path / "out")
    code, err = run_main(
        monkeypatch, capsys, "data", "import", "meds", str(src), "--out", out
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--prefix-map PREFIX=modality" in err and "--unknown-prefixes drop" in err
    code, err = run_main(
        monkeypatch, capsys, "data", "import", "jsonl", str(src), "--out", out,
        "--visit-id-column", "hadm_id",
    )  # fmt: skip
    assert code == 2 and "--visit-id-column apply to meds imports only" in err
