"""``ehrgen data``: build, import, export and inspect cohorts."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

from ehrgen.cli import data_app
from ehrgen.cli._common import (
    Overwrite,
    _read,
    _write_splits,
    console,
    print_stats,
)


class ImportFormat(str, enum.Enum):
    meds = "meds"
    promptehr_pickle = "promptehr-pickle"
    jsonl = "jsonl"


class ExportFormat(str, enum.Enum):
    jsonl = "jsonl"
    meds = "meds"


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
