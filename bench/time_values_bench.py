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

and against the model of gaps and values (:mod:`ehrgen.models.time_values`):

* **model, real codes**: the model trained on the training cohort samples gaps and
  values for the test patients' own codes (what the model adds, apart from the
  generator's codes);
* **generator + model** (``--generator NAME``): a generator trained on the training
  cohort (``--preset``, ``--epochs``) generates ``--test`` patients, with the gaps
  and values of its own model; KS against the real test gaps and values, and the
  acute-gap and CKD-creatinine relations within the generated patients.

Prints tables and run times; asserts nothing. Usage::

    python bench/time_values_bench.py [--train 2000] [--test 1000] [--seed 0]
        [--generator promptehr --preset small --epochs 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import ks_2samp, wasserstein_distance

from ehrgen.data import Cohort
from ehrgen.data.demo import demo_cohort, demo_truth
from ehrgen.models.population import Population
from ehrgen.models.time_values import fit_time_values

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
    parser.add_argument("--generator", default=None, help="e.g. promptehr, halo")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    train = demo_cohort(args.train, seed=args.seed)
    test = demo_cohort(args.test, seed=args.seed + 1)

    began = time.perf_counter()
    model = fit_time_values(train)
    fit_seconds = time.perf_counter() - began
    began = time.perf_counter()
    codes_only = test.replace(event_values=None)
    annotated = model.annotate(codes_only, rng)
    annotate_seconds = time.perf_counter() - began
    columns = {"empirical quantiles / marginal (today)": None,
               "model, real codes": annotated}  # fmt: skip
    if args.generator:
        columns[f"{args.generator} + model"] = _generated(train, args)

    gaps, index, after_acute = visit_gaps(test)
    drawn = baseline_gaps(train, test, rng)
    print(f"Visit gaps: {len(gaps):,} test gaps (days)")
    print("| figure | real | " + " | ".join(columns) + " |")
    print("| --- | --- |" + " --- |" * len(columns))
    rows = {"KS, all gaps": ["-"]}
    for t in (1, 2, 3):
        rows[f"KS, gap before visit {t + 1}"] = ["-"]
    rows["median gap after an acute event"] = [f"{np.median(gaps[after_acute]):.1f}"]
    rows["median gap after other visits"] = [f"{np.median(gaps[~after_acute]):.1f}"]
    for cohort in columns.values():
        if cohort is None:
            other, other_index, other_acute = drawn, index, after_acute
        else:
            other, other_index, other_acute = visit_gaps(cohort)
        rows["KS, all gaps"].append(f"{ks_2samp(gaps, other).statistic:.3f}")
        for t in (1, 2, 3):
            ks = ks_2samp(gaps[index == t], other[other_index == t]).statistic
            rows[f"KS, gap before visit {t + 1}"].append(f"{ks:.3f}")
        rows["median gap after an acute event"].append(
            f"{np.median(other[other_acute]):.1f}"
        )
        rows["median gap after other visits"].append(
            f"{np.median(other[~other_acute]):.1f}"
        )
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")

    real_labs, train_labs = lab_values(test), lab_values(train)
    top = sorted(real_labs, key=lambda lab: -len(real_labs[lab]))[:5]
    print(f"\nLab values: the five most frequent labs of {len(real_labs)}, KS / "
          f"Wasserstein against the real test values")  # fmt: skip
    print("| lab | events | " + " | ".join(columns) + " |")
    print("| --- | --- |" + " --- |" * len(columns))
    for lab in top:
        real = test.event_values[real_labs[lab]]
        cells = []
        for cohort in columns.values():
            if cohort is None:
                other = rng.choice(train.event_values[train_labs[lab]], len(real))
            else:
                other = _values_of(cohort, lab)
            cells.append(
                f"{ks_2samp(real, other).statistic:.3f} / "
                f"{wasserstein_distance(real, other):.3g}"
            )
        print(f"| {lab} | {len(real):,} | " + " | ".join(cells) + " |")
    print("\n| creatinine, mean at CKD visits minus other visits | real | "
          + " | ".join(columns) + " |")  # fmt: skip
    print("| --- | --- |" + " --- |" * len(columns))
    cells = []
    for cohort in columns.values():
        if cohort is None:
            events = real_labs["Creatinine"]
            pool = train.event_values[train_labs["Creatinine"]]
            base = rng.choice(pool, len(events))
            ckd = _visits_with(test, CKD)[test.event_visit[events]]
            cells.append(f"{base[ckd].mean() - base[~ckd].mean():.2f}")
        else:
            cells.append(f"{creatinine_difference(cohort):.2f}")
    print(f"| mg/dL | {creatinine_difference(test):.2f} | " + " | ".join(cells) + " |")
    print(
        f"\nModel of gaps and values: fit {fit_seconds:.1f} s on {args.train:,} "
        f"patients; sampling {args.test:,} patients {annotate_seconds:.2f} s; "
        f"{model.held_out_summary()}."
    )
    print(f"Run time: {time.perf_counter() - start:.1f} s")


def _generated(train: Cohort, args: argparse.Namespace) -> Cohort:
    from ehrgen.models.registry import build_model
    from ehrgen.training import TrainingConfig

    generator = build_model(args.generator, args.preset)
    began = time.perf_counter()
    generator.fit(train, training=TrainingConfig(epochs=args.epochs, seed=args.seed))
    fitted = time.perf_counter() - began
    began = time.perf_counter()
    cohort = generator.generate(args.test, seed=args.seed)
    print(
        f"{args.generator} ({args.preset}, {args.epochs} epochs): trained in "
        f"{fitted:.0f} s, {args.test:,} patients generated in "
        f"{time.perf_counter() - began:.0f} s"
    )
    return cohort


def _values_of(cohort: Cohort, lab: str) -> np.ndarray:
    codes = cohort.code_values[cohort.event_codes]
    values = cohort.event_values[codes == lab]
    return values[np.isfinite(values)]


def creatinine_difference(cohort: Cohort) -> float:
    """Mean creatinine at visits with a CKD code minus at other visits."""
    events = np.flatnonzero(cohort.code_values[cohort.event_codes] == "Creatinine")
    ckd = _visits_with(cohort, CKD)[cohort.event_visit[events]]
    values = cohort.event_values[events]
    return float(np.nanmean(values[ckd]) - np.nanmean(values[~ckd]))


if __name__ == "__main__":
    main()
