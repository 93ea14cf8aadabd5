"""The ``ehrgen`` command.

Heavy modules (numpy, polars, torch) are imported inside the commands that use them, so
``ehrgen --help`` answers at once. An :class:`~ehrgen.errors.EhrgenError` is printed as
one line and exits with status 2; ``ehrgen --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from ehrgen.errors import ConfigError, EhrgenError

if TYPE_CHECKING:
    from ehrgen.data.cohort import Cohort

app = typer.Typer(
    help="Learn from real EHRs and generate realistic, private synthetic patients.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(
    help="Build, import, export and inspect cohorts.", no_args_is_help=True
)
app.add_typer(data_app, name="data")

console = Console()
errors = Console(stderr=True)
_state = {"debug": False}


class ImportFormat(str, enum.Enum):
    meds = "meds"
    promptehr_pickle = "promptehr-pickle"
    jsonl = "jsonl"


class ExportFormat(str, enum.Enum):
    jsonl = "jsonl"
    meds = "meds"


Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace the output if it exists.")
]


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.")
    ] = False,
) -> None:
    _state["debug"] = debug
    if version:
        from ehrgen import __version__

        console.print(f"ehrgen {__version__}")
        raise typer.Exit()
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False, show_time=False)],
    )


# --------------------------------------------------------------------------- data


@data_app.command("demo")
def data_demo(
    out: Annotated[Path, typer.Option("--out", help="Output MEDS folder.")],
    patients: Annotated[int, typer.Option("--patients", help="Patients.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    split: Annotated[
        str, typer.Option("--split", help="train,tuning,held_out fractions.")
    ] = "0.8,0.1,0.1",
    overwrite: Overwrite = False,
) -> None:
    """Simulate the embedded demo cohort and write it as MEDS."""
    from ehrgen.data.demo import demo_cohort

    with console.status(f"Simulating {patients:,} demo patients..."):
        cohort = demo_cohort(patients, seed=seed)
    _write_splits(cohort, out, split, seed, overwrite)


@data_app.command("import")
def data_import(
    kind: Annotated[ImportFormat, typer.Argument(help="Format of SRC.")],
    src: Annotated[Path, typer.Argument(help="File or folder to import.")],
    out: Annotated[Path, typer.Option("--out", help="Output MEDS folder.")],
    split: Annotated[
        str, typer.Option("--split", help="train,tuning,held_out fractions.")
    ] = "1,0,0",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Import a cohort (MEDS, the reference PromptEHR pickle, JSONL) as MEDS."""
    with console.status(f"Reading {src}..."):
        cohort = _read(src, kind.value)
    _write_splits(cohort, out, split, seed, overwrite)


@data_app.command("export")
def data_export(
    src: Annotated[Path, typer.Argument(help="A MEDS folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output file or folder.")],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="Output format.")
    ] = ExportFormat.jsonl,
    overwrite: Overwrite = False,
) -> None:
    """Export a MEDS cohort (to JSONL: one patient per line)."""
    cohort = _read(src, "meds")
    if fmt is ExportFormat.jsonl:
        from ehrgen.data.jsonl import write_jsonl

        write_jsonl(cohort, out, overwrite=overwrite)
    else:
        from ehrgen.data.meds import write_meds

        write_meds(cohort, out, overwrite=overwrite)
    console.print(f"Wrote {len(cohort):,} patients to [bold]{out}[/bold].")


