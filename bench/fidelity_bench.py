"""Fidelity benchmark: two independent demo cohorts, every figure and the run time.

Two samples of the same simulator should agree (R² near 1, distances near 0, a
discriminator near 0.5); what is left is sampling noise. Prints figures; asserts
nothing. Usage::

    python bench/fidelity_bench.py [--patients 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import resource
import time

from ehrgen.data.demo import demo_cohort
from ehrgen.evaluation.fidelity import fidelity


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    real = demo_cohort(args.patients, seed=args.seed)
    synthetic = demo_cohort(args.patients, seed=args.seed + 1)
    print(f"real:      {real}")
    print(f"synthetic: {synthetic}")

    start = time.perf_counter()
    statistics_only = fidelity(real, synthetic, seed=args.seed, discriminator=False)
    t_statistics = time.perf_counter() - start
    start = time.perf_counter()
    result = fidelity(real, synthetic, seed=args.seed)
    t_all = time.perf_counter() - start
    assert statistics_only.r2 == result.r2

    print(f"\nkeys (real codes / pairs / transitions): {result.n_keys}")
    print(f"long-tail threshold (patient prevalence): {result.long_tail_threshold:.4g}")
    print(f"unseen synthetic codes: {result.unseen}")
    print(f"\n{'metric':<48} {'value':>10}  direction")
    for row in result.figures():
        value = float("nan") if row.value is None else row.value
        print(f"{row.metric:<48} {value:>10.4f}  {row.direction}")
    print("\nmeans (real / synthetic):")
    for name, figures in {**result.distributions, **result.demographics}.items():
        if "real_mean" in figures:
            print(
                f"  {name:<30} {figures['real_mean']:>10.3f} "
                f"{figures['synthetic_mean']:>10.3f}"
            )
    print("\nmost different per-patient code prevalences (code, real, synthetic):")
    for label, r, s in result.prevalence_points("patient_code").top(5):
        print(f"  {label:<40} {r:.4f} {s:.4f}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"\nstatistics without the discriminator: {t_statistics:.2f} s")
    print(f"everything, discriminator included:   {t_all:.2f} s")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
