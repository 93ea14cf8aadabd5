"""Utility benchmark: the paper's experiment on the demo simulator, with run times.

Real data: a demo cohort split into training and held-out test patients. "Synthetic"
data: an independent demo sample (another seed), a stand-in for a perfect generator,
so synthetic settings should match real ones of the same size. Prints recall@10 and
recall@20 with 95% intervals for each setting and baseline; asserts nothing. Usage::

    python bench/utility_bench.py [--train 5000] [--test 1000] [--seed 0] [--threads 1]

With ``--generator-minutes M``, the synthetic data come from a PromptEHR model
(``--preset``, ``--objective``) trained M minutes on the training patients instead,
``--train`` synthetic patients against as many real ones (the issue-13 experiment:
``--train 2000 --generator-minutes 10``).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from ehrgen.data.demo import demo_cohort
from ehrgen.evaluation.utility import UtilityConfig, utility


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=5_000)
    parser.add_argument("--test", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--generator-minutes", type=float, default=None)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--objective", default="one-pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    n = args.train + args.test
    train, test = demo_cohort(n, seed=args.seed).split(
        [args.train / n, args.test / n], seed=args.seed
    )
    synthetic = demo_cohort(2 * args.train, seed=args.seed + 1)
    sizes = {"real_sizes": [args.train // 5, args.train],
             "synthetic_sizes": [args.train, 2 * args.train]}  # fmt: skip
    if args.generator_minutes:
        synthetic = _generated(train, args)
        sizes = {"real_sizes": [args.train], "synthetic_sizes": [args.train]}
    print(f"train:     {train}")
    print(f"test:      {test}")
    print(f"synthetic: {synthetic}")

    config = UtilityConfig(epochs=args.epochs, seed=args.seed)
    start = time.perf_counter()
    result = utility(
        train,
        synthetic,
        test,
        **sizes,
        config=config,
        progress=lambda name: print(f"  {time.perf_counter() - start:6.1f} s  {name}"),
    )
    seconds = time.perf_counter() - start

    print(
        f"\n{result.n_test_examples} test examples from {result.n_test_patients} "
        f"patients; target: {result.target_modality}\n"
    )
    print(f"{'setting':<28} {'recall@10':>22} {'recall@20':>22} {'epochs':>6} {'s':>6}")
    for s in (*result.settings, *result.baselines):
        print(
            f"{s.name:<28} {s.recall[10]!s:>22} {s.recall[20]!s:>22} "
            f"{s.epochs_run:>6} {s.seconds:>6.1f}"
        )
    print(f"\ntotal {seconds:.1f} s, peak RSS {peak_rss_mib():.0f} MiB")
    for note in result.notes:
        print(f"note: {note}")


def _generated(train, args):
    """``--train`` patients from a PromptEHR model trained on ``train``."""
    from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
    from ehrgen.training import TrainingConfig

    start = time.perf_counter()
    config = PromptEHRConfig.preset(args.preset, objective=args.objective)
    training = TrainingConfig(epochs=1000, batch_size=16, learning_rate=5e-4,
                              time_budget_minutes=args.generator_minutes,
                              checkpoint_every_steps=None, patience=None)  # fmt: skip
    model = PromptEHR(config).fit(train, training=training)
    trained = time.perf_counter() - start
    synthetic = model.generate(args.train, seed=args.seed)
    print(
        f"generator: PromptEHR ({args.preset}, {args.objective}) trained "
        f"{trained:.0f} s ({model.training_.steps} steps), {len(synthetic)} patients "
        f"generated in {time.perf_counter() - start - trained:.0f} s"
    )
    return synthetic


if __name__ == "__main__":
    main()
