"""``ehrgen quickstart``: the main job, end to end, on the embedded demo cohort."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ehrgen.cli import app
from ehrgen.cli._common import Overwrite, Preset, _bar, console, print_stats

# (patients, preset, epochs, bootstrap resamples, shadow-model epochs) per mode.
_FULL = (2000, Preset.small, 3, 300, 20)
_FAST = (800, Preset.tiny, 3, 100, 10)
# Unless --epochs is given, training also stops after this many minutes, so that the
# whole job takes about five minutes on a 2-core CPU whatever the machine.
_TRAINING_MINUTES = 3.0


@app.command("quickstart")
def quickstart(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path(
        "ehrgen-quickstart"
    ),
    fast: Annotated[
        bool,
        typer.Option(
            "--fast", help="A one-minute version: fewer patients, tiny model."
        ),
    ] = False,
    patients: Annotated[
        int | None, typer.Option("--patients", help="Demo patients to simulate.")
    ] = None,
    preset: Annotated[
        Preset | None, typer.Option("--preset", help="Model size.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Training epochs.")
    ] = None,
    synthetic: Annotated[
        int | None,
        typer.Option(
            "--synthetic", help="Synthetic patients (default: as many as trained on)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Run the main job on the embedded demo cohort, end to end.

    Simulates the demo cohort and writes it as MEDS (train/tuning/held_out splits),
    trains PromptEHR on the train split, generates synthetic patients from scratch
    (MEDS and JSONL), runs every evaluation suite (perplexity, fidelity, privacy,
    utility) and writes OUT/evaluation/report.html. About five minutes on a 2-core
    CPU; --fast takes about one.
    """
    from ehrgen._io import atomic_directory
    from ehrgen.cli.evaluate import evaluate_and_report
    from ehrgen.data.demo import demo_cohort
    from ehrgen.data.formats.jsonl import write_jsonl
    from ehrgen.data.formats.meds import write_meds
    from ehrgen.evaluation.privacy import PrivacyConfig
    from ehrgen.evaluation.suites import SUITES
    from ehrgen.evaluation.utility import UtilityConfig
    from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
    from ehrgen.training import TrainingConfig

    defaults = _FAST if fast else _FULL
    patients = patients or defaults[0]
    preset = preset or defaults[1]
    budget = None if epochs or fast else _TRAINING_MINUTES
    epochs = epochs or defaults[2]
    resamples, shadow_epochs = defaults[3], defaults[4]
    with atomic_directory(out, overwrite) as tmp:
        with console.status(f"Simulating {patients:,} demo patients..."):
            cohort = demo_cohort(patients, seed=seed)
        train, tuning, held_out = cohort.split([0.8, 0.1, 0.1], seed=seed)
        write_meds(
            {"train": train, "tuning": tuning, "held_out": held_out}, tmp / "cohort"
        )
        (tmp / "stats.json").write_text(json.dumps(cohort.stats().to_dict(), indent=2))
        print_stats(cohort, title="Demo cohort")
        limit = f" (at most {budget:g} minutes)" if budget else ""
        console.print(
            f"Training PromptEHR ({preset.value}) for {epochs} epochs{limit}..."
        )
        model = PromptEHR(PromptEHRConfig.preset(preset.value)).fit(
            train,
            tuning if len(tuning) else None,
            TrainingConfig(epochs=epochs, seed=seed, time_budget_minutes=budget),
            output_dir=tmp / "model" / "training",
            progress=True,
        )
        with console.status("Calibrating how many visits patients have..."):
            model.calibrate_length(train, n_samples=min(256, len(train)), seed=seed)
        model.save_pretrained(tmp / "model")
        n_synthetic = synthetic or len(train)
        with _bar("Generating", n_synthetic) as advance:
            fake = model.generate(n_synthetic, seed=seed, progress=advance)
        write_meds(fake, tmp / "synthetic")
        write_jsonl(fake, tmp / "synthetic.jsonl")
        print_stats(fake, title="Synthetic cohort")
        page = evaluate_and_report(
            model,
            train,
            held_out,
            {"from_scratch": fake},
            tmp / "evaluation",
            list(SUITES),
            resamples=resamples,
            seed=seed,
            privacy_config=PrivacyConfig(
                n_resamples=resamples, shadow_epochs=shadow_epochs, seed=seed
            ),
            utility_config=UtilityConfig(n_resamples=resamples, seed=seed),
        )
    ppl = model.training_.best_val_perplexity
    console.print(
        f"[green]Done.[/green] MEDS cohort: [bold]{out / 'cohort'}[/bold] "
        f"({len(train):,} train / {len(tuning):,} tuning / {len(held_out):,} held-out "
        f"patients). Model: [bold]{out / 'model'}[/bold] "
        f"({model.training_.steps:,} steps; validation perplexity "
        f"{ppl if ppl is not None else float('nan'):.2f}). Synthetic cohort: "
        f"[bold]{out / 'synthetic'}[/bold] and [bold]{out / 'synthetic.jsonl'}[/bold] "
        f"({len(fake):,} patients, {fake.n_visits:,} visits)."
    )
    console.print(
        f"Report: [bold]{out / 'evaluation' / page.name}[/bold]", soft_wrap=True
    )