@data_app.command("stats")
def data_stats(
    src: Annotated[Path, typer.Argument(help="A MEDS folder, .jsonl or .pkl file.")],
    split: Annotated[
        str | None, typer.Option("--split", help="Only this MEDS split.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a cohort's statistics."""
    cohort = _read(src, None, split)
    if as_json:
        console.print_json(json.dumps(cohort.stats().to_dict()))
    else:
        print_stats(cohort, title=str(src))


# --------------------------------------------------------------------------- models


class Preset(str, enum.Enum):
    tiny = "tiny"
    small = "small"
    paper = "paper"


@app.command("train")
def train(
    cohort_dir: Annotated[Path, typer.Argument(help="A MEDS cohort folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output model folder.")],
    preset: Annotated[Preset, typer.Option("--preset", help="Model size.")] = (
        Preset.small
    ),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size.")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-4,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            help="Validation share of the train split, used when the cohort has no "
            "tuning split.",
        ),
    ] = 0.1,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="A checkpoints/step-N folder to continue from."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Train PromptEHR on a MEDS cohort (its train split, validated on its tuning
    split). Checkpoints and metrics.jsonl go to OUT/training/."""
    from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
    from ehrgen.training import TrainingConfig

    if (out / "ehrgen.json").exists() and not overwrite:
        raise ConfigError(
            f"{out} already holds a model; pass --overwrite to replace it, or choose "
            f"another --out."
        )
    train_cohort, val_cohort = _train_and_validation(cohort_dir, val_fraction, seed)
    training = TrainingConfig(
        epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed
    )
    console.print(
        f"Training PromptEHR ({preset.value}) on {len(train_cohort):,} patients, "
        f"validating on {len(val_cohort) if val_cohort else 0:,}."
    )
    model = PromptEHR(PromptEHRConfig.preset(preset.value)).fit(
        train_cohort,
        val_cohort,
        training,
        output_dir=out / "training",
        resume_from=resume,
        progress=True,
    )
    if not _is_main_process():
        return  # under `accelerate launch`, rank 0 alone writes the model
    model.save_pretrained(out, overwrite=True)
    ppl = model.info_["best_val_perplexity"]
    best = f", best validation perplexity {ppl:.2f}" if ppl is not None else ""
    console.print(f"[green]Saved[/green] the model to [bold]{out}[/bold]{best}.")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _train_and_validation(
    cohort_dir: Path, val_fraction: float, seed: int
) -> tuple[Cohort, Cohort | None]:
    import pyarrow.parquet as pq

    splits_file = cohort_dir / "metadata" / "subject_splits.parquet"
    names = set()
    if splits_file.exists():
        names = set(pq.read_table(splits_file, columns=["split"]).column(0).to_pylist())
    if "train" in names and "tuning" in names:
        return _read(cohort_dir, "meds", "train"), _read(cohort_dir, "meds", "tuning")
    cohort = _read(cohort_dir, "meds", "train" if "train" in names else None)
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1). Got {val_fraction}.")
    if val_fraction == 0 or len(cohort) < 2:
        return cohort, None
    train_part, val_part = cohort.split([1 - val_fraction, val_fraction], seed=seed)
    return train_part, (val_part if len(val_part) else None)


class OutputFormat(str, enum.Enum):
    meds = "meds"
    jsonl = "jsonl"


def _sampling(temperature, top_k, top_p, max_visits, batch_size):
    from ehrgen.generation import GenerationConfig

    return GenerationConfig(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_visits=max_visits,
        batch_size=batch_size,
    )


Temperature = Annotated[
    float, typer.Option("--temperature", help="Sampling temperature.")
]
TopK = Annotated[int | None, typer.Option("--top-k", help="Keep the k likeliest.")]
TopP = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.")]
MaxVisits = Annotated[
    int, typer.Option("--max-visits", help="Visits per patient, at most.")
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Patients per batch.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Format = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


@app.command("generate")
def generate(
    model_dir: Annotated[Path, typer.Argument(help="A trained model folder.")],
    n: Annotated[int, typer.Option("--n", help="Synthetic patients to generate.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (or .jsonl).")],
    condition: Annotated[
        list[str] | None,
        typer.Option("--condition", help="A baseline feature, NAME=VALUE; repeatable."),
    ] = None,
    temperature: Temperature = 1.0,
    top_k: TopK = None,
    top_p: TopP = None,
    max_visits: MaxVisits = 20,
    batch_size: BatchSize = 64,
    seed: Seed = 0,
    fmt: Format = OutputFormat.meds,
    overwrite: Overwrite = False,
) -> None:
    """Generate synthetic patients from scratch, optionally under conditions."""
    from ehrgen.models.promptehr import PromptEHR

    conditions = _parse_conditions(condition or [])
    model = PromptEHR.from_pretrained(model_dir)
    sampling = _sampling(temperature, top_k, top_p, max_visits, batch_size)
    with _bar("Generating", n) as advance:
        cohort = model.generate(n, conditions, sampling, seed=seed, progress=advance)
    _write(cohort, out, fmt, overwrite)


class ImputeMode(str, enum.Enum):
    next_visit = "next-visit"
    complete = "complete"


@app.command("impute")
def impute(
    model_dir: Annotated[Path, typer.Argument(help="A trained model folder.")],
    cohort_dir: Annotated[
        Path, typer.Argument(help="A MEDS cohort (partial records).")
    ],
    mode: Annotated[
        str,
        typer.Option(
            "--mode", help="next-visit, modality:NAME (e.g. modality:drug) or complete."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (or .jsonl).")],
    visit: Annotated[
        int | None,
        typer.Option(
            "--visit",
            help="Visit index (0-based; negative from the end). "
            "next-visit: keep visits before it and decode it; default: after "
            "the last.",
        ),
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="MEDS split.")] = None,
    temperature: Temperature = 1.0,
    top_k: TopK = None,
    top_p: TopP = None,
    batch_size: BatchSize = 64,
    seed: Seed = 0,
    fmt: Format = OutputFormat.meds,
    overwrite: Overwrite = False,
) -> None:
    """Fill in partial records: the next visit, a missing modality, or the rest of a
    visit."""
    from ehrgen.models.promptehr import PromptEHR

    model = PromptEHR.from_pretrained(model_dir)
    cohort = _read(cohort_dir, "meds", split)
    sampling = _sampling(temperature, top_k, top_p, 20, batch_size)
    with _bar("Imputing", len(cohort)) as advance:
        if mode == "next-visit":
            if visit is not None:
                cohort = _truncate(cohort, visit)
            result = model.continue_patients(cohort, 1, sampling, seed, advance)
        elif mode == "complete":
            result = model.complete_visits(
                cohort, -1 if visit is None else visit, sampling, seed, advance
            )
        elif mode.startswith("modality:"):
            result = model.impute_modality(
                cohort,
                -1 if visit is None else visit,
                mode.split(":", 1)[1],
                sampling,
                seed,
                advance,
            )
        else:
            raise ConfigError(
                f"--mode must be next-visit, modality:NAME or complete. Got {mode!r}."
            )
    _write(result, out, fmt, overwrite)


def _parse_conditions(items: list[str]) -> dict[str, str]:
    conditions = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(
                f"--condition must be NAME=VALUE (e.g. gender=F). Got {item!r}."
            )
        conditions[name.strip()] = value.strip()
    return conditions


def _truncate(cohort: Cohort, visit: int) -> Cohort:
    """Each patient's visits before index ``visit`` (patients without them dropped)."""
    from ehrgen.data.cohort import Cohort as CohortType
    from ehrgen.data.cohort import Patient

    kept = []
    for p in cohort:
        stop = visit if visit >= 0 else len(p.visits) + visit
        if 0 < stop <= len(p.visits):
            kept.append(Patient(p.patient_id, p.static, p.visits[:stop]))
    if not kept:
        raise ConfigError(f"No patient has visits before index {visit}.")
    return CohortType.from_patients(kept, cohort.schema, metadata=cohort.metadata)


def _write(cohort: Cohort, out: Path, fmt: OutputFormat, overwrite: bool) -> None:
    if fmt is OutputFormat.jsonl:
        from ehrgen.data.jsonl import write_jsonl

        write_jsonl(cohort, out, overwrite=overwrite)
    else:
        from ehrgen.data.meds import write_meds

        write_meds(cohort, out, overwrite=overwrite)
    console.print(
        f"Wrote {len(cohort):,} patients ({cohort.n_visits:,} visits, "
        f"{cohort.n_events:,} events) to [bold]{out}[/bold]."
    )


@contextlib.contextmanager
def _bar(label: str, total: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
    )

    with Progress(
        f"[bold]{label}[/bold]",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda k: progress.advance(task, k)


@app.command("benchmark")
def benchmark(
    cohort: Annotated[Path, typer.Argument(help="A MEDS folder, .pkl or .jsonl file.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    models: Annotated[
        str, typer.Option("--models", help="Comma-separated registry names.")
    ] = "promptehr,promptehr-noprompt,lstm-mlp,gpt2",
    preset: Annotated[Preset, typer.Option("--preset", help="Model size.")] = (
        Preset.small
    ),
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per model.")] = 10,
    time_budget: Annotated[
        float | None,
        typer.Option(
            "--time-budget", help="Minutes of training per model (caps --epochs)."
        ),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="train,validation,test fractions.")
    ] = "0.8,0.1,0.1",
    ordered: Annotated[
        bool, typer.Option("--ordered", help="Split in file order, not at random.")
    ] = False,
    batch_size: BatchSize = 16,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-4,
    seed: Seed = 0,
) -> None:
    """Table 2 of the paper on a cohort: train each model under the same budget and
    score lpl and mpl per modality on the test split."""
    import numpy as np

    from ehrgen.evaluation.benchmark import run_benchmark, table2_markdown
    from ehrgen.training import TrainingConfig

    data = _read(cohort, None)
    fractions = _parse_fractions(split)
    if ordered:
        bounds = np.cumsum([0] + [round(f * len(data)) for f in fractions])
        bounds[-1] = len(data)
        train, val, test = (data[int(a) : int(b)] for a, b in zip(bounds, bounds[1:]))
    else:
        train, val, test = data.split(fractions, seed=seed)
    training = TrainingConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=seed,
        time_budget_minutes=time_budget,
        checkpoint_every_steps=None,
    )
    names = [m.strip() for m in models.split(",") if m.strip()]
    results = run_benchmark(
        train,
        val if len(val) else None,
        test,
        names,
        training,
        preset.value,
        out,
        progress=True,
    )
    console.print(table2_markdown(results, list(test.schema.modalities)))
    console.print(f"Wrote [bold]{out}[/bold]/table2.md, results.json, table2.png.")


# --------------------------------------------------------------------------- quickstart


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


# --------------------------------------------------------------------------- helpers


def _read(src: Path, kind: str | None, split: str | None = None) -> Cohort:
    if kind is None:
        kind = {".jsonl": "jsonl", ".pkl": "promptehr-pickle"}.get(src.suffix, "meds")
    if not src.exists():
        raise ConfigError(f"{src}: no such file or folder.")
    if kind == "meds":
        from ehrgen.data.meds import read_meds

        return read_meds(src, split=split)
    if split is not None:
        raise ConfigError("--split applies to MEDS folders only.")
    if kind == "jsonl":
        from ehrgen.data.jsonl import read_jsonl

        return read_jsonl(src)
    from ehrgen.data.promptehr_pickle import read_promptehr_pickle

    return read_promptehr_pickle(src)


def _parse_fractions(text: str) -> list[float]:
    try:
        fractions = [float(x) for x in text.split(",")]
    except ValueError:
        fractions = []
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ConfigError(
            f"--split must be three non-negative numbers for train,tuning,held_out "
            f"(e.g. 0.8,0.1,0.1). Got {text!r} instead."
        )
    total = sum(fractions)
    return [f / total for f in fractions]


def _write_splits(
    cohort: Cohort, out: Path, split: str, seed: int, overwrite: bool
) -> None:
    from ehrgen.data.meds import write_meds

    parts = cohort.split(_parse_fractions(split), seed=seed)
    named = {
        name: part
        for name, part in zip(("train", "tuning", "held_out"), parts)
        if len(part)
    }
    with console.status(f"Writing {out}..."):
        write_meds(named, out, overwrite=overwrite)
    sizes = ", ".join(f"{len(p):,} {n}" for n, p in named.items())
    console.print(f"Wrote {len(cohort):,} patients ({sizes}) to [bold]{out}[/bold].")


def print_stats(cohort: Cohort, title: str) -> None:
    """Print :meth:`Cohort.stats` as rich tables."""
    stats = cohort.stats()
    overview = Table(title=title, show_header=False)
    overview.add_row("patients", f"{stats.n_patients:,}")
    overview.add_row("visits", f"{stats.n_visits:,}")
    overview.add_row("events", f"{stats.n_events:,}")
    vpp = stats.visits_per_patient
    overview.add_row(
        "visits per patient",
        f"mean {vpp.mean:.2f}, median {vpp.median:g}, p90 {vpp.p90:g}, max {vpp.max:g}",
    )
    overview.add_row(
        "visit times", "placeholders" if stats.times_are_placeholders else "real"
    )
    for name, counts in stats.categorical.items():
        top = sorted(counts.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k} {v:,}" for k, v in top[:8])
        overview.add_row(
            name, shown + (f" (+{len(top) - 8} more)" if len(top) > 8 else "")
        )
    for name, dist in stats.numerical.items():
        overview.add_row(
            name, f"mean {dist.mean:.1f}, range {dist.min:.1f} to {dist.max:.1f}"
        )
    console.print(overview)
    table = Table(title="Codes per visit, by modality")
    for column in (
        "modality",
        "vocabulary",
        "visits with it",
        "mean",
        "median",
        "p90",
        "max",
    ):
        table.add_column(column, justify="left" if column == "modality" else "right")
    for m in cohort.schema.modalities:
        d = stats.codes_per_visit[m]
        table.add_row(
            m,
            f"{stats.vocabulary[m]:,}",
            f"{stats.visits_with_modality[m]:.0%}",
            f"{d.mean:.2f}",
            f"{d.median:g}",
            f"{d.p90:g}",
            f"{d.max:g}",
        )
    console.print(table)


def main() -> None:
    """Entry point of the ``ehrgen`` console script."""
    try:
        app()
    except EhrgenError as error:
        if _state["debug"]:
            raise
        message = " ".join(str(error).split())
        errors.print(Text.assemble(("error: ", "red"), message), soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
