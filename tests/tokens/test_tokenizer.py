"""Tests of the code tokenizer."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.tokens.tokenizer import CodeTokenizer
from tests.strategies import cohorts


def _cohort() -> Cohort:
    return Cohort.from_patients(
        [
            Patient(
                "1",
                {},
                (
                    Visit(
                        {"diagnosis": ["a", "b"], "drug": ["x"]}, datetime(2020, 1, 1)
                    ),
                    Visit({"diagnosis": ["a"], "lab": ["hb"]}, datetime(2020, 2, 1)),
                ),
            ),
            Patient(
                "2",
                {},
                (
                    Visit(
                        {"diagnosis": ["a", "c"], "procedure": ["p"]},
                        datetime(2020, 1, 1),
                    ),
                ),
            ),
        ]
    )


def test_vocabulary_layout():
    """Check the special tokens, modality pairs and contiguous code blocks."""
    tokenizer = CodeTokenizer.fit(_cohort())
    assert tokenizer.tokens[:7] == (
        "<pad>",
        "<bos>",
        "<eos>",
        "<mask>",
        "<unk>",
        "<v>",
        "</v>",
    )
    assert tokenizer.codes["diagnosis"] == ("a", "b", "c")  # by count, then string
    assert tokenizer.counts["diagnosis"] == (3, 1, 1)
    start, stop = tokenizer.code_ranges["diagnosis"]
    assert [tokenizer.tokens[i] for i in range(start, stop)] == [
        "diagnosis:a",
        "diagnosis:b",
        "diagnosis:c",
    ]
    assert tokenizer.vocab_size == 7 + 8 + 6


def test_encode_serialises_visits_and_modalities():
    """Check the serialisation <bos> <v> <modality> codes </modality> </v> <eos>."""
    tokenizer = CodeTokenizer.fit(_cohort())
    tokens = [tokenizer.tokens[i] for i in tokenizer.encode(_cohort()[0])]
    assert tokens == [
        "<bos>",
        "<v>",
        "<diagnosis>",
        "diagnosis:a",
        "diagnosis:b",
        "</diagnosis>",
        "<drug>",
        "drug:x",
        "</drug>",
        "</v>",
        "<v>",
        "<diagnosis>",
        "diagnosis:a",
        "</diagnosis>",
        "<lab>",
        "lab:hb",
        "</lab>",
        "</v>",
        "<eos>",
    ]


@settings(max_examples=40, deadline=None)
@given(cohorts())
def test_decode_inverts_encode(cohort):
    """Check that decode(encode(p)) gives p's visits back for in-vocabulary patients,
    and that encode_cohort agrees with encode."""
    tokenizer = CodeTokenizer.fit(cohort)
    ids, offsets = tokenizer.encode_cohort(cohort)
    for p, patient in enumerate(cohort):
        encoded = tokenizer.encode(patient)
        assert ids[offsets[p] : offsets[p + 1]].tolist() == encoded
        decoded = tokenizer.decode(encoded, patient.patient_id, patient.static)
        assert decoded == Patient(
            patient.patient_id,
            patient.static,
            tuple(Visit(v.events) for v in patient.visits),
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-5, 40), st.none(), st.text(max_size=2))))
def test_decode_never_raises(ids):
    """Check that decode returns a well-formed patient for any id sequence."""
    tokenizer = CodeTokenizer.fit(_cohort())
    patient = tokenizer.decode(ids)
    for visit in patient.visits:
        assert visit.n_codes > 0
        for modality, codes in visit.events.items():
            assert set(codes) <= set(tokenizer.codes[modality])
            assert len(set(codes)) == len(codes)


def test_decode_drops_misplaced_tokens():
    """Check the repair rules on a malformed sequence."""
    t = CodeTokenizer.fit(_cohort())
    a, b = t.code_id("diagnosis", "a"), t.code_id("diagnosis", "b")
    x = t.code_id("drug", "x")
    ids = [
        t.open_ids["diagnosis"],
        a,  # outside any visit: dropped
        t.visit_open_id,
        t.open_ids["diagnosis"],
        a,
        x,
        a,
        b,  # drug code in dx: dropped
        t.close_ids["drug"],  # closes nothing open: dropped
        t.visit_open_id,
        t.open_ids["drug"],
        x,  # <v> closes the first visit
        t.visit_close_id,
        t.visit_open_id,
        t.visit_close_id,  # empty visit: dropped
        t.eos_id,
        t.visit_open_id,
        t.open_ids["drug"],
        x,  # after <eos>: ignored
    ]
    assert [v.events for v in t.decode(ids).visits] == [
        {"diagnosis": ("a", "b")},
        {"drug": ("x",)},
    ]


def test_unknown_codes_encode_as_unk_and_limits_apply():
    """Check min_count / max_codes_per_modality and <unk> for unseen codes."""
    cohort = _cohort()
    tokenizer = CodeTokenizer.fit(cohort, min_count=2)
    assert tokenizer.codes["diagnosis"] == ("a",)
    assert tokenizer.codes["drug"] == ()
    assert tokenizer.unk_id in tokenizer.encode(cohort[0])
    assert CodeTokenizer.fit(cohort, max_codes_per_modality=2).codes["diagnosis"] == (
        "a",
        "b",
    )
    assert CodeTokenizer.fit(cohort, max_codes_per_modality={"diagnosis": 1}).codes[
        "lab"
    ] == ("hb",)
    with pytest.raises(ConfigError, match="'min_count' parameter of CodeTokenizer.fit"):
        CodeTokenizer.fit(cohort, min_count=0)
    with pytest.raises(ConfigError, match="'max_codes_per_modality'"):
        CodeTokenizer.fit(cohort, max_codes_per_modality={"imaging": 3})


def test_save_and_load(tmp_path):
    """Check that a tokenizer survives save/load and bad files are named."""
    tokenizer = CodeTokenizer.fit(_cohort())
    loaded = CodeTokenizer.load(tokenizer.save(tmp_path / "tokenizer.json"))
    assert loaded == tokenizer and loaded.tokens == tokenizer.tokens
    (tmp_path / "bad.json").write_text('{"format_version": 99}')
    with pytest.raises(SchemaError, match="bad.json: Unsupported tokenizer format"):
        CodeTokenizer.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_bytes(b"\xff\xfe")
    with pytest.raises(SchemaError, match="broken.json: not a readable tokenizer"):
        CodeTokenizer.load(tmp_path / "broken.json")
