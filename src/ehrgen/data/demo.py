"""The demo cohort: a documented EHR simulator whose truth is known.

:func:`demo_cohort` is what a new user trains on with no data at hand, and what tests
use to check that a model learns real structure. :func:`demo_truth` returns the tables
the simulator draws from (the simulator reads them from it, so the two cannot drift
apart) and facts derived from them, so a test can compare what is generated or learnt
with what is true.

The generative model, per patient:

1. **Baseline.** Gender is F with probability 0.52; ethnicity is white, black,
   hispanic, asian or other (0.60 / 0.14 / 0.14 / 0.07 / 0.05). Age at the first visit
   (years, one decimal) is a child's age, uniform in [0, 18), with probability 0.18,
   else ``18 + 77 * Beta(1.6, 1.4)``.
2. **Visits.** ``1 + NegativeBinomial(r=0.7, mean=1.5 + 2 * age / 100)`` visits, capped
   at :data:`MAX_VISITS` (mean about 3.3, long tail). The first visit falls at a
   whole minute uniformly in 2010-2020; each gap is log-normal (sigma 1.1) with a
   median of ``120 / (1 + 0.3 * k)`` days, ``k`` the number of chronic conditions at
   the previous visit (the sick come back sooner), times :data:`ACUTE_GAP_FACTOR`
   when the previous visit had an acute event (they come back much sooner), clipped
   to [1 day, 3 years].
3. **Risk.** Every :class:`Condition` has a logistic risk, evaluated at the age of the
   visit: ``odds = odds(base) * per_decade ** ((age - 50) / 10) * male_or ** male *
   child_or ** (age < 18) * ethnicity_or[e] * prod(raised_by[c] for c present)``. It
   is zero outside the condition's ``gender`` and onset ``ages`` range [lo, hi).
4. **Chronic conditions** (comorbidity is causal: ``raised_by`` only names conditions
   listed earlier, evaluated in order at the same visit). At the first visit each is
   present with its risk; at each later visit an absent one starts with probability
   :data:`ONSET_PER_VISIT` times its risk. Once present it stays. A staged condition
   starts at its first stage and moves one stage on with probability ``progress`` at
   each later visit, never back.
5. **Acute events** happen at a visit with their risk, raised by the chronic conditions
   present at that visit; they do not persist. (Times, chronic conditions and acute
   events are drawn visit rank by visit rank, since each gap depends on the visit
   before.)
6. **Codes.** Each condition active at a visit emits each of its codes independently
   with the code's probability (a staged condition emits only its current stage's
   diagnosis code). Background noise adds ``Poisson(noise_rate[m])`` codes of modality
   ``m`` drawn uniformly from ``noise_codes[m]``. A visit left without a diagnosis gets
   :data:`FALLBACK_CODE` (a routine examination).
7. **Lab values.** Every lab code at a visit gets a value in its unit
   (``DemoTruth.lab_values``): ``Normal(mean, sd)`` for a healthy patient, plus the
   shift of each condition active at the visit that moves it (creatinine rises with
   the CKD stage, glucose and HbA1c with diabetes, white cells with infection, ...),
   floored at a tenth of the healthy mean and rounded to 2 significant decimals.
   Values come from a second generator seeded from the same seed, so they leave the
   codes unchanged.

Code strings carry their system before ``//``: diagnoses ``ICD9CM//4019`` (ICD-9-CM,
no dot), procedures ``ICD9PROC//3995``, drugs ``ATC//C09A`` (ATC level 3), labs plain
names (``Creatinine``). Draws use one local ``np.random.default_rng(seed)``, so a seed
gives the same cohort on every machine and call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ehrgen.data import Cohort, CohortBuilder, CohortSchema
from ehrgen.errors import ConfigError

__all__ = [
    "ACUTE_GAP_FACTOR",
    "FALLBACK_CODE",
    "MAX_VISITS",
    "ONSET_PER_VISIT",
    "Condition",
    "DemoTruth",
    "LabValue",
    "demo_cohort",
    "demo_schema",
    "demo_truth",
]

MODALITIES = ("diagnosis", "procedure", "drug", "lab")
GENDER_P = {"F": 0.52, "M": 0.48}
ETHNICITY_P = dict(white=0.60, black=0.14, hispanic=0.14, asian=0.07, other=0.05)
MAX_VISITS = 25
# Per-visit chance of a new chronic condition, as a fraction of its risk: small, so
# that most chronic disease is already present at the first visit, as in a cohort
# recruited from people who come to hospital.
ONSET_PER_VISIT = 0.05
# The median gap after a visit with an acute event, as a fraction of the usual one.
ACUTE_GAP_FACTOR = 0.25
FALLBACK_CODE = "ICD9CM//V700"
NOISE_RATE = {"diagnosis": 0.5, "procedure": 0.2, "drug": 0.6, "lab": 1.2}
_PREFIX = dict(diagnosis="ICD9CM//", procedure="ICD9PROC//", drug="ATC//", lab="")
_MINUTES_PER_DAY = 24 * 60
_MINUTES_PER_YEAR = 365.25 * _MINUTES_PER_DAY
_EPOCH = np.datetime64("2010-01-01T00:00", "m")
_FIRST_VISIT_SPAN = int((np.datetime64("2021-01-01T00:00", "m") - _EPOCH).astype(int))
_MAX_GAP = 3 * 365 * _MINUTES_PER_DAY


@dataclass(frozen=True)
class Condition:
    """One latent condition of the simulator, and how it shows in the record.

    Attributes:
        name: identifier, e.g. ``"type2_diabetes"``.
        chronic: chronic conditions persist once present; acute ones happen per visit.
        base: risk of the reference patient (age 50, female, white, no comorbidity):
            the prevalence at the first visit (chronic) or per visit (acute).
        codes: modality -> code -> probability that the condition emits the code at a
            visit where it is active.
        per_decade: odds ratio per decade of age.
        male_or: odds ratio for men.
        child_or: odds ratio under 18, on top of ``per_decade``.
        ethnicity_or: ethnicity -> odds ratio (1 when absent).
        raised_by: condition -> odds ratio when that chronic condition is present.
        gender: the only gender the condition (and so each code only it emits) can
            occur in, or None.
        ages: ``[lo, hi)`` age at the visit, in years, where the condition can start
            (chronic) or occur (acute). A chronic condition persists after ``hi``.
        stages: diagnosis codes in order of severity, for a progressing condition.
        progress: per-visit probability of moving to the next stage.

    Example:
        >>> demo_truth().conditions["ckd"].stages
        ('ICD9CM//5853', 'ICD9CM//5854', 'ICD9CM//5855')
    """

    name: str
    chronic: bool
    base: float
    codes: Mapping[str, Mapping[str, float]]
    per_decade: float = 1.0
    male_or: float = 1.0
    child_or: float = 1.0
    ethnicity_or: Mapping[str, float] = field(default_factory=dict)
    raised_by: Mapping[str, float] = field(default_factory=dict)
    gender: str | None = None
    ages: tuple[float, float] = (0.0, math.inf)
    stages: tuple[str, ...] = ()
    progress: float = 0.0

    @property
    def diagnosis_codes(self) -> tuple[str, ...]:
        """The diagnosis codes the condition emits."""
        return tuple(self.codes.get("diagnosis", {}))

    def risk(
        self, age: np.ndarray, male: np.ndarray, ethnicity: np.ndarray, present: Any
    ) -> np.ndarray:
        """The probability of the condition for each row (see the module docstring).

        Args:
            age: (N,) age at the visit, in years.
            male: (N,) bool.
            ethnicity: (N,) int, indices into the ethnicities of :func:`demo_schema`.
            present: condition name -> (N,) bool, the chronic conditions present.
        """
        logit = (
            math.log(self.base / (1.0 - self.base))
            + math.log(self.per_decade) * (age - 50.0) / 10.0
            + math.log(self.male_or) * male
            + math.log(self.child_or) * (age < 18.0)
        )
        eth_or = [self.ethnicity_or.get(e, 1.0) for e in ETHNICITY_P]
        logit = logit + np.log(eth_or)[ethnicity]
        for other, odds in self.raised_by.items():
            logit = logit + math.log(odds) * present[other]
        allowed = (age >= self.ages[0]) & (age < self.ages[1])
        if self.gender is not None:
            allowed &= male == (self.gender == "M")
        return np.where(allowed, 1.0 / (1.0 + np.exp(-logit)), 0.0)


def _condition(
    name: str,
    chronic: bool,
    base: float,
    dx: Mapping[str, float],
    proc: Mapping[str, float] | None = None,
    drug: Mapping[str, float] | None = None,
    lab: Mapping[str, float] | None = None,
    stages: tuple[str, ...] = (),
    **risk: Any,
) -> Condition:
    """A condition from short codes: the code-system prefixes are added here."""
    tables = dict(zip(MODALITIES, (dx, proc, drug, lab), strict=True))
    codes = {
        m: {_PREFIX[m] + code: p for code, p in table.items()}
        for m, table in tables.items()
        if table
    }
    stages = tuple(_PREFIX["diagnosis"] + code for code in stages)
    return Condition(name, chronic, base, codes, stages=stages, **risk)


# The tables. Codes are real ICD-9-CM / ICD-9 procedure / ATC codes that fit each
# condition; probabilities and odds ratios are plausible, not estimated from data.
def _chronic_conditions() -> list[Condition]:
    return [
        _condition("obesity", True, 0.15, {"27800": 0.6, "V8541": 0.2},
                   lab={"Glucose": 0.3}, ethnicity_or={"black": 1.5, "hispanic": 1.4}),
        _condition("hyperlipidemia", True, 0.15, {"2724": 0.75, "2720": 0.2},
                   drug={"C10A": 0.8}, lab={"Cholesterol, Total": 0.6,
                   "LDL Cholesterol": 0.5}, per_decade=1.6, raised_by={"obesity": 1.8}),
        _condition("type2_diabetes", True, 0.08, {"25000": 0.9},
                   drug={"A10B": 0.8, "A10A": 0.25},
                   lab={"HbA1c": 0.85, "Glucose": 0.7},
                   per_decade=1.6, raised_by={"obesity": 3.0},
                   ethnicity_or={"black": 1.6, "hispanic": 1.8, "asian": 1.5}),
        _condition("hypertension", True, 0.25, {"4019": 0.9},
                   drug={"C09A": 0.5, "C03A": 0.3, "C08C": 0.3},
                   lab={"Potassium": 0.4, "Sodium": 0.4}, male_or=1.3,
                   ethnicity_or={"black": 1.8},
                   raised_by={"obesity": 2.0, "type2_diabetes": 2.5}, per_decade=1.8),
        _condition("ckd", True, 0.03, {"5853": 0.85, "5854": 0.9, "5855": 0.95},
                   proc={"3995": 0.1}, drug={"B03X": 0.25, "C03C": 0.3},
                   lab={"Creatinine": 0.9, "Urea Nitrogen": 0.8, "Potassium": 0.5},
                   stages=("5853", "5854", "5855"), progress=0.12, per_decade=1.9,
                   raised_by={"type2_diabetes": 3.0, "hypertension": 2.5}),
        _condition("cad", True, 0.03, {"41401": 0.85},
                   proc={"8856": 0.08}, drug={"B01A": 0.6, "C10A": 0.5, "C01D": 0.3},
                   per_decade=2.0, male_or=2.0,
                   raised_by={"hyperlipidemia": 2.0, "type2_diabetes": 2.0,
                              "hypertension": 1.8}),
        _condition("chf", True, 0.01, {"4280": 0.85},
                   proc={"8872": 0.3}, drug={"C03C": 0.7, "C07A": 0.6},
                   lab={"NT-proBNP": 0.6}, per_decade=2.2,
                   raised_by={"cad": 3.0, "hypertension": 2.0, "ckd": 1.8}),
        _condition("atrial_fibrillation", True, 0.01, {"42731": 0.85},
                   proc={"8952": 0.4}, drug={"B01A": 0.7, "C07A": 0.4},
                   lab={"INR": 0.5}, per_decade=2.4, male_or=1.5,
                   raised_by={"hypertension": 1.5, "chf": 2.5}),
        _condition("copd", True, 0.04, {"496": 0.85},
                   proc={"8938": 0.2}, drug={"R03A": 0.8, "R03B": 0.5},
                   lab={"pCO2": 0.3}, per_decade=1.7, male_or=1.3),
        _condition("asthma", True, 0.07, {"49390": 0.85},
                   drug={"R03A": 0.8, "R03B": 0.4}, per_decade=0.95, child_or=1.6,
                   raised_by={"obesity": 1.4}),
        _condition("depression", True, 0.08, {"311": 0.85},
                   drug={"N06A": 0.75}, male_or=0.55),
        _condition("anxiety", True, 0.07, {"30000": 0.8},
                   drug={"N05B": 0.6}, male_or=0.55, raised_by={"depression": 3.0}),
        _condition("hypothyroidism", True, 0.05, {"2449": 0.85},
                   drug={"H03A": 0.85}, lab={"TSH": 0.8}, per_decade=1.3, male_or=0.25),
        _condition("osteoarthritis", True, 0.1, {"71590": 0.7},
                   proc={"8154": 0.05}, drug={"M01A": 0.6, "N02B": 0.3},
                   per_decade=1.9, raised_by={"obesity": 1.8}),
        _condition("osteoporosis", True, 0.03, {"73300": 0.8},
                   drug={"M05B": 0.6, "A12A": 0.5}, lab={"Vitamin D": 0.4},
                   per_decade=2.2, male_or=0.25),
        _condition("anemia", True, 0.05, {"2859": 0.8},
                   drug={"B03A": 0.5}, lab={"Hemoglobin": 0.9, "Ferritin": 0.5},
                   per_decade=1.2, male_or=0.6, raised_by={"ckd": 3.0}),
        _condition("gout", True, 0.02, {"2749": 0.85},
                   drug={"M04A": 0.7}, lab={"Uric Acid": 0.6}, per_decade=1.5,
                   male_or=3.5, raised_by={"ckd": 2.0, "obesity": 2.0}),
        _condition("dementia", True, 0.003, {"3310": 0.6, "2900": 0.3, "29410": 0.2},
                   proc={"8891": 0.15}, drug={"N06D": 0.6}, per_decade=3.0,
                   ages=(60.0, math.inf),
                   raised_by={"hypertension": 1.3, "type2_diabetes": 1.5}),
        _condition("bph", True, 0.3, {"60000": 0.85},
                   proc={"6029": 0.03}, drug={"G04C": 0.7}, lab={"PSA": 0.5},
                   per_decade=2.0, gender="M", ages=(40.0, math.inf)),
        _condition("endometriosis", True, 0.1, {"6179": 0.85},
                   proc={"5421": 0.1}, drug={"G03D": 0.5, "M01A": 0.4},
                   gender="F", ages=(15.0, 50.0)),
    ]  # fmt: skip


def _acute_conditions() -> list[Condition]:
    return [
        _condition("pneumonia", False, 0.02, {"486": 0.9},
                   proc={"8744": 0.6}, drug={"J01D": 0.5, "J01F": 0.4},
                   lab={"White Blood Cells": 0.9, "Lactate": 0.3}, per_decade=1.3,
                   child_or=2.5,
                   raised_by={"copd": 3.0, "chf": 2.0, "asthma": 1.5, "dementia": 2.0}),
        _condition("myocardial_infarction", False, 0.002, {"41071": 0.9},
                   proc={"0066": 0.4, "3607": 0.35, "8856": 0.5},
                   drug={"B01A": 0.9, "C10A": 0.6, "C07A": 0.6},
                   lab={"Troponin I": 0.95, "CK-MB": 0.6}, per_decade=1.6, male_or=2.2,
                   raised_by={"cad": 5.0, "type2_diabetes": 1.8, "hypertension": 1.5}),
        _condition("stroke", False, 0.003, {"43491": 0.9},
                   proc={"8703": 0.8, "8891": 0.3}, drug={"B01A": 0.7},
                   per_decade=1.8,
                   raised_by={"atrial_fibrillation": 4.0, "hypertension": 2.0}),
        _condition("hip_fracture", False, 0.002, {"82000": 0.5, "82021": 0.45},
                   proc={"8151": 0.3, "8152": 0.2, "7915": 0.4}, drug={"N02A": 0.7},
                   lab={"Hemoglobin": 0.6}, per_decade=2.2, male_or=0.5,
                   raised_by={"osteoporosis": 4.0, "dementia": 2.5}),
        _condition("sepsis", False, 0.004, {"0389": 0.9, "99591": 0.6},
                   proc={"3893": 0.5, "9604": 0.15, "9671": 0.15},
                   drug={"J01D": 0.6, "J01C": 0.4, "C01C": 0.3},
                   lab={"Lactate": 0.9, "White Blood Cells": 0.9}, per_decade=1.6,
                   raised_by={"ckd": 2.5, "type2_diabetes": 1.6, "dementia": 1.8}),
        _condition("uti", False, 0.03, {"5990": 0.9},
                   drug={"J01M": 0.5, "J01E": 0.3}, lab={"WBC, Urine": 0.7},
                   per_decade=1.2, male_or=0.3,
                   raised_by={"dementia": 2.0, "type2_diabetes": 1.4}),
        _condition("bronchiolitis", False, 0.15, {"46611": 0.6, "46619": 0.4},
                   proc={"9396": 0.2}, drug={"R03A": 0.3}, lab={"RSV Antigen": 0.5},
                   ages=(0.0, 2.0)),
        _condition("otitis_media", False, 0.12, {"3829": 0.7, "38200": 0.3},
                   proc={"2001": 0.05}, drug={"J01C": 0.7}, ages=(0.5, 12.0)),
        _condition("delivery", False, 0.25, {"V270": 0.8, "650": 0.6},
                   proc={"7359": 0.5, "741": 0.3}, drug={"H01B": 0.5},
                   lab={"hCG": 0.5}, per_decade=0.8, gender="F", ages=(15.0, 45.0)),
    ]  # fmt: skip


def _noise_codes() -> dict[str, tuple[str, ...]]:
    short = {
        "diagnosis": ("78060", "7862", "78900", "7840", "7295", "4659", "V0481",
                      "5589", "53081"),
        "procedure": ("3893", "9904", "8744", "8952"),
        "drug": ("A02B", "N02B", "A06A", "B05B", "A04A"),
        "lab": ("Hemoglobin", "White Blood Cells", "Platelet Count", "Sodium",
                "Potassium", "Glucose", "Creatinine", "Hematocrit"),
    }  # fmt: skip
    return {m: tuple(_PREFIX[m] + code for code in codes) for m, codes in short.items()}


# --------------------------------------------------------------------------- truth


@dataclass(frozen=True)
class LabValue:
    """How the simulator draws a lab's value: ``Normal(mean, sd)`` in ``unit`` for a
    healthy patient, plus ``shifts[c]`` for each active condition ``c`` (for a staged
    condition, ``stage_shifts[c][s]`` at stage ``s`` instead)."""

    unit: str
    mean: float
    sd: float
    shifts: Mapping[str, float] = field(default_factory=dict)
    stage_shifts: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def expected(self, active: Mapping[str, int | None]) -> float:
        """The mean value given the active conditions (name -> stage or None)."""
        mean = self.mean
        for name, stage in active.items():
            if name in self.stage_shifts and stage is not None:
                mean += self.stage_shifts[name][stage]
            else:
                mean += self.shifts.get(name, 0.0)
        return mean


def _lab_values() -> dict[str, LabValue]:
    """Reference ranges of adult lab tests (healthy mean and spread) and the shift
    each condition gives, round figures chosen to be clinically plausible."""
    return {
        "Glucose": LabValue("mg/dL", 95, 12, {"type2_diabetes": 70, "obesity": 10,
                                                "sepsis": 40}),
        "Cholesterol, Total": LabValue("mg/dL", 185, 25, {"hyperlipidemia": 70}),
        "LDL Cholesterol": LabValue("mg/dL", 105, 20, {"hyperlipidemia": 60}),
        "HbA1c": LabValue("%", 5.4, 0.3, {"type2_diabetes": 2.2, "obesity": 0.3}),
        "Potassium": LabValue("mEq/L", 4.2, 0.3, {"hypertension": 0.1},
                              {"ckd": (0.4, 0.7, 1.1)}),
        "Sodium": LabValue("mEq/L", 140, 2.5, {"chf": -4, "sepsis": -3}),
        "Creatinine": LabValue("mg/dL", 0.9, 0.18, {"chf": 0.3, "sepsis": 0.8},
                               {"ckd": (0.9, 2.0, 4.2)}),
        "Urea Nitrogen": LabValue("mg/dL", 14, 3.5, {"chf": 8, "sepsis": 12},
                                  {"ckd": (15, 30, 55)}),
        "NT-proBNP": LabValue("pg/mL", 90, 40, {"chf": 2500,
                                                "atrial_fibrillation": 400}),
        "INR": LabValue("ratio", 1.0, 0.08, {"atrial_fibrillation": 1.4}),
        "pCO2": LabValue("mmHg", 40, 3, {"copd": 12}),
        "TSH": LabValue("mIU/L", 2.0, 0.8, {"hypothyroidism": 6.0}),
        "Vitamin D": LabValue("ng/mL", 32, 8, {"osteoporosis": -12}),
        "Hemoglobin": LabValue("g/dL", 14, 1.2, {"anemia": -4, "hip_fracture": -2.5,
                                                 "ckd": -1.5}),
        "Ferritin": LabValue("ng/mL", 120, 50, {"anemia": -95}),
        "Uric Acid": LabValue("mg/dL", 5.5, 1.0, {"gout": 3.0, "ckd": 1.0}),
        "PSA": LabValue("ng/mL", 1.2, 0.6, {"bph": 3.5}),
        "White Blood Cells": LabValue("K/uL", 7.0, 1.5, {"pneumonia": 6.0,
                                                         "sepsis": 9.0, "uti": 2.5}),
        "Lactate": LabValue("mmol/L", 1.1, 0.3, {"sepsis": 2.8, "pneumonia": 0.6}),
        "Troponin I": LabValue("ng/mL", 0.01, 0.005, {"myocardial_infarction": 4.0}),
        "CK-MB": LabValue("ng/mL", 2.5, 1.0, {"myocardial_infarction": 35.0}),
        "WBC, Urine": LabValue("/hpf", 2.0, 1.0, {"uti": 45.0}),
        "RSV Antigen": LabValue("index", 0.2, 0.1, {"bronchiolitis": 3.0}),
        "hCG": LabValue("mIU/mL", 3.0, 1.5, {"delivery": 25000.0}),
        "Platelet Count": LabValue("K/uL", 250, 50, {"sepsis": -110}),
        "Hematocrit": LabValue("%", 42, 3.5, {"anemia": -11, "hip_fracture": -7}),
    }  # fmt: skip


@dataclass(frozen=True)
class DemoTruth:
    """What the demo simulator does, as data: the tables it draws from and facts
    derived from them. Treat it as read-only.

    Attributes:
        conditions: name -> :class:`Condition`, chronic ones first, in simulation order.
        noise_codes: modality -> background codes (drawn uniformly).
        noise_rate: modality -> mean number of background codes per visit.
        gender_specific_codes: code -> the only gender ("F" or "M") it can appear in.
        age_restricted_codes: code -> ``(lo, hi)``: it appears only at visits where
            the patient's age (age at the first visit plus the time elapsed since,
            in years of 365.25 days) is in ``[lo, hi)``.
        treats: drug code -> the diagnosis codes of the conditions that emit it.
        code_conditions: code -> the conditions that emit it.
        chronic_codes: diagnosis codes of chronic conditions (they persist).
        acute_codes: diagnosis codes of acute events.
        gender_p, ethnicity_p: category -> probability, at baseline.
        max_visits: the most visits a patient has.
        onset_per_visit: per-visit onset of an absent chronic condition, as a
            fraction of its risk.
        fallback_code: the diagnosis of a visit that would have none.
        lab_values: lab code -> :class:`LabValue` (unit, healthy range, shifts).
        acute_gap_factor: the median gap after a visit with an acute event, as a
            fraction of the usual one.

    Example:
        >>> truth = demo_truth()
        >>> truth.treats["ATC//A10B"]
        ('ICD9CM//25000',)
        >>> truth.gender_specific_codes["ICD9CM//60000"]
        'M'
    """

    conditions: Mapping[str, Condition]
    noise_codes: Mapping[str, tuple[str, ...]]
    noise_rate: Mapping[str, float]
    gender_specific_codes: dict[str, str]
    age_restricted_codes: dict[str, tuple[float, float]]
    treats: dict[str, tuple[str, ...]]
    code_conditions: dict[str, tuple[str, ...]]
    chronic_codes: tuple[str, ...]
    acute_codes: tuple[str, ...]
    gender_p: Mapping[str, float] = field(default_factory=lambda: dict(GENDER_P))
    ethnicity_p: Mapping[str, float] = field(default_factory=lambda: dict(ETHNICITY_P))
    max_visits: int = MAX_VISITS
    onset_per_visit: float = ONSET_PER_VISIT
    fallback_code: str = FALLBACK_CODE
    lab_values: Mapping[str, LabValue] = field(default_factory=_lab_values)
    acute_gap_factor: float = ACUTE_GAP_FACTOR

    @property
    def vocabulary(self) -> dict[str, tuple[str, ...]]:
        """modality -> every code the simulator can emit, in a fixed order."""
        vocab: dict[str, dict[str, None]] = {m: {} for m in MODALITIES}
        vocab["diagnosis"][self.fallback_code] = None
        for condition in self.conditions.values():
            for modality, table in condition.codes.items():
                vocab[modality].update(dict.fromkeys(table))
        for modality, codes in self.noise_codes.items():
            vocab[modality].update(dict.fromkeys(codes))
        return {m: tuple(codes) for m, codes in vocab.items()}


def demo_truth() -> DemoTruth:
    """The known truth of :func:`demo_cohort`: the tables it draws from and the facts
    that follow from them (a fresh copy on each call).

    Example:
        >>> truth = demo_truth()
        >>> truth.age_restricted_codes["ICD9CM//46611"]
        (0.0, 2.0)
        >>> "ICD9CM//4019" in truth.chronic_codes
        True
    """
    conditions = {c.name: c for c in (*_chronic_conditions(), *_acute_conditions())}
    noise = _noise_codes()
    emitters: dict[str, list[Condition]] = {}
    for condition in conditions.values():
        for table in condition.codes.values():
            for code in table:
                emitters.setdefault(code, []).append(condition)
    noisy = {code for codes in noise.values() for code in codes}
    specific = {code: by for code, by in emitters.items() if code not in noisy}
    genders = {code: {c.gender for c in by} for code, by in specific.items()}

    def dx_of(chronic: bool) -> tuple[str, ...]:
        kept = (c for c in conditions.values() if c.chronic == chronic)
        return tuple(code for c in kept for code in c.diagnosis_codes)

    treats = {
        code: tuple(dict.fromkeys(dx for c in by for dx in c.diagnosis_codes))
        for code, by in emitters.items()
        if code.startswith(_PREFIX["drug"])
    }
    return DemoTruth(
        conditions=conditions,
        noise_codes=noise,
        noise_rate=dict(NOISE_RATE),
        gender_specific_codes={
            code: g.pop()
            for code, g in genders.items()
            if len(g) == 1 and None not in g
        },
        age_restricted_codes={
            code: span
            for code, by in specific.items()
            if (span := _age_span(by)) != (0.0, math.inf)
        },
        treats=treats,
        code_conditions={
            code: tuple(c.name for c in by) for code, by in emitters.items()
        },
        chronic_codes=dx_of(chronic=True),
        acute_codes=dx_of(chronic=False),
    )


def _age_span(conditions: list[Condition]) -> tuple[float, float]:
    """The ages at a visit where a code of these conditions can appear: a chronic
    condition stays past the end of its onset range."""
    lo = min(c.ages[0] for c in conditions)
    hi = max(c.ages[1] if not c.chronic else math.inf for c in conditions)
    return (float(lo), float(hi))


def demo_schema() -> CohortSchema:
    """The schema of every demo cohort.

    Example:
        >>> demo_schema().features
        ('gender', 'ethnicity', 'age')
    """
    return CohortSchema(
        modalities=MODALITIES,
        categorical={"gender": tuple(GENDER_P), "ethnicity": tuple(ETHNICITY_P)},
        numerical=("age",),
    )


# --------------------------------------------------------------------------- simulator


def demo_cohort(n_patients: int = 1000, seed: int = 0) -> Cohort:
    """Simulate a cohort of patients with known structure (see the module docstring).

    Args:
        n_patients: how many patients; each has at least one visit.
        seed: the seed of the random generator; equal seeds give equal cohorts.

    Returns:
        A cohort with modalities diagnosis, procedure, drug, lab, features gender,
        ethnicity and age (years at the first visit), and real visit times. Its
        metadata holds the source, the seed, ``n_patients`` and the condition names.

    Raises:
        ConfigError: ``n_patients`` is not a positive integer, or ``seed`` not a
            non-negative integer.

    Example:
        >>> cohort = demo_cohort(100, seed=0)
        >>> len(cohort), cohort.schema.modalities
        (100, ('diagnosis', 'procedure', 'drug', 'lab'))
        >>> cohort == demo_cohort(100, seed=0)
        True
    """
    for name, value, minimum in (("n_patients", n_patients, 1), ("seed", seed, 0)):
        is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not is_int or value < minimum:
            raise ConfigError(
                f"The {name!r} parameter of demo_cohort must be an integer >= "
                f"{minimum}. Got {value!r} instead."
            )
    truth = demo_truth()
    sim = _Simulation(np.random.default_rng(seed), truth, int(n_patients))
    sim.value_rng = np.random.default_rng([int(seed), 1])
    metadata = {
        "source": "ehrgen demo simulator",
        "seed": int(seed),
        "n_patients": int(n_patients),
        "conditions": list(truth.conditions),
    }
    return sim.build(metadata)


class _Simulation:
    """One run of the simulator: the latent state of every patient and visit.

    Visits are stored flat, each patient's contiguous and in order (``offsets``), and
    drawn in the order of the module docstring.
    """

    def __init__(self, rng: np.random.Generator, truth: DemoTruth, n: int) -> None:
        self.rng, self.truth = rng, truth
        self.chronic = [c for c in truth.conditions.values() if c.chronic]
        self.acute_events = [c for c in truth.conditions.values() if not c.chronic]
        self.value_rng = rng
        self.vocabulary = [c for m in MODALITIES for c in truth.vocabulary[m]]
        self.male = rng.random(n) < truth.gender_p["M"]  # (P,)
        self.ethnicity = rng.choice(
            len(ETHNICITY_P), n, p=list(truth.ethnicity_p.values())
        )
        child = rng.random(n) < 0.18
        adult_age = 18.0 + 77.0 * rng.beta(1.6, 1.4, n)
        age = np.round(np.where(child, rng.uniform(0.0, 18.0, n), adult_age), 1)
        # Rounding could lift a child to 18.0, an adult's age.
        self.age0 = np.where(child, np.minimum(age, 17.9), age)  # (P,)
        mean_extra = 1.5 + 2.0 * self.age0 / 100.0
        extra = rng.negative_binomial(0.7, 0.7 / (0.7 + mean_extra))
        self.counts = 1 + np.minimum(extra, truth.max_visits - 1)  # (P,)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # (P+1,)
        v, k = int(self.offsets[-1]), len(self.chronic)
        self.patient = np.repeat(np.arange(n), self.counts)  # (V,)
        self.minutes = np.zeros(v, dtype=np.int64)  # (V,) since 2010-01-01
        self.age = np.zeros(v)  # (V,) age at the visit, years
        self.present = np.zeros((v, k), dtype=bool)  # (V, K) chronic conditions
        self.stage = np.zeros((v, k), dtype=np.int8)  # (V, K) current stages
        self.acute = np.zeros((v, len(self.acute_events)), dtype=bool)  # (V, A)
        # One step per visit rank, vectorised over the patients with that many
        # visits: a visit depends on the previous one (gap, persistence, progression).
        for j in range(int(self.counts.max())):
            who = np.flatnonzero(self.counts > j)
            self._step_time(who, j)
            self._step_chronic(who, j)
            self._step_acute(who, j)

    def _step_time(self, who: np.ndarray, j: int) -> None:
        first = self.offsets[who]
        rows = first + j
        if j == 0:
            self.minutes[rows] = self.rng.integers(0, _FIRST_VISIT_SPAN, rows.size)
        else:
            median_days = 120.0 / (1.0 + 0.3 * self.present[rows - 1].sum(axis=1))
            after_acute = self.acute[rows - 1].any(axis=1)
            median_days *= np.where(after_acute, self.truth.acute_gap_factor, 1.0)
            days = self.rng.lognormal(np.log(median_days), 1.1)
            gap = np.clip(np.round(days * _MINUTES_PER_DAY), _MINUTES_PER_DAY, _MAX_GAP)
            self.minutes[rows] = self.minutes[rows - 1] + gap.astype(np.int64)
        elapsed = (self.minutes[rows] - self.minutes[first]) / _MINUTES_PER_YEAR
        self.age[rows] = self.age0[who] + elapsed

    def _step_chronic(self, who: np.ndarray, j: int) -> None:
        rows, prev = self.offsets[who] + j, self.offsets[who] + j - 1
        male, ethnicity, random = self.male[who], self.ethnicity[who], self.rng.random
        present: dict[str, np.ndarray] = {}
        for k, condition in enumerate(self.chronic):
            risk = condition.risk(self.age[rows], male, ethnicity, present)
            if j == 0:
                now = random(rows.size) < risk
            else:
                before = self.present[prev, k]
                now = before | (random(rows.size) < self.truth.onset_per_visit * risk)
                if condition.stages:
                    step = before & (random(rows.size) < condition.progress)
                    top = len(condition.stages) - 1
                    self.stage[rows, k] = np.minimum(self.stage[prev, k] + step, top)
            self.present[rows, k] = now
            present[condition.name] = now

    def _step_acute(self, who: np.ndarray, j: int) -> None:
        rows = self.offsets[who] + j
        present = {c.name: self.present[rows, k] for k, c in enumerate(self.chronic)}
        male, ethnicity = self.male[who], self.ethnicity[who]
        for a, condition in enumerate(self.acute_events):
            risk = condition.risk(self.age[rows], male, ethnicity, present)
            self.acute[rows, a] = self.rng.random(rows.size) < risk

    def active(self) -> np.ndarray:
        """(V, C) bool: the conditions, chronic then acute, active at each visit."""
        return np.column_stack([self.present, self.acute])

    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(E,) visit and code indices (into ``vocabulary``), sorted, unique."""
        index = {code: i for i, code in enumerate(self.vocabulary)}
        visit_of, code_of = self._condition_codes(index)
        n_visits = len(self.minutes)
        for modality, pool in self.truth.noise_codes.items():
            count = self.rng.poisson(self.truth.noise_rate[modality], n_visits)
            ids = np.array([index[code] for code in pool])
            visit_of.append(np.repeat(np.arange(n_visits), count))
            code_of.append(ids[self.rng.integers(0, len(pool), int(count.sum()))])
        visits, codes = np.concatenate(visit_of), np.concatenate(code_of)
        n_dx = len(self.truth.vocabulary["diagnosis"])
        has_dx = np.bincount(visits[codes < n_dx], minlength=n_visits) > 0
        bare = np.flatnonzero(~has_dx)
        visits = np.concatenate([visits, bare])
        codes = np.concatenate(
            [codes, np.full(bare.size, index[self.truth.fallback_code])]
        )
        # Codes are numbered modality by modality, so sorting by (visit, code) also
        # groups each visit's codes by modality, in the schema's order.
        keys = np.unique(visits * len(index) + codes)
        return keys // len(index), keys % len(index)

    def _condition_codes(
        self, index: dict[str, int]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The codes emitted by active conditions: visit and code indices, in parts."""
        active = self.active()
        visit_of, code_of = [], []
        for c, condition in enumerate(self.truth.conditions.values()):
            rows = np.flatnonzero(active[:, c])
            for modality, table in condition.codes.items():
                ids = np.array([index[code] for code in table])
                p = np.fromiter(table.values(), float)
                hit = self.rng.random((rows.size, ids.size)) < p  # (rows, codes)
                if modality == "diagnosis" and condition.stages:
                    # Only the current stage's code (codes outside the stages always).
                    rank = [condition.stages.index(x) if x in condition.stages else -1
                            for x in table]  # fmt: skip
                    current = self.stage[rows, c][:, None]
                    hit &= (np.array(rank) < 0) | (np.array(rank) == current)
                r, k = np.nonzero(hit)
                visit_of.append(rows[r])
                code_of.append(ids[k])
        return visit_of, code_of

    def lab_values(self, visit_of: np.ndarray, code_of: np.ndarray) -> np.ndarray:
        """(E,) each lab event's value (NaN for other events), see the docstring."""
        out = np.full(len(code_of), np.nan)
        active = self.active()
        names = list(self.truth.conditions)
        chronic_rank = {c.name: k for k, c in enumerate(self.chronic)}
        for lab, table in self.truth.lab_values.items():
            if lab not in self.vocabulary:
                continue
            rows = np.flatnonzero(code_of == self.vocabulary.index(lab))
            visits = visit_of[rows]
            mean = np.full(rows.size, float(table.mean))
            for name, shift in table.shifts.items():
                mean += shift * active[visits, names.index(name)]
            for name, by_stage in table.stage_shifts.items():
                k = chronic_rank[name]
                shifts = np.asarray(by_stage)[self.stage[visits, k]]
                mean += shifts * self.present[visits, k]
            drawn = self.value_rng.normal(mean, table.sd)
            drawn = np.maximum(drawn, 0.1 * table.mean)
            decimals = max(0, 2 - math.floor(math.log10(table.mean)))
            out[rows] = np.round(drawn, decimals)
        return out

    def build(self, metadata: dict[str, Any]) -> Cohort:
        """Draw the codes and hand every patient to a :class:`CohortBuilder`."""
        visit_of, code_of = self.codes()
        numbers = self.lab_values(visit_of, code_of).tolist()
        modality = [m for m in MODALITIES for _ in self.truth.vocabulary[m]]
        counts = np.bincount(visit_of, minlength=len(self.minutes))
        event_offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
        times = (_EPOCH + self.minutes.astype("timedelta64[m]")).astype(object)
        codes, offsets = code_of.tolist(), self.offsets.tolist()
        ethnicities = list(ETHNICITY_P)
        builder = CohortBuilder(demo_schema(), source="demo")
        for p in range(len(self.age0)):
            visits = []
            for v in range(offsets[p], offsets[p + 1]):
                events: dict[str, list[str]] = {}
                values: dict[str, dict[str, float]] = {}
                for e in range(event_offsets[v], event_offsets[v + 1]):
                    code = self.vocabulary[codes[e]]
                    events.setdefault(modality[codes[e]], []).append(code)
                    if numbers[e] == numbers[e]:
                        values.setdefault("lab", {})[code] = numbers[e]
                visits.append((times[v], events, values))
            static = {
                "gender": "M" if self.male[p] else "F",
                "ethnicity": ethnicities[self.ethnicity[p]],
                "age": float(self.age0[p]),
            }
            builder.add(str(p), static, visits)
        cohort = builder.build(metadata=metadata)
        lab = cohort.schema.modalities.index("lab")
        labs = self.truth.lab_values
        units = [
            labs[code].unit if m == lab and code in labs else None
            for code, m in zip(cohort.code_values, cohort.code_modality.tolist())
        ]
        return cohort.replace(code_units=units)
