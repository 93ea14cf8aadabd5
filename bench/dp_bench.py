"""The privacy-utility trade-off of DP training: PromptEHR (one-pass objective) trained
on the demo cohort at several ε, every evaluation suite run on each. Prints one table
(rows: the headline figures of fidelity, perplexity, privacy attacks and utility;
columns: ε), writes it as JSON and plots each figure against ε; asserts nothing.

    python bench/dp_bench.py [--train 2000] [--holdout 1000] [--epsilons 1,3,8,inf]
        [--epochs 5] [--minutes 6] [--preset small] [--public-vocabulary]
        [--out dp-bench]

Perplexities are comparable across ε only with ``--public-vocabulary``: a DP
vocabulary keeps fewer codes at a smaller ε, and lpl is over in-vocabulary codes.

Every model trains under the same budget (``--epochs``, capped by ``--minutes`` of
training): a DP run planned for E epochs spends its ε in E epochs, so a run cut short by
the time limit spends less, and the table says how much (``ε spent``). ε = inf runs the
same pipeline (Poisson sampling, per-patient clipping, the same vocabulary and summary
code) without noise.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from ehrgen.data.demo import demo_cohort
from ehrgen.evaluation import evaluate
from ehrgen.models.registry import build_model
from ehrgen.privacy import DPConfig
from ehrgen.tokens import CodeTokenizer
from ehrgen.training import TrainingConfig

# Headline rows to print first, by substring of the metric name.
_FIRST = ("R²", "classifier", "KS visits", "recall@10", "lpl", "mpl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--holdout", type=int, default=1000)
    parser.add_argument("--epsilons", default="1,3,8,inf")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-patients", type=int, default=64)
    parser.add_argument("--suites", default="fidelity,perplexity,privacy,utility")
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--public-vocabulary",
        action="store_true",
        help="Use the codes of an independent demo sample (a public stand-in) as the "
        "vocabulary of every run, so that perplexities share one vocabulary and ε "
        "is spent on the weights and the population summary only.",
    )
    parser.add_argument("--out", type=Path, default=Path("dp-bench"))
    args = parser.parse_args()

    n = args.train + args.holdout
    train, holdout = demo_cohort(n, seed=args.seed).split(
        [args.train / n, args.holdout / n], seed=args.seed
    )
    print(f"train {train}\nholdout {holdout}")
    vocabulary = None
    if args.public_vocabulary:
        vocabulary = CodeTokenizer.fit(demo_cohort(n, seed=args.seed + 1000))
    args.out.mkdir(parents=True, exist_ok=True)
    columns: dict[str, dict[str, str]] = {}
    values: dict[str, dict[str, float | None]] = {}
    for text in args.epsilons.split(","):
        epsilon = float(text)
        label = "ε=∞" if math.isinf(epsilon) else f"ε={epsilon:g}"
        model = build_model("promptehr-one-pass", args.preset)
        training = TrainingConfig(
            epochs=args.epochs,
            time_budget_minutes=args.minutes,
            seed=args.seed,
            dp=DPConfig(epsilon=epsilon, expected_batch_patients=args.batch_patients),
        )
        started = time.perf_counter()
        model.fit(train, training=training, vocabulary=vocabulary)
        seconds = time.perf_counter() - started
        statement = model.privacy_
        result = evaluate(
            model, train, holdout, suites=args.suites, from_seeds=False,
            n_resamples=args.resamples, seed=args.seed,
        )  # fmt: skip
        cells = {
            "ε spent": f"{statement.epsilon:.3g}",
            "δ": f"{statement.delta:.2g}",
            "training s": f"{seconds:.0f}",
            "steps": str(model.training_.steps),
            "vocabulary codes": str(sum(map(len, model.tokenizer_.codes.values()))),
        }
        numbers = {"ε spent": statement.epsilon}
        for row in result.summary():
            name = f"{row.suite}: {row.metric}"
            cells[name] = row.text()
            numbers[name] = row.value
        columns[label], values[label] = cells, numbers
        print(f"{label}: trained {seconds:.0f} s, {statement.summary()}", flush=True)
    _print(columns)
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "figures": values,
        "text": columns,
    }
    (args.out / "dp_bench.json").write_text(json.dumps(report, indent=2))
    _plot(values, args.out / "dp_bench.png")
    print(f"wrote {args.out / 'dp_bench.json'} and {args.out / 'dp_bench.png'}")


def _print(columns: dict[str, dict[str, str]]) -> None:
    labels = list(columns)
    names = list(dict.fromkeys(k for c in columns.values() for k in c))
    meta = ("ε spent", "δ", "training s", "steps", "vocabulary codes")
    names.sort(
        key=lambda k: (
            -1 if k in meta else next((i for i, f in enumerate(_FIRST) if f in k), 99)
        )
    )
    print("| figure | " + " | ".join(labels) + " |")
    print("| --- |" + " --- |" * len(labels))
    for name in names:
        cells = [columns[label].get(name, "") for label in labels]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _plot(values: dict[str, dict[str, float | None]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(values)
    names = [
        k for k in dict.fromkeys(k for v in values.values() for k in v)
        if any(f in k for f in _FIRST) or "AUC" in k or "NNAAR" in k
    ]  # fmt: skip
    cols = 4
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ys = [values[label].get(name) for label in labels]
        ax.plot(labels, [math.nan if y is None else y for y in ys], marker="o")
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
