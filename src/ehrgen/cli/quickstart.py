"""``ehrgen quickstart``: the main job on the embedded demo cohort."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ehrgen.cli import app
from ehrgen.cli._common import Overwrite, Preset, _bar, console, print_stats


@app.command("quickstart")
def quickstart(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path(
        "ehrgen-quickstart"
    ),
    patients: Annotated[int, typer.Option("--patients", help="Patients.")] = 2000,
    preset: Annotated[Preset, typer.Option("--preset", help="Model size.")] = (
        Preset.tiny
    ),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 5,
    synthetic: Annotated[
        int, typer.Option("--synthetic", help="Synthetic patients to generate.")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Run the main job on the embedded demo cohort.

    Simulates the demo cohort, writes it as MEDS with train/tuning/held_out splits,
    trains PromptEHR on the train split (validated on tuning), reports the held-out
    perplexity, and generates synthetic patients from scratch (MEDS). The tiny preset
    keeps it to a few minutes on a laptop CPU.
    """
    from ehrgen._io import atomic_directory
    from ehrgen.data.demo import demo_cohort
    from ehrgen.data.meds import write_meds
    from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
    from ehrgen.training import TrainingConfig

    with atomic_directory(out, overwrite) as tmp:
        with console.status(f"Simulating {patients:,} demo patients..."):
            cohort = demo_cohort(patients, seed=seed)
        train, tuning, held_out = cohort.split([0.8, 0.1, 0.1], seed=seed)
        splits = {"train": train, "tuning": tuning, "held_out": held_out}
        write_meds(splits, tmp / "cohort")
        (tmp / "stats.json").write_text(json.dumps(cohort.stats().to_dict(), indent=2))
        print_stats(cohort, title="Demo cohort")
        console.print(f"Training PromptEHR ({preset.value}) for {epochs} epochs...")
        model = PromptEHR(PromptEHRConfig.preset(preset.value)).fit(
            train,
            tuning if len(tuning) else None,
            TrainingConfig(epochs=epochs, seed=seed),
            output_dir=tmp / "model" / "training",
            progress=True,
        )
        model.save_pretrained(tmp / "model")
        held_out_ppl = model.perplexity(held_out) if len(held_out) else float("nan")
        with _bar("Generating", synthetic) as advance:
            fake = model.generate(synthetic, seed=seed, progress=advance)
        write_meds(fake, tmp / "synthetic")
    ppl = model.info_["best_val_perplexity"]
    console.print(
        f"[green]Done.[/green] MEDS cohort: [bold]{out / 'cohort'}[/bold] "
        f"({len(train):,} train / {len(tuning):,} tuning / {len(held_out):,} held-out "
        f"patients). Model: [bold]{out / 'model'}[/bold] "
        f"({model.info_['steps']:,} steps; validation perplexity "
        f"{ppl if ppl is not None else float('nan'):.2f}, held-out perplexity "
        f"{held_out_ppl:.2f}). Synthetic cohort: [bold]{out / 'synthetic'}[/bold] "
        f"({len(fake):,} patients, {fake.n_visits:,} visits)."
    )
    print_stats(fake, title="Synthetic cohort")
