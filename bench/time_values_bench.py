"""Visit times and lab values: the figures a generator must beat (issue 17).

On the demo cohort (train and test drawn with different seeds), compares the test
patients' real visit gaps and lab values with what ehrgen does today without time or
value tokens:

* **gaps** from the training cohort's empirical gap quantiles for the t-th visit
  (``Population.gap``, what generation uses), drawn for the test patients' own visit
  counts: KS against the real gaps, overall and for visits 2-4, and the median gap
  after a visit with an acute-event code against the median after other visits;
* **lab values** drawn from each lab's marginal distribution in the training cohort,
  for the test patients' own lab events: KS and Wasserstein distance per lab (the five
  most frequent), and the mean creatinine at visits with a CKD code minus the mean at
  other visits, the relation a model conditioned on codes should keep.

Prints a table and the run time; asserts nothing. A model that generates gaps and
values by itself adds its rows to the same comparison. Usage::

    python bench/time_values_bench.py [--train 2000] [--test 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import ks_2samp, wasserstein_distance

from ehrgen.data import Cohort
from ehrgen.data.demo import demo_cohort, demo_truth
from ehrgen.models.population import Population

CKD = ("ICD9CM//5853", "ICD9CM//5854", "ICD9CM//5855")


def visit_gaps(cohort: Cohort) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gaps in days, index of the later visit within its patient, whether the
    earlier visit had an acute-event code), one entry per consecutive visit pair."""
    days = cohort.visit_times.astype("datetime64[s]").astype(np.int64) / 86400.0
    within = np.arange(cohort.n_visits) - np.repeat(
        cohort.visit_offsets[:-1], np.diff(cohort.visit_offsets)
    )
    later = within[1:] > 0
    acute = _visits_with(cohort, demo_truth().acute_codes)
    return np.diff(days)[later], within[1:][later], acute[:-1][later]


def baseline_gaps(train: Cohort, test: Cohort, rng: np.random.Generator):
    """Gaps from the training cohort's per-index quantiles, for the test visits."""
    population = Population.from_cohort(train)
    _, index, _ = visit_gaps(test)
    return np.array([population.gap(int(t), rng) / 86400.0 for t in index])


def lab_values(cohort: Cohort) -> dict[str, np.ndarray]:
    """Lab code -> (E_lab,) values of its events, and the visit of each."""
    codes = cohort.code_values[cohort.event_codes]
    out = {}
    for lab in np.unique(codes[np.isfinite(cohort.event_values)]):
        out[str(lab)] = np.flatnonzero(codes == lab)
    return out


def _visits_with(cohort: Cohort, codes) -> np.ndarray:
    has = np.isin(cohort.code_values[cohort.event_codes], list(codes))
    out = np.zeros(cohort.n_visits, dtype=bool)
    out[cohort.event_visit[has]] = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    train = demo_cohort(args.train, seed=args.seed)
    test = demo_cohort(args.test, seed=args.seed + 1)

    gaps, index, after_acute = visit_gaps(test)
    drawn = baseline_gaps(train, test, rng)
    print(f"Visit gaps: {len(gaps):,} test gaps (days)")
    print("| figure | real | empirical quantiles (today) |")
    print("| --- | --- | --- |")
    print(f"| KS, all gaps | - | {ks_2samp(gaps, drawn).statistic:.3f} |")
    for t in (1, 2, 3):
        chosen = index == t
        ks = ks_2samp(gaps[chosen], drawn[chosen]).statistic
        print(f"| KS, gap before visit {t + 1} | - | {ks:.3f} |")
    for name, mask in (("after an acute event", after_acute),
                       ("after other visits", ~after_acute)):  # fmt: skip
        real, base = np.median(gaps[mask]), np.median(drawn[mask])
        print(f"| median gap {name} | {real:.1f} | {base:.1f} |")

    real_labs, train_labs = lab_values(test), lab_values(train)
    top = sorted(real_labs, key=lambda lab: -len(real_labs[lab]))[:5]
    print(f"\nLab values: the five most frequent labs of {len(real_labs)}")
    print("| lab | events | KS, marginal draws | Wasserstein, marginal draws |")
    print("| --- | --- | --- | --- |")
    for lab in top:
        real = test.event_values[real_labs[lab]]
        pool = train.event_values[train_labs[lab]]
        base = rng.choice(pool, len(real))
        ks = ks_2samp(real, base).statistic
        w = wasserstein_distance(real, base)
        print(f"| {lab} | {len(real):,} | {ks:.3f} | {w:.3g} |")
    events = real_labs["Creatinine"]
    ckd = _visits_with(test, CKD)[test.event_visit[events]]
    real = test.event_values[events]
    base = rng.choice(train.event_values[train_labs["Creatinine"]], len(real))
    print("\n| creatinine, mean at CKD visits minus other visits | real | marginal |")
    print("| --- | --- | --- |")
    print(
        f"| mg/dL | {real[ckd].mean() - real[~ckd].mean():.2f} | "
        f"{base[ckd].mean() - base[~ckd].mean():.2f} |"
    )
    print(f"\nRun time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
