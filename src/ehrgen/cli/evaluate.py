"""``ehrgen evaluate``: how private (and, with more suites, how realistic and useful)
a model's synthetic patients are."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ehrgen.cli import app
from ehrgen.cli._common import Overwrite, _read, console
from ehrgen.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from ehrgen.data.cohort import Cohort

SUITES = ("privacy",)


@app.command("evaluate")
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="A trained model folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    train: Annotated[
        Path | None,
        typer.Option("--train", help="The model's training cohort (MEDS folder)."),
    ] = None,
    holdout: Annotated[
        Path | None,
        typer.Option("--holdout", help="Real patients the model never saw (MEDS)."),
    ] = None,
    cohort: Annotated[
        Path | None,
        typer.Option(
            "--cohort",
            help="A MEDS folder with train and held_out splits: instead of --train "
            "and --holdout.",
        ),
    ] = None,
    synthetic: Annotated[
        Path | None,
        typer.Option(
            "--synthetic",
            help="The model's synthetic patients (MEDS folder); generated from "
            "scratch, as many as --train, when not given.",
        ),
    ] = None,
    suite: Annotated[
        str,
        typer.Option("--suite", help=f"Comma-separated, among {', '.join(SUITES)}."),
    ] = ",".join(SUITES),
    from_seeds: Annotated[
        bool,
        typer.Option(
            "--from-seeds/--no-from-seeds",
            help="Also assess generation from the training patients' first visits, "
            "where the model can.",
        ),
    ] = True,
    resamples: Annotated[
        int, typer.Option("--resamples", help="Bootstrap resamples per figure.")
    ] = 500,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Evaluate synthetic patients against the real ones: writes OUT/privacy.json
    and the ROC curves (PNG and JSON points) under OUT/privacy/."""
    from ehrgen._io import atomic_directory
    from ehrgen.models.registry import load_model

    suites = _parse_suites(suite)
    train_cohort, holdout_cohort = _real_cohorts(train, holdout, cohort)
    model = load_model(model_dir)
    synthetic_sets = {"from_scratch": _synthetic(model, synthetic, train_cohort, seed)}
    if from_seeds and hasattr(model, "generate_from_seeds"):
        with console.status("Generating from the training patients' first visits..."):
            synthetic_sets["from_seeds"] = model.generate_from_seeds(
                train_cohort, seed=seed
            )
    with atomic_directory(out, overwrite=overwrite) as tmp:
        if "privacy" in suites:
            _privacy(
                model, train_cohort, holdout_cohort, synthetic_sets, tmp, resamples
            )
    console.print(f"Wrote the evaluation to [bold]{out}[/bold].")


def _parse_suites(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        if name not in SUITES:
            raise ConfigError(
                f"Unknown --suite {name!r}; expected some of {list(SUITES)}."
                f"{did_you_mean(name, SUITES)}"
            )
    if not names:
        raise ConfigError(f"--suite is empty; give some of {list(SUITES)}.")
    return names


def _real_cohorts(
    train: Path | None, holdout: Path | None, cohort: Path | None
) -> tuple[Cohort, Cohort]:
    if cohort is not None:
        if train is not None or holdout is not None:
            raise ConfigError(
                "Give either --cohort, or --train and --holdout; not both."
            )
        return _read(cohort, "meds", "train"), _read(cohort, "meds", "held_out")
    if train is None or holdout is None:
        raise ConfigError(
            "The real patients are missing: give --train and --holdout (MEDS folders), "
            "or --cohort (a MEDS folder with train and held_out splits)."
        )
    return _read(train, "meds"), _read(holdout, "meds")


def _synthetic(model: Any, synthetic: Path | None, train: Cohort, seed: int) -> Cohort:
    if synthetic is not None:
        return _read(synthetic, None)
    import inspect

    from ehrgen.cli._common import _bar

    if "progress" not in inspect.signature(model.generate).parameters:
        with console.status(f"Generating {len(train):,} patients..."):
            return model.generate(len(train), seed=seed)
    with _bar("Generating", len(train)) as advance:
        return model.generate(len(train), seed=seed, progress=advance)


def _privacy(
    model: Any,
    train: Cohort,
    holdout: Cohort,
    synthetic_sets: dict[str, Cohort],
    out: Path,
    resamples: int,
) -> None:
    from ehrgen._io import write_json
    from ehrgen.evaluation.privacy import PrivacyConfig, evaluate_privacy

    config = PrivacyConfig(n_resamples=resamples)
    results = {}
    for mode, synthetic in synthetic_sets.items():
        with console.status(
            f"Privacy attacks on the synthetic patients ({mode})..."
        ) as s:
            result = evaluate_privacy(
                train,
                holdout,
                synthetic,
                model=model,
                config=config,
                progress=lambda name, mode=mode: s.update(
                    f"Privacy ({mode}): {name.replace('_', ' ')}..."
                ),
            )
        result.save(out / "privacy" / mode)
        results[mode] = result
    write_json(out / "privacy.json", {m: r.to_dict() for m, r in results.items()})
    print_privacy(results)


def print_privacy(results: dict[str, Any]) -> None:
    """The privacy figures of each generation mode side by side, attack by attack."""
    from rich.table import Table

    table = Table(title="Privacy: value (95% bootstrap interval)")
    table.add_column("attack / figure", no_wrap=True)
    table.add_column("better", no_wrap=True)
    for mode in results:
        table.add_column(mode.replace("_", " "), justify="right", no_wrap=True)
    first = next(iter(results.values()))
    for attack_name, attack in first.attacks.items():
        table.add_row(f"[bold]{attack_name.replace('_', ' ')}[/bold]")
        for figure, estimate in attack.figures.items():
            cells = []
            for result in results.values():
                other = result.attacks.get(attack_name)
                found = other.figures.get(figure) if other else None
                cells.append(_compact(found))
            table.add_row(f"  {figure}", estimate.direction, *cells)
    console.print(table)


def _compact(estimate: Any) -> str:
    if estimate is None:
        return "-"
    return f"{estimate.value:.3f} ({estimate.ci_low:.2f}-{estimate.ci_high:.2f})"
