"""Every generator on the reference sample, one row each: fidelity, privacy, speed.

Each model trains on patients 0-799 of ``../shared/data/promptehr_demo/data.pkl``
(validated on 800-899) for the same wall-clock budget (or epochs, whichever ends
first; no early stopping), then generates 800 patients
from scratch with plain sampling and no length calibration. One row per model:

* fidelity against the training patients: the six R² statistics (modalities pooled),
  the real-vs-synthetic classifier accuracy, the KS of visits per patient;
* privacy headline figures with patients 900-999 as the hold-out: the distance
  membership AUC (code sets), NNAAR, and the exact-copy rate;
* training patients per second (patient-epochs: the steps made over the steps of an
  epoch, times the patients, over the training seconds) and generation patients per
  second.

Each model runs in its own process (so the figures of one never share memory or
threads with another) and prints one JSON line; the parent prints the table.
Prints figures; asserts nothing::

    python bench/models_table.py [--models promptehr,promptehr-one-pass,lstm-mlp,
        lstm-medgan,synteg,gpt2,halo] [--minutes 3] [--epochs 30] [--preset small]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_PICKLE = (
    Path(__file__).resolve().parents[2] / "shared/data/promptehr_demo/data.pkl"
)
MODELS = "promptehr,promptehr-one-pass,lstm-mlp,lstm-medgan,synteg,gpt2,halo"


def run_one(args: argparse.Namespace) -> dict:
    import numpy as np

    from ehrgen.data.formats.promptehr_pickle import read_promptehr_pickle
    from ehrgen.evaluation.fidelity import KINDS, fidelity
    from ehrgen.evaluation.privacy import PrivacyConfig, evaluate_privacy
    from ehrgen.generation import GenerationConfig
    from ehrgen.models.registry import build_model
    from ehrgen.training import TrainingConfig

    cohort = read_promptehr_pickle(args.pickle)
    train, val, holdout = cohort[:800], cohort[800:900], cohort[900:1000]
    training = TrainingConfig(
        epochs=args.epochs,
        batch_size=16,
        learning_rate=5e-4,
        time_budget_minutes=args.minutes,
        checkpoint_every_steps=None,
        patience=None,
        seed=args.seed,
    )
    model = build_model(args.model, args.preset)
    start = time.perf_counter()
    model.fit(train, val, training=training)
    training_seconds = time.perf_counter() - start
    info = model.training_.to_dict()
    # Patient-epochs from the steps made: an epoch holds len(train_loader) steps.
    train_loader, _ = model._loaders(model._fitted, train, None, training)
    epochs = info["steps"] / len(train_loader(0))
    start = time.perf_counter()
    synthetic = model.generate(
        len(train), generation=GenerationConfig(calibrated_length=False), seed=1
    )
    generation_seconds = time.perf_counter() - start
    result = fidelity(train, synthetic, seed=args.seed)
    privacy = evaluate_privacy(
        train,
        holdout,
        synthetic,
        config=PrivacyConfig(
            attacks=("copies", "distance_membership", "nnaa"), n_resamples=200
        ),
    )
    figures = {row.metric: row for row in privacy.figures()}
    counts = np.diff(synthetic.visit_offsets)
    return {
        "model": args.model,
        "steps": info["steps"],
        "epochs": round(epochs, 2),
        "training_s": round(training_seconds),
        "train_patients_per_s": round(len(train) * epochs / training_seconds, 1),
        "generate_patients_per_s": round(len(train) / generation_seconds, 1),
        "r2": {kind: round(result.r2[kind], 3) for kind in KINDS},
        "classifier_accuracy": round(result.discriminator["accuracy"], 3),
        "visits_ks": round(result.distributions["visits_per_patient"]["ks"], 3),
        "mean_visits": round(float(counts.mean()), 2),
        "distance_mia_auc": figures["distance_membership.code_set_auc"].text(),
        "nnaar": figures["nnaa.nnaar"].text(),
        "exact_copies": figures["copies.exact_copy_rate"].text(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pickle", type=Path, default=DEFAULT_PICKLE)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--minutes", type=float, default=3.0)
    # A cap as Table 2's: the GANs plan their phases over the planned epochs.
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.pickle.exists():
        print(f"{args.pickle} not found; nothing to do")
        return
    if args.model:  # one model, in this process
        print(json.dumps(run_one(args)))
        return
    rows = []
    for name in args.models.split(","):
        command = [
            sys.executable, __file__, "--model", name, "--pickle", str(args.pickle),
            "--preset", args.preset, "--minutes", str(args.minutes),
            "--epochs", str(args.epochs), "--seed", str(args.seed),
        ]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}", flush=True)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    kinds = list(rows[0]["r2"]) if rows else []
    header = [
        "model", *kinds, "classifier", "visits KS", "MIA AUC", "NNAAR",
        "exact copies", "train pat/s", "generate pat/s", "steps (epochs)",
    ]  # fmt: skip
    print(
        f"\nBudget: {args.minutes} minutes or {args.epochs} epochs of training per "
        f"model, preset "
        f"{args.preset}; 800 patients generated, no length calibration.\n"
    )
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        cells = [
            row["model"], *(f"{row['r2'][k]:.3f}" for k in kinds),
            f"{row['classifier_accuracy']:.3f}", f"{row['visits_ks']:.3f}",
            row["distance_mia_auc"], row["nnaar"], row["exact_copies"],
            f"{row['train_patients_per_s']}", f"{row['generate_patients_per_s']}",
            f"{row['steps']} ({row['epochs']})",
        ]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
