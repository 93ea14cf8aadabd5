"""``ehrgen data``: build, import, export and inspect cohorts."""

from __future__ import annotations

import enum
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ehrgen.cli import data_app
from ehrgen.cli._common import (
    OutputFormat,
    Overwrite,
    _read,
    _write,
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
    omop = "omop"


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
    prefix_map: Annotated[
        list[str] | None,
        typer.Option(
            "--prefix-map",
            help="MEDS code prefixes to modalities, replacing the default map: "
            "DIAGNOSIS=diagnosis,MEDICATION=drug (commas or repeated).",
        ),
    ] = None,
    unknown_prefixes: Annotated[
        str | None,
        typer.Option(
            "--unknown-prefixes",
            help="MEDS codes whose prefix maps to no modality: error (default) or "
            "drop.",
        ),
    ] = None,
    visit_id_column: Annotated[
        str | None,
        typer.Option(
            "--visit-id-column",
            help="MEDS: one visit per value of this column (e.g. hadm_id), not per "
            "timestamp.",
        ),
    ] = None,
    visit_by: Annotated[
        str | None,
        typer.Option(
            "--visit-by",
            help="MEDS: how events become visits: time (one per timestamp, default), "
            "id (--visit-id-column), admission (admission to discharge codes) or "
            "window:24h (events less than the window apart).",
        ),
    ] = None,
    admission_codes: Annotated[
        str | None,
        typer.Option(
            "--admission-codes",
            help="MEDS with --visit-by admission: the admission and discharge "
            "prefixes [default: HOSPITAL_ADMISSION,HOSPITAL_DISCHARGE].",
        ),
    ] = None,
    static_prefix: Annotated[
        list[str] | None,
        typer.Option(
            "--static-prefix",
            help="MEDS prefixes whose codes are baseline features, timed or not "
            "(GENDER,RACE; commas or repeated).",
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
    meds_flags = {
        "--prefix-map": prefix_map,
        "--unknown-prefixes": unknown_prefixes,
        "--visit-id-column": visit_id_column,
        "--visit-by": visit_by,
        "--admission-codes": admission_codes,
        "--static-prefix": static_prefix,
    }
    flags = ", ".join(k for k, v in meds_flags.items() if v is not None)
    if flags and kind is not ImportFormat.meds:
        raise ConfigError(f"{flags} apply to meds imports only. Got {kind.value}.")
    meds_options = _meds_options(
        prefix_map, unknown_prefixes, visit_id_column, static_prefix
    )
    meds_options.update(_visit_options(visit_by, admission_codes))
    if meds_options:
        reader_options = meds_options
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


_NAME = re.compile(r"[a-z][a-z0-9_]*")  # modality and feature names


def _meds_options(
    prefix_map: list[str] | None,
    unknown_prefixes: str | None,
    visit_id_column: str | None,
    static_prefix: list[str] | None,
) -> dict[str, Any]:
    """The keyword arguments of read_meds that the MEDS options ask for."""
    options: dict[str, Any] = {}
    if prefix_map is not None:
        options["prefix_to_modality"] = _prefix_map(prefix_map)
    if unknown_prefixes is not None:
        if unknown_prefixes not in ("error", "drop"):
            raise ConfigError(
                f"--unknown-prefixes must be 'error' or 'drop'. Got "
                f"{unknown_prefixes!r} instead."
            )
        options["unknown_prefixes"] = unknown_prefixes
    if visit_id_column is not None:
        if not visit_id_column.strip():
            raise ConfigError(
                "--visit-id-column must name a column of the MEDS shards (hadm_id). "
                "Got an empty name instead."
            )
        options["visit_id_column"] = visit_id_column.strip()
    if static_prefix is not None:
        options["static_prefixes"] = _static_prefixes(static_prefix)
    return options


def _visit_options(visit_by: str | None, admission_codes: str | None) -> dict[str, Any]:
    """read_meds's ``visit_by`` and ``admission_prefixes`` (read_meds checks them)."""
    options: dict[str, Any] = {}
    if visit_by is not None:
        options["visit_by"] = visit_by.strip()
    if admission_codes is not None:
        pair = tuple(_items([admission_codes]))
        if len(pair) != 2:
            raise ConfigError(
                f"--admission-codes must be two prefixes, the admission's and the "
                f"discharge's (ADMISSION,DISCHARGE). Got {admission_codes!r} instead."
            )
        options["admission_prefixes"] = pair
    return options


def _items(texts: list[str]) -> list[str]:
    """The comma-separated items of a repeated option, stripped, empty ones left out."""
    return [item.strip() for text in texts for item in text.split(",") if item.strip()]


def _prefix_map(texts: list[str]) -> dict[str, str]:
    """``PREFIX=modality`` pairs, each prefix mapped once."""
    mapping: dict[str, str] = {}
    items = _items(texts)
    for item in items:
        prefix, sep, modality = (part.strip() for part in item.partition("="))
        if not sep or not prefix or "//" in prefix or not _NAME.fullmatch(modality):
            raise ConfigError(
                f"--prefix-map must be PREFIX=modality pairs, the modality a "
                f"lower-case identifier (DIAGNOSIS=diagnosis,MEDICATION=drug). Got "
                f"{item!r} instead."
            )
        if mapping.get(prefix, modality) != modality:
            raise ConfigError(
                f"--prefix-map maps {prefix!r} to both {mapping[prefix]!r} and "
                f"{modality!r}; map each prefix once."
            )
        mapping[prefix] = modality
    if not mapping:
        raise ConfigError(
            "--prefix-map must hold at least one PREFIX=modality pair "
            "(DIAGNOSIS=diagnosis). Got none."
        )
    return mapping


def _static_prefixes(texts: list[str]) -> list[str]:
    """Prefixes whose lower-case forms name baseline features."""
    prefixes = _items(texts)
    for prefix in prefixes:
        if not _NAME.fullmatch(prefix.lower()):
            raise ConfigError(
                f"--static-prefix takes code prefixes (GENDER, not GENDER//F), whose "
                f"lower-case form names the feature and must be an identifier. Got "
                f"{prefix!r} instead."
            )
    if not prefixes:
        raise ConfigError("--static-prefix must name a prefix (GENDER). Got none.")
    return list(dict.fromkeys(prefixes))


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
    if kind is ImportFormat.meds and reader_options:
        from ehrgen.data.formats.meds import read_meds

        if not src.exists():
            raise ConfigError(f"{src}: no such file or folder.")
        cohort = read_meds(src, **reader_options)
    else:
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
    unused = cohort.metadata.get("unused_events") or []
    if unused:
        console.print("Not used while reading:")
    for item in unused:
        console.print(
            f"  {item['prefix']} {item['events']:,} events: {item['reason']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
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
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output file or folder (omop: a folder of Parquet tables, or a "
            "DuckDB file ending with .duckdb).",
        ),
    ],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="Output format.")
    ] = ExportFormat.jsonl,
    overwrite: Overwrite = False,
) -> None:
    """Export a MEDS cohort (JSONL: one patient per line; MEDS; OMOP CDM v5.4)."""
    cohort = _read(src, "meds")
    _write(cohort, out, OutputFormat(fmt.value), overwrite)


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
