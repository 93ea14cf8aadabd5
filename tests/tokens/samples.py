"""A small hand-made cohort that the token and task tests share."""

from __future__ import annotations

from ehrgen.data import DEFAULT_MODALITIES, Cohort, CohortSchema, Patient, Visit

SCHEMA = CohortSchema(
    modalities=DEFAULT_MODALITIES,
    categorical={"gender": ("F", "M")},
    numerical=("age",),
)


def small_cohort() -> Cohort:
    """Three patients (3, 1 and 2 visits), every modality used, one long block."""
    visits_a = (
        Visit({"diagnosis": ["d1", "d2"], "drug": ["r1"]}),
        Visit({"diagnosis": ["d3"], "procedure": ["p1"], "lab": ["l1", "l2"]}),
        Visit({"drug": ["r2"]}),
    )
    visits_c = (
        Visit({"diagnosis": [f"c{i}" for i in range(8)], "drug": ["r1", "r2", "r3"]}),
        Visit({"diagnosis": ["d1"], "lab": ["l1"]}),
    )
    return Cohort.from_patients(
        [
            Patient("a", {"gender": "F", "age": 70.0}, visits_a),
            Patient("b", {}, (Visit({"diagnosis": ["d1"]}),)),
            Patient("c", {"gender": "M"}, visits_c),
        ],
        SCHEMA,
    )
