"""What the ehrgen commands share: consoles, option types, reading and writing."""

from __future__ import annotations

import contextlib
import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ehrgen.errors import ConfigError

if TYPE_CHECKING:
    from ehrgen.data import Cohort

console = Console()
errors = Console(stderr=True)

Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace the output if it exists.")
]


class Preset(str, enum.Enum):
    tiny = "tiny"
    small = "small"
    paper = "paper"


class OutputFormat(str, enum.Enum):
    meds = "meds"
    jsonl = "jsonl"
    omop = "omop"


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
    int | None,
    typer.Option(
        "--max-visits",
        help="Visits per patient, at most (default: the training cohort's longest).",
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Patients per batch.")]
TrainingBatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size",
        help="Training targets per step (one-pass PromptEHR: whole patients, up to "
        "about this many visits).",
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Format = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        help="Output format (omop: a folder of Parquet tables, or a DuckDB file when "
        "--out ends with .duckdb).",
    ),
]


def _write(cohort: Cohort, out: Path, fmt: OutputFormat, overwrite: bool) -> None:
    if fmt is OutputFormat.jsonl:
        from ehrgen.data.formats.jsonl import write_jsonl

        write_jsonl(cohort, out, overwrite=overwrite)
    elif fmt is OutputFormat.omop:
        from ehrgen.data.formats.omop_writer import write_omop

        write_omop(cohort, out, overwrite=overwrite)
    else:
        from ehrgen.data.formats.meds import write_meds

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


def _read(src: Path, kind: str | None, split: str | None = None) -> Cohort:
    if kind is None:
        kind = {".jsonl": "jsonl", ".pkl": "promptehr-pickle"}.get(src.suffix, "meds")
    if not src.exists():
        raise ConfigError(f"{src}: no such file or folder.")
    if kind == "meds":
        from ehrgen.data.formats.meds import read_meds

        return read_meds(src, split=split)
    if split is not None:
        raise ConfigError("--split applies to MEDS folders only.")
    if kind == "jsonl":
        from ehrgen.data.formats.jsonl import read_jsonl

        return read_jsonl(src)
    from ehrgen.data.formats.promptehr_pickle import read_promptehr_pickle

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
    from ehrgen.data.formats.meds import write_meds

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
