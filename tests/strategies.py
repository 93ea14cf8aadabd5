"""Hypothesis strategies for patients and cohorts, shared by the round-trip tests."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import strategies as st

from ehrgen.data import Cohort, CohortSchema, Patient, Visit

MODALITIES = ("diagnosis", "procedure", "drug", "lab")
SCHEMA = CohortSchema(
    modalities=MODALITIES,
    categorical={"gender": ("F", "M"), "ethnicity": ("asian", "black", "white")},
    numerical=("age",),
)

# Code strings as real sources spell them, plus awkward ones (unicode, separators).
code_strings = st.one_of(
    st.sampled_from(["ICD9CM//4019", "ICD9CM//25000", "ATC//N02B", "Creatinine"]),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc")),
        min_size=1,
        max_size=12,
    ),
)
float32_ages = st.floats(0, 120, allow_nan=False, width=32)
lab_values = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False, width=32))


@st.composite
def visits_in_order(draw, max_visits: int = 5, with_times: bool = True):
    n = draw(st.integers(1, max_visits))
    start = draw(st.datetimes(datetime(1990, 1, 1), datetime(2030, 1, 1)))
    gaps = draw(st.lists(st.integers(1, 10**12), min_size=n, max_size=n))
    visits, time = [], start
    for gap in gaps:
        events = draw(
            st.dictionaries(
                st.sampled_from(MODALITIES),
                st.lists(code_strings, min_size=1, max_size=6),
                min_size=1,
            )
        )
        # Some lab codes carry a numeric result (float32, as MEDS stores it).
        labs = list(dict.fromkeys(events.get("lab", ())))
        results = draw(st.lists(lab_values, min_size=len(labs), max_size=len(labs)))
        values = {"lab": {c: v for c, v in zip(labs, results) if v is not None}}
        visits.append(Visit(events, time if with_times else None, values))
        time = time + timedelta(microseconds=gap)
    return tuple(visits)


@st.composite
def patients(draw, patient_id: str, with_times: bool = True):
    static = {}
    if draw(st.booleans()):
        static["gender"] = draw(st.sampled_from(SCHEMA.categorical["gender"]))
    if draw(st.booleans()):
        static["ethnicity"] = draw(st.sampled_from(SCHEMA.categorical["ethnicity"]))
    if draw(st.booleans()):
        static["age"] = draw(float32_ages)
    return Patient(patient_id, static, draw(visits_in_order(with_times=with_times)))


@st.composite
def cohorts(draw, max_patients: int = 6):
    n = draw(st.integers(1, max_patients))
    with_times = draw(st.booleans())
    ids = draw(
        st.lists(
            st.one_of(st.integers(0, 2**40).map(str), st.text(min_size=1, max_size=8)),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    return Cohort.from_patients(
        [draw(patients(pid, with_times)) for pid in ids], SCHEMA
    )
