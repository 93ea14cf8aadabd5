"""Check our MEDS output against the standard's own schemas (the ``meds`` package)."""

from __future__ import annotations

import json
from pathlib import Path

import meds  # a dev dependency: a broken install fails here instead of skipping
import pyarrow.parquet as pq
import pytest

from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.meds import MEDS_VERSION, write_meds


def validate_meds_folder(root: Path) -> int:
    """Validate every table and the dataset metadata of a MEDS folder with the
    ``meds`` package; return the number of data rows checked."""
    rows = 0
    shards = sorted((root / "data").rglob("*.parquet"))
    assert shards, f"{root} has no data shard"
    for shard in shards:
        table = pq.read_table(shard)
        meds.DataSchema.validate(table)  # raises on a schema violation
        assert table.num_rows > 0
        rows += table.num_rows
    meds.CodeMetadataSchema.validate(pq.read_table(root / meds.code_metadata_filepath))
    splits = pq.read_table(root / meds.subject_splits_filepath)
    meds.SubjectSplitSchema.validate(splits)
    assert set(splits.column("split").to_pylist()) <= {
        meds.train_split,
        meds.tuning_split,
        meds.held_out_split,
    }
    metadata = json.loads((root / meds.dataset_metadata_filepath).read_text())
    meds.DatasetMetadataSchema.validate(metadata)
    assert metadata["meds_version"] == MEDS_VERSION
    return rows


def test_a_split_cohort_validates(tmp_path):
    """Check that a cohort written with train / tuning / held-out splits validates
    against every MEDS schema, with one row per event plus the static rows."""
    cohort = demo_cohort(60, seed=0)
    train, tuning, held_out = cohort.split([0.6, 0.2, 0.2], seed=0)
    root = write_meds(
        {"train": train, "tuning": tuning, "held_out": held_out},
        tmp_path / "demo",
        shard_patients=16,
    )
    assert len(list((root / "data").rglob("*.parquet"))) > 3  # several shards
    rows = validate_meds_folder(root)
    assert rows >= cohort.n_events


def test_synthetic_patients_validate(tmp_path):
    """Check that a model's synthetic patients, with ids in the reserved range,
    validate as MEDS."""
    from ehrgen.models.registry import build_model
    from ehrgen.training import TrainingConfig

    model = build_model("lstm-mlp", "tiny").fit(
        demo_cohort(24, seed=0), training=TrainingConfig(epochs=1)
    )
    root = write_meds(model.generate(10, seed=0), tmp_path / "synthetic")
    assert validate_meds_folder(root) > 0


def test_the_check_catches_a_violation(tmp_path):
    """Check that the validation used above fails on a shard whose subject ids are
    strings, so that the tests above can fail."""
    import pyarrow as pa

    root = write_meds(demo_cohort(5, seed=0), tmp_path / "demo")
    shard = sorted((root / "data").rglob("*.parquet"))[0]
    table = pq.read_table(shard)
    ids = pa.array([str(i) for i in table.column("subject_id").to_pylist()])
    pq.write_table(table.set_column(0, "subject_id", ids), shard)
    with pytest.raises(Exception, match="subject_id"):
        validate_meds_folder(root)


def test_the_reader_accepts_what_the_standard_allows(tmp_path):
    """Check that a dataset over several shards whose shards carry the optional
    ``text_value`` column and an extra column still validates and reads back as the
    same cohort."""
    import pyarrow as pa

    from ehrgen.data.formats.meds import read_meds

    cohort = demo_cohort(20, seed=0)
    root = write_meds(cohort, tmp_path / "demo", shard_patients=7)
    for shard in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(shard)
        n = table.num_rows
        table = table.append_column("text_value", pa.nulls(n, pa.large_string()))
        table = table.append_column("hadm_id", pa.array(range(n), pa.int64()))
        pq.write_table(table, shard)
    validate_meds_folder(root)
    assert read_meds(root) == cohort
