"""``ehrgen data``: build, import, export and inspect cohorts."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ehrgen.cli import data_app
from ehrgen.cli._common import (
    Overwrite,
    _read,
    _write_splits,
    console,
    print_stats,
)
from ehrgen.errors import ConfigError

if TYPE_CHECKING:
    from ehrgen.data import Cohort
    from ehrgen.data.preprocess import Preprocessing


class ImportFormat(str, enum.Enum):
    meds = "meds"
    promptehr_pickle = "promptehr-pickle"
    jsonl = "jsonl"
    mimic3 = "mimic3"
    mimic4 = "mimic4"
    omop = "omop"


class DrugCode(str, enum.Enum):
    name = "name"
    ndc = "ndc"


class LabCode(str, enum.Enum):
    itemid = "itemid"
    label = "label"


class InvalidRows(str, enum.Enum):
    error = "error"
    drop = "drop"


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
    modalities: Annotated[
        str | None,
        typer.Option(
            "--modalities", help="Keep only these, e.g. diagnosis,procedure,drug,lab."
        ),
    ] = None,
    icd9_3digit: Annotated[
        bool,
        typer.Option(
            "--icd9-3digit",
            help="ICD-9 diagnoses to 3-digit categories, procedures to 2-digit.",
        ),
    ] = False,
    top_k_codes: Annotated[
        str | None,
        typer.Option(
            "--top-k-codes",
            help="Keep the N most frequent codes per modality: N, "
            "diagnosis=N,lab=M..., or 'paper' (1071/668/500/185).",
        ),
    ] = None,
    min_code_count: Annotated[
        int, typer.Option("--min-code-count", help="Drop codes seen fewer times.")
    ] = 1,
    min_visits: Annotated[
        int, typer.Option("--min-visits", help="Drop patients with fewer visits.")
    ] = 1,
    drug_code: Annotated[
        DrugCode | None,
        typer.Option("--drug-code", help="MIMIC drugs by name or NDC."),
    ] = None,
    lab_code: Annotated[
        LabCode | None,
        typer.Option("--lab-code", help="MIMIC labs by ITEMID or label."),
    ] = None,
    orphan_labs: Annotated[
        bool | None,
        typer.Option(
            "--assign-orphan-labs/--drop-orphan-labs",
            help="MIMIC labs without an admission id: assign them by time (default) "
            "or drop them.",
        ),
    ] = None,
    invalid_rows: Annotated[
        InvalidRows | None,
        typer.Option(
            "--invalid-rows",
            help="MIMIC rows whose values do not parse: error or drop.",
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Import a cohort (MIMIC-III, MIMIC-IV, OMOP, MEDS, the reference PromptEHR
    pickle, JSONL) as MEDS, with the paper's preprocessing as options."""
    options = _preprocessing(
        modalities, icd9_3digit, top_k_codes, min_code_count, min_visits
    )
    reader_options = {
        "drug_code": drug_code and drug_code.value,
        "lab_code": lab_code and lab_code.value,
        "assign_orphan_labs": orphan_labs,
        "invalid_rows": invalid_rows and invalid_rows.value,
    }
    reader_options = {k: v for k, v in reader_options.items() if v is not None}
    if reader_options and kind not in (ImportFormat.mimic3, ImportFormat.mimic4):
        flags = ", ".join("--" + k.replace("_", "-") for k in reader_options)
        raise ConfigError(
            f"{flags} apply to mimic3 and mimic4 imports only. Got {kind.value}."
        )
    with console.status(f"Reading {src}..."):
        cohort = _import(kind, src, options, reader_options)
    _print_drops(cohort)
    _write_splits(cohort, out, split, seed, overwrite)


