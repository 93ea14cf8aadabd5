"""MEDS reader benchmark: peak memory per event and events per second at scale.

Writes a fabricated MEDS dataset of the requested size in shards of about
``--shard-events`` rows (subjects never span shards, as MEDS extraction writes them):
per subject a ``GENDER//`` static row, ``MEDS_BIRTH``, and visits of Zipf-distributed
codes under the ``DIAGNOSIS``, ``PROCEDURE``, ``DRUG`` and ``LAB`` prefixes (with a
``numeric_value`` on labs). Each size is written by one subprocess and read by
``read_meds`` in another, fresh one, which reports its resident size after the imports
and at its peak (``ru_maxrss``): bytes per event is their difference over the number
of event rows. Prints figures; asserts nothing. Usage::

    python bench/meds_read_bench.py [--events 10000000 100000000]
        [--shard-events 2000000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PREFIXES = ("DIAGNOSIS", "PROCEDURE", "DRUG", "LAB")
VOCABULARY = (6000, 2000, 3000, 700)  # codes per prefix
VISITS_PER_SUBJECT = 4.0  # mean, geometric
CODES_PER_VISIT = 9.0  # mean per prefix, Poisson


def write_dataset(root: Path, events: int, shard_events: int, seed: int) -> int:
    """Write the dataset; return its number of event (timed, non-birth) rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    per_subject = VISITS_PER_SUBJECT * CODES_PER_VISIT * len(PREFIXES)
    n_subjects = max(1, round(events / per_subject))
    per_shard = max(1, round(shard_events / per_subject))
    (root / "data" / "train").mkdir(parents=True)
    names = [
        np.array([f"{p}//C{i}" for i in range(n)], dtype=object)
        for p, n in zip(PREFIXES, VOCABULARY)
    ]
    written, first = 0, 0
    for shard in range(-(-n_subjects // per_shard)):
        n = min(per_shard, n_subjects - first)
        subjects = np.arange(first, first + n, dtype=np.int64)
        visits = rng.geometric(1 / VISITS_PER_SUBJECT, n)
        visit_subject = np.repeat(subjects, visits)
        start = np.datetime64("2010-01-01", "us") + rng.integers(0, 3650, n).astype(
            "timedelta64[D]"
        )
        gap = rng.integers(1, 200, len(visit_subject)).astype("timedelta64[D]")
        visit_time = (
            np.repeat(start, visits)
            + np.cumsum(gap)
            - np.repeat(np.add.reduceat(gap, np.r_[0, np.cumsum(visits)[:-1]]), visits)
        )
        columns: dict[str, list] = {"subject": [], "time": [], "code": [], "value": []}
        for names_k in names:
            counts = rng.poisson(CODES_PER_VISIT, len(visit_subject))
            codes = np.minimum(rng.zipf(1.3, counts.sum()), len(names_k)) - 1
            columns["subject"].append(np.repeat(visit_subject, counts))
            columns["time"].append(np.repeat(visit_time, counts))
            columns["code"].append(names_k[codes])
            value = rng.normal(1.0, 0.3, len(codes)).astype(np.float32)
            if not names_k[0].startswith("LAB"):
                value[:] = np.nan
            columns["value"].append(value)
        written += sum(len(c) for c in columns["code"])
        columns["subject"] += [subjects, subjects]
        columns["time"] += [
            np.full(n, np.datetime64("NaT"), "datetime64[us]"),
            start - np.timedelta64(50 * 365, "D"),
        ]
        gender = np.where(rng.random(n) < 0.5, "GENDER//F", "GENDER//M")
        columns["code"] += [gender.astype(object), np.full(n, "MEDS_BIRTH", object)]
        columns["value"] += [np.full(n, np.nan, np.float32)] * 2
        subject = np.concatenate(columns["subject"])
        time_ = np.concatenate(columns["time"])
        order = np.lexsort((time_, subject))
        value = np.concatenate(columns["value"])[order]
        table = pa.table(
            {
                "subject_id": pa.array(subject[order]),
                "time": pa.array(time_[order], pa.timestamp("us")),
                "code": pa.array(np.concatenate(columns["code"])[order], pa.string()),
                "numeric_value": pa.array(value, pa.float32(), mask=np.isnan(value)),
            }
        )
        pq.write_table(table, root / "data" / "train" / f"{shard}.parquet")
        first += n
    return written


def read_dataset(root: Path) -> dict:
    """Read with read_meds; the peak resident size above the one after imports."""
    from ehrgen.data.formats.meds import read_meds

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    cohort = read_meds(root)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    arrays = sum(
        a.nbytes
        for a in (
            cohort.visit_offsets,
            cohort.visit_times,
            cohort.event_offsets,
            cohort.event_codes,
        )
    )
    return {
        "seconds": seconds,
        "peak_above_imports": peak - before,
        "events": cohort.n_events,
        "cohort_arrays": arrays,
        "patients": len(cohort),
        "visits": cohort.n_visits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=float, nargs="+", default=[1e7, 1e8])
    parser.add_argument("--shard-events", type=float, default=2e6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=("write", "read"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "write":
        rows = write_dataset(
            args.root, int(args.events[0]), int(args.shard_events), args.seed
        )
        print(json.dumps({"rows": rows}))
        return
    if args.child == "read":
        print(json.dumps(read_dataset(args.root)))
        return
    for events in args.events:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "meds"
            common = [sys.executable, __file__, "--root", str(root)]
            size = ["--events", str(events), "--shard-events", str(args.shard_events)]
            seed = ["--seed", str(args.seed)]
            written = _child([*common, "--child", "write", *size, *seed])
            result = _child([*common, "--child", "read"])
            disk = sum(f.stat().st_size for f in root.rglob("*.parquet"))
            shards = len(list(root.rglob("*.parquet")))
        per_event = result["peak_above_imports"] / written["rows"]
        print(
            f"{written['rows']:,} event rows in {shards} shards "
            f"({disk / 2**20:,.0f} MiB): read {result['patients']:,} patients, "
            f"{result['visits']:,} visits, {result['events']:,} events in "
            f"{result['seconds']:.1f} s ({result['events'] / result['seconds']:,.0f} "
            f"events/s); peak {result['peak_above_imports'] / 2**20:,.0f} MiB above "
            f"imports = {per_event:.1f} B per event row (the cohort's arrays: "
            f"{result['cohort_arrays'] / written['rows']:.1f} B per event row)"
        )


def _child(command: list[str]) -> dict:
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
