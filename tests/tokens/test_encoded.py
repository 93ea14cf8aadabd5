"""Tests of the encoded cohort (token ids in flat arrays)."""

from __future__ import annotations

import pytest

from ehrgen.data import Cohort, CohortSchema, Patient, Visit
from ehrgen.errors import SchemaError
from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.tokens.tokenizer import CodeTokenizer
from tests.tokens.samples import small_cohort


def test_tokenized_cohort_layout():
    """Check event tokens, unknown codes and the block index."""
    cohort = small_cohort()
    data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
    tokenizer = CodeTokenizer.fit(cohort, min_count=2)  # keeps d1, r1, r2, l1
    rare = TokenizedCohort.from_cohort(cohort, tokenizer)
    blocks = rare.visit_blocks(0)
    assert [(k, [tokenizer.tokens[i] for i in c]) for k, c in blocks] == [
        (0, ["diagnosis:d1", "<unk>"]),
        (2, ["drug:r1"]),
    ]
    assert data.n_modalities == 4 and len(data) == 3
    assert data.visit_counts.tolist() == [3, 1, 2]
    assert len(data.block_modality) == 2 + 3 + 1 + 1 + 2 + 2
    assert not data.event_tokens.flags.writeable


def test_tokenized_cohort_schema_errors():
    """Check that modality mismatches and empty cohorts are SchemaErrors."""
    cohort = small_cohort()
    other = Cohort.from_patients(
        [Patient("z", {}, (Visit({"vitals": ["hr"]}),))],
        CohortSchema(modalities=("vitals",)),
    )
    with pytest.raises(SchemaError, match=r"\['diagnosis'.*\['vitals'\]"):
        TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(other))
    with pytest.raises(SchemaError, match="no patient"):
        TokenizedCohort.from_cohort(cohort[:0], CodeTokenizer.fit(cohort))
