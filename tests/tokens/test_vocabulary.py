"""Reading a public vocabulary from a file (ehrgen.tokens.vocabulary)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings

from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.meds import write_meds
from ehrgen.errors import SchemaError
from ehrgen.tokens import CodeTokenizer
from ehrgen.tokens.vocabulary import read_vocabulary
from tests.strategies import cohorts

MODALITIES = ("diagnosis", "procedure", "drug", "lab")


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(cohort=cohorts())
def test_a_table_of_modality_and_code_round_trips(cohort, tmp_path):
    tokenizer = CodeTokenizer.fit(cohort)
    pairs = [(m, c) for m, codes in tokenizer.codes.items() for c in codes]
    if not pairs:
        return
    table = pa.table({"modality": [m for m, _ in pairs], "code": [c for _, c in pairs]})
    for path in (tmp_path / "codes.parquet", tmp_path / "codes.csv"):
        if path.suffix == ".csv":
            pcsv.write_csv(table, path)
        else:
            pq.write_table(table, path)
        again = read_vocabulary(path, tokenizer.modalities)
        assert again.codes == tokenizer.codes


def test_a_meds_codes_file_gives_the_cohort_codes(tmp_path):
    cohort = demo_cohort(60, seed=0)
    write_meds(cohort, tmp_path / "meds")
    vocabulary = read_vocabulary(tmp_path / "meds" / "metadata" / "codes.parquet",
                                 cohort.schema.modalities)  # fmt: skip
    fitted = CodeTokenizer.fit(cohort)
    for modality in cohort.schema.modalities:
        assert set(fitted.codes[modality]) <= set(vocabulary.codes[modality])


def test_numeric_looking_codes_stay_text_in_csv(tmp_path):
    (tmp_path / "codes.csv").write_text("modality,code\ndiagnosis,0389\nlab,50912\n")
    vocabulary = read_vocabulary(tmp_path / "codes.csv", MODALITIES)
    assert vocabulary.codes["diagnosis"] == ("0389",)
    assert vocabulary.codes["lab"] == ("50912",)


def test_a_tokenizer_file_is_read_as_is(tmp_path):
    tokenizer = CodeTokenizer.fit(demo_cohort(20, seed=0))
    tokenizer.save(tmp_path / "tokenizer.json")
    assert read_vocabulary(tmp_path / "tokenizer.json", MODALITIES).codes == (
        tokenizer.codes
    )
    with pytest.raises(SchemaError, match="tokenizer.json: its modalities"):
        read_vocabulary(tmp_path / "tokenizer.json", ("diagnosis",))


def test_bad_files_are_named_with_the_field(tmp_path):
    with pytest.raises(SchemaError, match="no such vocabulary file"):
        read_vocabulary(tmp_path / "missing.parquet", MODALITIES)
    (tmp_path / "codes.txt").write_text("a\n")
    with pytest.raises(SchemaError, match=r"codes.txt: a vocabulary file is"):
        read_vocabulary(tmp_path / "codes.txt", MODALITIES)
    pq.write_table(pa.table({"concept": ["x"]}), tmp_path / "nocode.parquet")
    with pytest.raises(SchemaError, match="nocode.parquet: no 'code' column"):
        read_vocabulary(tmp_path / "nocode.parquet", MODALITIES)
    pq.write_table(pa.table({"modality": ["drug", "drug"], "code": ["x", ""]}),
                   tmp_path / "empty.parquet")  # fmt: skip
    with pytest.raises(SchemaError, match="empty.parquet, row 1, field 'code'"):
        read_vocabulary(tmp_path / "empty.parquet", MODALITIES)
    pq.write_table(pa.table({"code": ["VISIT//x"]}), tmp_path / "other.parquet")
    with pytest.raises(SchemaError, match="no code of the cohort's modalities"):
        read_vocabulary(tmp_path / "other.parquet", MODALITIES)
