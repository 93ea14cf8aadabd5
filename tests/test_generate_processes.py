"""Generation across processes: `torchrun -m ehrgen.cli generate` (on GPUs,
`accelerate launch --multi_gpu -m ehrgen.cli generate` sets the same variables)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.meds import read_meds
from ehrgen.models.registry import build_model
from ehrgen.models.trained import SYNTHETIC_ID_BASE
from ehrgen.training import TrainingConfig
from tests.data.test_meds_standard import validate_meds_folder


def _launch(model_dir, out, n: int, processes: int = 2) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
         str(processes), "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0",
         "-m", "ehrgen.cli", "generate",
         str(model_dir), "--patients", str(n), "--max-visits", "4", "--seed", "3",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_generate_one_reproducible_dataset(tmp_path):
    """Check that two processes write N patients in total into one valid MEDS
    dataset, with ids unique across their shards, and the same patients twice."""
    model = build_model("lstm-mlp", "tiny").fit(
        demo_cohort(24, seed=0), training=TrainingConfig(epochs=1)
    )
    model_dir = model.save_pretrained(tmp_path / "model")
    _launch(model_dir, tmp_path / "first", 11)
    _launch(model_dir, tmp_path / "second", 11)
    first, second = read_meds(tmp_path / "first"), read_meds(tmp_path / "second")
    assert len(first) == 11 and first == second
    ids = [int(i) for i in first.patient_ids]
    assert sorted(ids) == list(range(SYNTHETIC_ID_BASE, SYNTHETIC_ID_BASE + 11))
    shards = sorted(p.name for p in (tmp_path / "first" / "data").rglob("*.parquet"))
    assert shards == ["0-0.parquet", "1-0.parquet"]
    validate_meds_folder(tmp_path / "first")
    assert not list(tmp_path.glob(".first.part-*"))  # the parts were merged away