def _preprocessing(
    modalities: str | None,
    icd9_3digit: bool,
    top_k_codes: str | None,
    min_code_count: int,
    min_visits: int,
) -> Preprocessing | None:
    """The options of the command line, or None when they keep everything."""
    from ehrgen.data.preprocess import Preprocessing

    names = None
    if modalities is not None:
        names = tuple(m.strip() for m in modalities.split(",") if m.strip())
    options = Preprocessing(
        modalities=names,
        icd9_3digit=icd9_3digit,
        top_k_codes=_top_k(top_k_codes),
        min_code_count=min_code_count,
        min_visits=min_visits,
    )
    return None if options.is_noop else options


def _top_k(text: str | None) -> int | dict[str, int] | None:
    """``N``, ``modality=N,...`` or ``paper``."""
    from ehrgen.data.preprocess import PAPER_TOP_K

    if text is None:
        return None
    text = text.strip()
    if text == "paper":
        return dict(PAPER_TOP_K)
    try:
        if "=" not in text:
            return int(text)
        pairs = (item.split("=") for item in text.split(","))
        return {name.strip(): int(value) for name, value in pairs}
    except ValueError:
        raise ConfigError(
            f"--top-k-codes must be a number, modality=number pairs separated by "
            f"commas (diagnosis=1071,lab=185), or 'paper'. Got {text!r} instead."
        ) from None


def _import(
    kind: ImportFormat,
    src: Path,
    options: Preprocessing | None,
    reader_options: dict[str, Any],
) -> Cohort:
    if kind in (ImportFormat.mimic3, ImportFormat.mimic4):
        if kind is ImportFormat.mimic3:
            from ehrgen.data.formats.mimic3 import read_mimic3 as reader
        else:
            from ehrgen.data.formats.mimic4 import read_mimic4 as reader
        return reader(src, preprocessing=options, **reader_options)
    if kind is ImportFormat.omop:
        try:
            from ehrgen.data.formats.omop import read_omop
        except ImportError as error:
            raise ConfigError(
                f"The OMOP reader is not available in this installation ({error})."
            ) from None
        return read_omop(src, preprocessing=options)
    cohort = _read(src, kind.value)
    if options is None:
        return cohort
    from ehrgen.data.preprocess import preprocess

    return preprocess(cohort, options, source=str(src))


def _print_drops(cohort: Cohort) -> None:
    """Print what the reader and the preprocessing dropped (non-zero counts)."""
    parts = _nonzero(cohort.metadata.get("dropped", {}))
    if parts:
        console.print("Dropped while reading: " + "; ".join(parts) + ".")
    report = cohort.metadata.get("preprocessing")
    if not report:
        return
    before, after = report["before"], report["after"]
    console.print(
        f"Preprocessing kept {after['patients']:,} of {before['patients']:,} patients, "
        f"{after['visits']:,} of {before['visits']:,} visits, {after['events']:,} of "
        f"{before['events']:,} events; codes per modality: "
        + ", ".join(f"{m} {n:,}" for m, n in after["codes"].items())
        + "."
    )
    parts = _nonzero(report["dropped"].get("modalities", {})) + _nonzero(
        {k: v for k, v in report["dropped"].items() if k != "modalities"}
    )
    if parts:
        console.print("Dropped by preprocessing: " + "; ".join(parts) + ".")


def _nonzero(counts: dict[str, Any]) -> list[str]:
    """``name n`` for the non-zero counts, ``name: inner...`` for nested ones."""
    parts = []
    skip = ("rows", "events", "rows_assigned_by_time")
    for key, value in counts.items():
        if isinstance(value, dict):
            inner = [
                f"{k.replace('_', ' ')} {v:,}"
                for k, v in value.items()
                if v and k not in skip
            ]
            if inner:
                parts.append(f"{key}: " + ", ".join(inner))
        elif isinstance(value, int) and value:
            parts.append(f"{key.replace('_', ' ')} {value:,}")
    return parts


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
        from ehrgen.data.formats.jsonl import write_jsonl

        write_jsonl(cohort, out, overwrite=overwrite)
    else:
        from ehrgen.data.formats.meds import write_meds

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
