"""Data benchmark: demo simulation, MEDS write and read, tokenisation, peak memory.

Prints figures; asserts nothing. Usage::

    python bench/data_bench.py [--patients 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.meds import read_meds, write_meds
from ehrgen.tokens.tokenizer import CodeTokenizer


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cohort, t_demo = timed(lambda: demo_cohort(args.patients, seed=args.seed))
    n_events = cohort.n_events
    print(
        f"cohort: {len(cohort):,} patients, {cohort.n_visits:,} visits, "
        f"{n_events:,} events"
    )
    print(f"demo simulation: {t_demo:.2f} s, {len(cohort) / t_demo:,.0f} patients/s")
    print(f"peak RSS after simulation: {peak_rss_mib():,.0f} MiB")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "meds"
        _, t_write = timed(lambda: write_meds(cohort, root))
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(
            f"MEDS write: {t_write:.2f} s, {n_events / t_write:,.0f} events/s, "
            f"{size / 2**20:,.1f} MiB on disk"
        )
        back, t_read = timed(lambda: read_meds(root))
        print(f"MEDS read: {t_read:.2f} s, {n_events / t_read:,.0f} events/s")
        print(f"peak RSS after MEDS round trip: {peak_rss_mib():,.0f} MiB")
        print(f"read back {back.n_events:,} of {n_events:,} events")

    tokenizer, t_fit = timed(lambda: CodeTokenizer.fit(cohort))
    (ids, _), t_encode = timed(lambda: tokenizer.encode_cohort(cohort))
    print(
        f"tokenizer fit: {t_fit:.2f} s; encode_cohort: {t_encode:.2f} s, "
        f"{len(ids) / t_encode:,.0f} tokens/s ({len(ids):,} tokens)"
    )
    print(f"peak RSS: {peak_rss_mib():,.0f} MiB")


if __name__ == "__main__":
    main()
