"""Training benchmark: PromptEHR's one-pass objective against the paper's, per second.

Each (cohort, objective) pair trains in its own process for the same wall-clock budget
(so that peak RSS is its own) and prints target tokens per second, patients per
second (patient-epochs: a patient counts once all its targets of an epoch were
trained) and peak RSS. Cohorts: ``demo`` (the embedded demo, 2,000 patients, about
3.6 visits each) and ``long`` (demo visits chained into patients of about 40 visits,
as lifelong OMOP records are). Asserts nothing. Usage::

    python bench/train_bench.py [--preset small] [--minutes 1.5] [--batch-size 16]
        [--cohorts demo,long] [--objectives one-pass,paper]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort


def long_cohort(n_patients: int, visits: int = 40, seed: int = 0) -> Cohort:
    """Demo visits chained into patients of ``visits`` visits (times dropped)."""
    source = demo_cohort(n_patients * visits // 3, seed=seed)
    pool = [Visit(v.events) for p in source for v in p.visits]
    patients = [
        Patient(str(i), source[i].static, tuple(pool[i * visits : (i + 1) * visits]))
        for i in range(min(n_patients, len(pool) // visits))
    ]
    return Cohort.from_patients(patients, source.schema)


def cohort_named(name: str) -> Cohort:
    if name == "demo":
        return demo_cohort(2000, seed=0)
    return long_cohort(200)


def run_one(args: argparse.Namespace) -> dict:
    from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig, fitting
    from ehrgen.training import TrainingConfig

    cohort = cohort_named(args.cohort)
    training = TrainingConfig(
        epochs=1000,
        batch_size=args.batch_size,
        learning_rate=5e-4,
        checkpoint_every_steps=None,
        patience=None,
        time_budget_minutes=args.minutes,
    )
    config = PromptEHRConfig.preset(args.preset, objective=args.objective)
    model = PromptEHR(config)
    start = time.perf_counter()
    model.fit(cohort, training=training)
    seconds = time.perf_counter() - start
    info = model.training_.to_dict()
    train_loader, _ = fitting.loaders(model._fitted, cohort, None, training)
    steps_per_epoch = len(train_loader(0))
    patient_epochs = info["steps"] / steps_per_epoch * len(cohort)
    return {
        "cohort": args.cohort,
        "objective": args.objective,
        "patients": len(cohort),
        "visits_per_patient": round(cohort.n_visits / len(cohort), 1),
        "parameters": sum(p.numel() for p in model.model_.parameters()),
        "steps": info["steps"],
        "seconds": round(seconds, 1),
        "tokens_per_s": round(info["train_tokens"] / seconds),
        "patients_per_s": round(patient_epochs / seconds, 2),
        "peak_rss_mib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--minutes", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, default=16, help="targets per step")
    parser.add_argument("--cohorts", default="demo,long")
    parser.add_argument("--objectives", default="one-pass,paper")
    parser.add_argument("--cohort", help=argparse.SUPPRESS)
    parser.add_argument("--objective", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cohort:  # one run, in this process
        print(json.dumps(run_one(args)))
        return
    results = []
    for cohort in args.cohorts.split(","):
        for objective in args.objectives.split(","):
            command = [
                sys.executable, __file__, "--cohort", cohort, "--objective", objective,
                "--preset", args.preset, "--minutes", str(args.minutes),
                "--batch-size", str(args.batch_size),
            ]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(
                f"[{cohort}] {objective:>8}: {result['tokens_per_s']:>8,} target "
                f"tokens/s, {result['patients_per_s']:>7.2f} patients/s, "
                f"{result['steps']} steps in {result['seconds']} s, peak RSS "
                f"{result['peak_rss_mib']:,} MiB ({result['patients']} patients, "
                f"{result['visits_per_patient']} visits each, "
                f"{result['parameters']:,} parameters)",
                flush=True,
            )
    for cohort in args.cohorts.split(","):
        rows = {r["objective"]: r for r in results if r["cohort"] == cohort}
        if {"one-pass", "paper"} <= set(rows):
            new, old = rows["one-pass"], rows["paper"]
            print(
                f"[{cohort}] one-pass / paper: "
                f"{new['tokens_per_s'] / old['tokens_per_s']:.1f}x target tokens/s, "
                f"{new['patients_per_s'] / old['patients_per_s']:.1f}x patients/s, "
                f"peak RSS {new['peak_rss_mib'] / old['peak_rss_mib']:.2f}x"
            )


if __name__ == "__main__":
    main()
