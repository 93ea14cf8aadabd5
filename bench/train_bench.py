"""Training benchmark: PromptEHR on the demo cohort and on the reference pickle.

Prints parameters, tokens/s, patients/s, peak RSS and best validation perplexity;
asserts nothing. Usage::

    python bench/train_bench.py [--preset small] [--epochs 3] [--batch-size 16]
        [--patients 2000] [--pickle ../shared/data/promptehr_demo/data.pkl]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from ehrgen.data import Cohort
from ehrgen.data.demo import demo_cohort
from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
from ehrgen.training import TrainingConfig

DEFAULT_PICKLE = (
    Path(__file__).resolve().parents[2] / "shared/data/promptehr_demo/data.pkl"
)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(name: str, train: Cohort, val: Cohort, args: argparse.Namespace) -> None:
    training = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        checkpoint_every_steps=None,
        patience=None,
    )
    config = PromptEHRConfig.preset(args.preset)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = PromptEHR(config).fit(train, val, training, output_dir=tmp)
    seconds = time.perf_counter() - start
    info = model.training_.to_dict()
    n_params = sum(p.numel() for p in model.model_.parameters())
    print(
        f"[{name}] preset {args.preset}: {n_params:,} parameters; "
        f"{len(train):,} train / {len(val):,} validation patients"
    )
    print(
        f"[{name}] {info['steps']:,} steps in {seconds:.1f} s: "
        f"{info['train_tokens'] / seconds:,.0f} target tokens/s, "
        f"{len(train) * info['epochs_completed'] / seconds:,.1f} patients/s"
    )
    print(
        f"[{name}] best validation perplexity {info['best_val_perplexity']:.2f} "
        f"(epoch {info['best_epoch']}); peak RSS {peak_rss_mib():,.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--pickle", type=Path, default=DEFAULT_PICKLE)
    parser.add_argument("--only", choices=["demo", "pickle"], default=None)
    args = parser.parse_args()
    if args.only != "pickle":
        train, val, _ = demo_cohort(args.patients, seed=0).split(
            [0.8, 0.1, 0.1], seed=0
        )
        run("demo", train, val, args)
    if args.only != "demo":
        if not args.pickle.exists():
            print(f"[pickle] {args.pickle} not found; skipped")
            return
        from ehrgen.data.formats.promptehr_pickle import read_promptehr_pickle

        cohort = read_promptehr_pickle(args.pickle)
        run("pickle", cohort[0:800], cohort[800:900], args)


if __name__ == "__main__":
    main()
