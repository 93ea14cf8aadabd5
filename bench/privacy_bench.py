"""Privacy benchmark: every attack on PromptEHR's synthetic patients, generated from
scratch and from seeds, beside the same attacks on an independent demo sample (a
generator that never saw the training patients) as the reference.

Trains PromptEHR on the demo cohort (train 2,000 / hold-out 1,000 by default),
generates as many patients as it trained on in each mode, runs
:func:`ehrgen.evaluation.privacy.evaluate_privacy` and prints every figure with its
interval and the run time of each evaluation. Prints figures; asserts nothing::

    python bench/privacy_bench.py [--preset small] [--epochs 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ehrgen.data.demo import demo_cohort
from ehrgen.evaluation.privacy import PrivacyConfig, evaluate_privacy
from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
from ehrgen.training import TrainingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--holdout", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--time-budget", type=float, default=None, help="Minutes.")
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None, help="Save results here.")
    args = parser.parse_args()

    real = demo_cohort(args.train + args.holdout, seed=0)
    train, holdout = real[: args.train], real[args.train :]
    start = time.perf_counter()
    model = PromptEHR(PromptEHRConfig.preset(args.preset)).fit(
        train,
        val=holdout[: args.holdout // 4],
        training=TrainingConfig(
            epochs=args.epochs,
            batch_size=16,
            learning_rate=5e-4,
            time_budget_minutes=args.time_budget,
        ),
    )
    model.calibrate_length(train, n_samples=512)
    print(
        f"PromptEHR ({args.preset}) trained on {len(train):,} demo patients for "
        f"{model.training_.epochs_completed} epochs ({model.training_.steps} steps) in "
        f"{time.perf_counter() - start:.0f} s; held-out "
        f"perplexity {model.perplexity(holdout):.2f}"
    )
    start = time.perf_counter()
    cohorts = {
        "from_scratch": model.generate(len(train), seed=1),
        "from_seeds": model.generate_from_seeds(train, seed=1),
        "independent_sample": demo_cohort(len(train), seed=7),
    }
    seconds = time.perf_counter() - start
    print(f"generated 2 x {len(train):,} patients in {seconds:.0f} s")
    config = PrivacyConfig(n_resamples=args.resamples)
    results = {}
    for mode, synthetic in cohorts.items():
        start = time.perf_counter()
        white_box = model if mode != "independent_sample" else None
        results[mode] = evaluate_privacy(
            train, holdout, synthetic, model=white_box, config=config
        )
        print(f"{mode}: whole evaluation in {time.perf_counter() - start:.1f} s")
        if args.out is not None:
            results[mode].save(args.out / mode)
    print()
    modes = list(results)
    print(f"{'attack.figure':<48}{'better':<15}" + "".join(f"{m:>26}" for m in modes))
    for row in results["from_scratch"].figures():
        cells = []
        for mode in modes:
            found = {r.metric: r for r in results[mode].figures()}.get(row.metric)
            cells.append(f"{found.text():>26}" if found else f"{'-':>26}")
        print(f"{row.metric:<48}{row.direction:<15}" + "".join(cells))


if __name__ == "__main__":
    main()
