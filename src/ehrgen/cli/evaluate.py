"""``ehrgen evaluate``: how realistic, private and useful a model's synthetic patients
are; the command around :func:`ehrgen.evaluation.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ehrgen.cli import app
from ehrgen.cli._common import Overwrite, _read, console
from ehrgen.errors import ConfigError
from ehrgen.evaluation.suites import SUITES

if TYPE_CHECKING:
    from ehrgen.data import Cohort
    from ehrgen.evaluation import Evaluation


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
    """Evaluate a model's synthetic patients against the real ones (all suites by
    default): writes OUT/report.html (self-contained), OUT/metrics.json,
    OUT/privacy.json with the ROC curves under OUT/privacy/, and prints the summary."""
    from ehrgen._io import atomic_directory
    from ehrgen.evaluation.suites import parse_suites
    from ehrgen.models.registry import load_model

    suites = parse_suites(suite)
    train_cohort, holdout_cohort = _real_cohorts(train, holdout, cohort)
    model = load_model(model_dir)
    from_scratch = _synthetic(model, synthetic, train_cohort, seed)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        page = evaluate_and_report(
            model, train_cohort, holdout_cohort, from_scratch, tmp, suites,
            from_seeds=from_seeds, resamples=resamples, seed=seed,
        )  # fmt: skip
    console.print(f"Report: [bold]{out / page.name}[/bold]", soft_wrap=True)


def evaluate_and_report(
    model: Any,
    train: Cohort,
    holdout: Cohort,
    synthetic: Cohort | dict[str, Cohort],
    out: Path,
    suites: list[str],
    *,
    from_seeds: bool = False,
    resamples: int,
    seed: int,
    privacy_config: Any = None,
    utility_config: Any = None,
) -> Path:
    """Run :func:`ehrgen.evaluation.evaluate` with a status line, write every output
    into ``out`` and print the summary table; returns the report's path."""
    from ehrgen._io import write_json
    from ehrgen.evaluation import evaluate as run_evaluation
    from ehrgen.evaluation.report import write_report

    with console.status("Evaluating...") as status:
        evaluation = run_evaluation(
            model,
            train,
            holdout,
            synthetic,
            suites=suites,
            from_seeds=from_seeds,
            seed=seed,
            n_resamples=resamples,
            privacy_config=privacy_config,
            utility_config=utility_config,
            progress=lambda what: status.update(f"Evaluating: {what}..."),
        )
    if evaluation.privacy:
        for mode, result in evaluation.privacy.items():
            result.save(out / "privacy" / mode)
        privacy = {m: r.to_dict() for m, r in evaluation.privacy.items()}
        write_json(out / "privacy.json", privacy)
    with console.status("Writing the report..."):
        page = write_report(evaluation, out)
    print_summary(evaluation)
    return page


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


def print_summary(evaluation: Evaluation) -> None:
    """The summary table of an evaluation, one column per generation mode; a note
    (such as a calibrated visit count) follows its figure's name."""
    from rich.markup import escape
    from rich.table import Table

    from ehrgen.evaluation.rows import pivot

    modes = evaluation.modes
    table = Table(
        title="Evaluation summary: value [95% bootstrap interval]",
        caption="better: ↑ higher, ↓ lower, ≈0.5 / ≈0 closer to it, ref: a reference",
    )
    table.add_column("figure", overflow="fold")
    table.add_column("better", no_wrap=True)
    for mode in modes:
        table.add_column(mode.replace("_", " "), justify="right", no_wrap=True)
    suite = None
    for row, cells in pivot(evaluation.summary(), modes):
        if row.suite != suite:
            suite = row.suite
            table.add_row(f"[bold]{suite}[/bold]")
        name = f"  {escape(row.metric)}"
        if row.note:
            name += f" [dim]({escape(row.note)})[/dim]"
        arrow = _ARROWS.get(row.direction, row.direction)
        table.add_row(name, arrow, *(escape(cell) for cell in cells))
    console.print(table)


_ARROWS = {
    "higher": "↑",
    "lower": "↓",
    "closer to 0.5": "≈0.5",
    "closer to 0": "≈0",
    "reference": "ref",
}
