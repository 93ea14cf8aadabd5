"""Fidelity against the strongest peer (HALO) on the reference PromptEHR pickle.

Trains PromptEHR on patients 0-799 of ``../shared/data/promptehr_demo/data.pkl``
(validated on 800-899), generates 800 patients from scratch, and prints the six R²
statistics with all modalities pooled into one code set per visit, beside the figures
of HALO (PyHealth 2.1's implementation) trained on the same 800 patients; also the
real-vs-synthetic classifier and the shape of visits per patient. Prints figures;
asserts nothing::

    python bench/halo_comparison.py [--epochs 15] [--preset small] [--top-p 0.95]
        [--objective one-pass|paper] [--time-budget 10] [--no-calibration]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ehrgen.data.formats.promptehr_pickle import read_promptehr_pickle
from ehrgen.evaluation.fidelity import KINDS, fidelity
from ehrgen.generation import GenerationConfig
from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
from ehrgen.training import TrainingConfig

DEFAULT_PICKLE = (
    Path(__file__).resolve().parents[2] / "shared/data/promptehr_demo/data.pkl"
)
# HALO (Theodorou et al. 2023) as implemented in PyHealth 2.1, trained on the same
# 800 patients (0-799) of this sample; not figures from HALO's paper.
HALO = dict(zip(KINDS, (0.981, 0.996, 0.962, 0.973, 0.946, 0.953)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pickle", type=Path, default=DEFAULT_PICKLE)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--objective", default="one-pass")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--time-budget", type=float, default=None, help="Minutes.")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-calibration", action="store_true")
    args = parser.parse_args()
    if not args.pickle.exists():
        print(f"{args.pickle} not found; nothing to do")
        return

    cohort = read_promptehr_pickle(args.pickle)
    train, val = cohort[:800], cohort[800:900]
    start = time.perf_counter()
    training = TrainingConfig(
        epochs=args.epochs,
        batch_size=16,
        learning_rate=5e-4,
        time_budget_minutes=args.time_budget,
        seed=args.seed,
    )
    config = PromptEHRConfig.preset(args.preset, objective=args.objective)
    model = PromptEHR(config).fit(train, val, training=training)
    training_seconds = time.perf_counter() - start
    if not args.no_calibration:
        start_calibration = time.perf_counter()
        model.calibrate_length(train, n_samples=512, seed=args.seed)
        print(f"length calibration in {time.perf_counter() - start_calibration:.0f} s")
    info = model.training_.to_dict()
    print(
        f"PromptEHR ({args.preset}, {args.objective} objective, length calibration "
        f"{'off' if args.no_calibration else 'on'}) on patients 0-799: "
        f"{info['steps']} steps, "
        f"{info['epochs_completed']} epochs, {training_seconds:.0f} s, "
        f"best validation perplexity {info['best_val_perplexity']:.2f}"
    )
    sampling = GenerationConfig(temperature=args.temperature, top_p=args.top_p)
    start = time.perf_counter()
    synthetic = model.generate(800, generation=sampling, seed=args.seed)
    print(
        f"generated 800 patients in {time.perf_counter() - start:.0f} s "
        f"(temperature {args.temperature}, top-p {args.top_p}, top-k None)"
    )
    result = fidelity(train, synthetic, seed=args.seed)
    print(f"\n{'statistic':<22}{'ehrgen':>9}{'HALO':>9}")
    for kind in KINDS:
        print(f"{kind:<22}{result.r2[kind]:>9.3f}{HALO[kind]:>9.3f}")
    accuracy, auc = result.discriminator["accuracy"], result.discriminator["auc"]
    print(
        f"\nreal-vs-synthetic classifier accuracy {accuracy:.3f} (AUC {auc:.3f}); "
        f"HALO (PyHealth 2.1, same 800 patients) 0.48"
    )
    visits = result.distributions["visits_per_patient"]
    real_counts = np.diff(train.visit_offsets)
    fake_counts = np.diff(synthetic.visit_offsets)
    print(
        f"visits per patient: KS {visits['ks']:.3f} (peers 0.20-0.31); "
        f"mean real {real_counts.mean():.2f} vs synthetic {fake_counts.mean():.2f}; "
        f"two visits: real {np.mean(real_counts == 2):.0%}, "
        f"synthetic {np.mean(fake_counts == 2):.0%}; one visit: real "
        f"{np.mean(real_counts == 1):.0%}, synthetic {np.mean(fake_counts == 1):.0%}"
    )
    codes = result.distributions["codes_per_visit"]
    print(
        f"codes per visit: real {codes['real_mean']:.1f}, synthetic "
        f"{codes['synthetic_mean']:.1f} (KS {codes['ks']:.3f})"
    )
    for modality, figures in result.r2_by_modality.items():
        print(
            f"R² {modality}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
        )
    print(
        "long tail: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result.r2_long_tail.items())
    )


if __name__ == "__main__":
    main()
