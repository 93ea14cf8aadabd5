"""The table machinery behind :func:`ehrgen.data.formats.omop.read_omop`: the CDM
tables and columns read, where they are read from, how their values are checked, and the
patients' baseline features.

OMOP tables are read from a DuckDB database file or from a folder of CSV / Parquet
files (``person.csv``, ``measurement.parquet``, ``drug_exposure/*.parquet``...);
table and column names are matched case-insensitively. Either way a table arrives as a
Polars frame of the columns asked for only, with lower-case names and a ``_row``
column (its position in the table, for error messages), and is then typed: each column
is cast to what the CDM says it holds (an integer id, a timestamp, a string), and a
value that does not cast, or a column of the wrong type, is a
:class:`~ehrgen.errors.SchemaError` naming the table, the column, an example row and
a fix.

CSV files are read with every column as text and cast here, so that what a CSV holds
and what a typed store holds (Parquet, DuckDB) are checked by the same rules.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from ehrgen.errors import ConfigError, SchemaError

Kind = Literal["int", "float", "time", "str"]
ROW = "_row"

# Timestamp spellings accepted in text columns, tried in this order (those with no
# time of day are dates).
TIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d",
    "%Y%m%d",
)
_SAMPLE = 1000  # values looked at to choose a text column's time formats
AGE_CAP = 90.0
_GENDERS = {8507: "M", 8532: "F"}
_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "time": "a date or timestamp (YYYY-MM-DD[ HH:MM:SS])",
    "str": "a string",
}


@dataclass(frozen=True)
class Column:
    """One column of a CDM table: its name, what it holds, and whether it must be
    there (optional columns that are absent read as nulls)."""

    name: str
    kind: Kind
    required: bool = True


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class ClinicalTable:
    """A CDM table read as one modality: its name, column prefix and date column
    (the datetime column is the date column's name + ``time``)."""

    table: str
    prefix: str
    date: str

    @property
    def datetime(self) -> str:
        return f"{self.date}time"


CLINICAL_TABLES: dict[str, ClinicalTable] = {
    "diagnosis": ClinicalTable(
        "condition_occurrence", "condition", "condition_start_date"
    ),
    "procedure": ClinicalTable("procedure_occurrence", "procedure", "procedure_date"),
    "drug": ClinicalTable("drug_exposure", "drug", "drug_exposure_start_date"),
    "lab": ClinicalTable("measurement", "measurement", "measurement_date"),
}

PERSON_COLUMNS = (
    Column("person_id", "int"),
    Column("gender_concept_id", "int"),
    Column("year_of_birth", "int"),
    Column("month_of_birth", "int", required=False),
    Column("day_of_birth", "int", required=False),
    Column("birth_datetime", "time", required=False),
    Column("race_concept_id", "int"),
)
VISIT_COLUMNS = (
    Column("visit_occurrence_id", "int"),
    Column("person_id", "int"),
    Column("visit_start_date", "time"),
    Column("visit_start_datetime", "time", required=False),
)
CONCEPT_COLUMNS = (
    Column("concept_id", "int"),
    Column("concept_name", "str"),
    Column("vocabulary_id", "str"),
)


# --------------------------------------------------------------------------- sources


class DuckDBTables:
    """The tables of a DuckDB database file, opened read-only."""

    def __init__(self, path: Path, db_schema: str | None) -> None:
        try:
            import duckdb
        except ImportError:
            raise ConfigError(
                f"{path}: reading an OMOP DuckDB database needs the duckdb package, "
                f'which is not installed. Install it with: pip install "ehrgen[omop]" '
                f"(or export the tables to a folder of CSV / Parquet files)."
            ) from None
        self.where = str(path)
        try:
            self._con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as error:
            raise SchemaError(
                f"{path}: not a readable DuckDB database ({error}). Give a DuckDB "
                f"file or a folder of OMOP CSV / Parquet tables."
            ) from None
        self._catalog = self._con.execute("SELECT current_database()").fetchone()[0]
        listed = self._con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database()"
        ).fetchall()
        self._tables = _pick_schema(listed, db_schema, self.where)
        self._columns: dict[str, dict[str, str]] = {}

    def names(self) -> list[str]:
        return sorted(self._tables)

    def schema(self, table: str) -> dict[str, pl.DataType]:
        frame = self._con.sql(f"SELECT * FROM {self._qualified(table)} LIMIT 0").pl()
        self._columns[table] = {name.lower(): name for name in frame.columns}
        return {name.lower(): dtype for name, dtype in frame.schema.items()}

    def scan(
        self, table: str, columns: Sequence[str], keep: tuple[str, np.ndarray] | None
    ) -> pl.LazyFrame:
        actual = self._columns[table]
        select = ", ".join(f"{_quote(actual[c])} AS {_quote(c)}" for c in columns)
        sql = f"SELECT {select} FROM {self._qualified(table)}"
        if keep is None:
            frame = self._con.sql(sql).pl()
        else:
            column, ids = keep
            ids_table = pl.DataFrame({"id": ids}, schema={"id": pl.Int64}).to_arrow()
            self._con.register("ehrgen_keep_ids", ids_table)
            try:
                frame = self._con.sql(
                    f"{sql} WHERE {_quote(actual[column])} IN "
                    f"(SELECT id FROM ehrgen_keep_ids)"
                ).pl()
            finally:
                self._con.unregister("ehrgen_keep_ids")
        return frame.lazy().with_row_index(ROW)

    def describe(self, table: str) -> str:
        return f"{self.where}, table {table!r}"

    def locate(self, table: str, row: int) -> str:
        return f"{self.where}, table {table!r}, row {row}"

    def close(self) -> None:
        self._con.close()

    def _qualified(self, table: str) -> str:
        schema, name = self._tables[table]
        return f"{_quote(self._catalog)}.{_quote(schema)}.{_quote(name)}"


class FolderTables:
    """A folder of CSV (optionally gzipped) or Parquet files, one per table, or one
    sub-folder of Parquet files per table; Parquet wins when both exist."""

    _SUFFIXES = (".parquet", ".csv", ".csv.gz")

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        found: dict[str, Path] = {}
        for entry in sorted(path.iterdir()):
            name = entry.name.lower()
            if entry.is_dir() and any(entry.glob("*.parquet")):
                found.setdefault(name, entry)
                continue
            for suffix in self._SUFFIXES:
                if entry.is_file() and name.endswith(suffix):
                    table = name[: -len(suffix)]
                    if table not in found or suffix == ".parquet":
                        found[table] = entry
        self._files = found

    def names(self) -> list[str]:
        return sorted(self._files)

    def schema(self, table: str) -> dict[str, pl.DataType]:
        return dict(self._frame(table).collect_schema())

    def scan(
        self, table: str, columns: Sequence[str], keep: tuple[str, np.ndarray] | None
    ) -> pl.LazyFrame:
        return self._frame(table).select(columns).with_row_index(ROW)

    def describe(self, table: str) -> str:
        return f"{self._files[table]} (table {table!r})"

    def locate(self, table: str, row: int) -> str:
        path = self._files[table]
        if path.name.lower().endswith((".csv", ".csv.gz")):
            return f"{path}, line {row + 2}"
        return f"{path}, row {row}"

    def close(self) -> None:
        pass

    def _frame(self, table: str) -> pl.LazyFrame:
        path = self._files[table]
        name = path.name.lower()
        try:
            if path.is_dir():
                frame = pl.scan_parquet(path / "*.parquet")
            elif name.endswith(".parquet"):
                frame = pl.scan_parquet(path)
            elif name.endswith(".gz"):
                frame = pl.read_csv(path, infer_schema=False).lazy()
            else:
                frame = pl.scan_csv(path, infer_schema=False)
            names = frame.collect_schema().names()
        except (pl.exceptions.PolarsError, OSError) as error:
            raise SchemaError(f"{path}: not a readable table ({error}).") from None
        lower = [n.lower() for n in names]
        if len(set(lower)) != len(lower):
            raise SchemaError(
                f"{path}: two columns share a name up to case ({names}); column names "
                f"are matched case-insensitively. Rename one."
            )
        return frame.rename(dict(zip(names, lower)))


def open_tables(
    source: str | os.PathLike[str], db_schema: str | None
) -> DuckDBTables | FolderTables:
    """The tables of ``source``: a folder of files, or else a DuckDB database file."""
    path = Path(source)
    if path.is_dir():
        if db_schema is not None:
            raise ConfigError(
                f"The 'db_schema' parameter of read_omop applies to DuckDB databases "
                f"only. Got {db_schema!r} with the folder {path}; drop it."
            )
        return FolderTables(path)
    if not path.is_file():
        raise SchemaError(
            f"{path}: no such file or folder. Give a DuckDB database file or a folder "
            f"of OMOP CSV / Parquet tables."
        )
    return DuckDBTables(path, db_schema)


def _pick_schema(
    listed: list[tuple[str, str]], db_schema: str | None, where: str
) -> dict[str, tuple[str, str]]:
    """Table name (lower case) -> (schema, name), from one database schema."""
    schemas = sorted({s for s, _ in listed})
    if db_schema is None:
        chosen = "main" if "main" in schemas or not schemas else schemas[0]
        if len(schemas) > 1 and not any(
            s == chosen and n.lower() == "person" for s, n in listed
        ):
            raise SchemaError(
                f"{where}: the database has several schemas ({schemas}) and "
                f"{chosen!r} holds no person table. Name the CDM schema with "
                f"db_schema=."
            )
    else:
        matches = [s for s in schemas if s.lower() == db_schema.lower()]
        if not matches:
            raise SchemaError(
                f"{where}: no database schema {db_schema!r}; schemas found: {schemas}."
            )
        chosen = matches[0]
    return {n.lower(): (s, n) for s, n in listed if s == chosen}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- typing


def read_table(
    tables: DuckDBTables | FolderTables,
    table: str,
    columns: Sequence[Column],
    *,
    keep: tuple[str, np.ndarray] | None = None,
) -> pl.LazyFrame:
    """The typed columns of ``table`` (ids Int64, times Datetime[us], text String;
    absent optional columns as nulls), plus ``_row``; with ``keep=(column, ids)``, only
    the rows whose ``column`` is one of ``ids``.

    Raises:
        SchemaError: a required column is missing, a column has the wrong type, or a
            value does not parse (naming the table, column and an example row).
    """
    found = tables.schema(table)
    for column in columns:
        if column.required and column.name not in found:
            raise SchemaError(
                f"{tables.describe(table)}: missing column {column.name!r} "
                f"({_EXPECTED[column.kind]}), which OMOP CDM v5.3/5.4 requires. "
                f"Columns found: {sorted(found)}. Add it (names match in any case)."
            )
    present = [c for c in columns if c.name in found]
    # DuckDB filters integer ids itself: only the rows kept are fetched.
    pushable = isinstance(tables, DuckDBTables) and keep and found[keep[0]].is_integer()
    pushed = keep if pushable else None
    frame = tables.scan(table, [c.name for c in present], pushed)
    casts = _checked_casts(frame, present, found, tables, table)
    typed = frame.select(
        pl.col(ROW),
        *[casts[c.name].alias(c.name) for c in present],
        *[
            pl.lit(None, dtype=_DTYPES[c.kind]).alias(c.name)
            for c in columns
            if c.name not in found
        ],
    )
    if keep is not None and pushed is None:
        column, ids = keep
        wanted = pl.DataFrame({column: ids}, schema={column: pl.Int64}).lazy()
        typed = typed.join(wanted, on=column, how="semi")
    return typed


_DTYPES: dict[str, Any] = {
    "int": pl.Int64,
    "float": pl.Float64,
    "time": pl.Datetime("us"),
    "str": pl.String,
}


def _checked_casts(
    frame: pl.LazyFrame,
    columns: Sequence[Column],
    found: dict[str, pl.DataType],
    tables: DuckDBTables | FolderTables,
    table: str,
) -> dict[str, pl.Expr]:
    """The cast of each column, once every value present is known to cast.

    A text time column is parsed with the formats its first values use (each format
    tried costs a parse of the whole column); should a later value need another one,
    the column is parsed with all of :data:`TIME_FORMATS`.
    """
    where = tables.describe(table)
    formats = {
        c.name: _time_formats(frame, c.name)
        for c in columns
        if c.kind == "time" and found[c.name] == pl.String
    }
    casts = {
        c.name: _cast(c, found[c.name], where, formats.get(c.name)) for c in columns
    }
    while (bad := _first_unparsed(frame, columns, found, casts)) is not None:
        column, row = bad
        value = row[column.name]
        widen = formats.get(column.name, TIME_FORMATS) != TIME_FORMATS
        if widen and _parses(pl.Series([value.strip()]), TIME_FORMATS):
            formats[column.name] = TIME_FORMATS
            casts[column.name] = _cast(column, pl.String, where, TIME_FORMATS)
            continue
        values = _example({c.name: row[c.name] for c in columns})
        raise SchemaError(
            f"{tables.locate(table, row[ROW])}, column {column.name!r}: value "
            f"{value!r} is not {_EXPECTED[column.kind]}. Example row: {values}. "
            f"Fix or blank the value (a blank is read as missing)."
        )
    return casts


def _time_formats(frame: pl.LazyFrame, name: str) -> tuple[str, ...]:
    """The formats of :data:`TIME_FORMATS` that parse some of the column's first
    values (all of them when none does)."""
    sample = (
        frame.select(_text(pl.col(name)).alias(name))
        .drop_nulls()
        .head(_SAMPLE)
        .collect()
        .to_series()
    )
    used = tuple(f for f in TIME_FORMATS if _parses(sample, (f,)))
    return used or TIME_FORMATS


def _parses(values: pl.Series, formats: Sequence[str]) -> bool:
    """Whether some of ``values`` parse with one of ``formats``."""
    return pl.select(_parse_time(pl.lit(values), formats).is_not_null().any()).item()


def _parse_time(text: pl.Expr, formats: Sequence[str]) -> pl.Expr:
    parsed = [
        text.str.to_datetime(f, time_unit="us", strict=False)
        if "%H" in f
        else text.str.to_date(f, strict=False).cast(pl.Datetime("us"))
        for f in formats
    ]
    return parsed[0] if len(parsed) == 1 else pl.coalesce(*parsed)


def _cast(
    column: Column,
    dtype: pl.DataType,
    where: str,
    formats: Sequence[str] | None = None,
) -> pl.Expr:
    """The expression casting ``column`` (non-strict: a failed cast gives null, and
    :func:`_first_unparsed` finds it)."""
    raw = pl.col(column.name)
    if dtype == pl.String:
        text = _text(raw)
        if column.kind == "int":
            return text.cast(pl.Int64, strict=False)
        if column.kind == "float":
            return text.cast(pl.Float64, strict=False)
        if column.kind == "time":
            return _parse_time(text, formats or TIME_FORMATS)
        return text
    if column.kind == "int" and dtype.is_integer():
        return raw.cast(pl.Int64)
    if column.kind == "float" and dtype.is_numeric():
        return raw.cast(pl.Float64)
    if column.kind == "int" and dtype.is_numeric():
        number = raw.cast(pl.Float64)
        return pl.when(number == number.round()).then(number.cast(pl.Int64))
    if column.kind == "time" and dtype == pl.Date:
        return raw.cast(pl.Datetime("us"))
    if column.kind == "time" and isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            raw = raw.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return raw.cast(pl.Datetime("us"))
    if column.kind == "str" and (dtype.is_integer() or dtype == pl.Categorical):
        return raw.cast(pl.String)
    raise SchemaError(
        f"{where}, column {column.name!r}: expected "
        f"{_EXPECTED[column.kind]}. Got type {dtype} instead. Fix the column's type "
        f"in the source (or export the table as CSV, whose text is parsed)."
    )


def _text(raw: pl.Expr) -> pl.Expr:
    """Text with surrounding blanks removed; blank text is null."""
    stripped = raw.str.strip_chars()
    return pl.when(stripped != "").then(stripped)


def _first_unparsed(
    frame: pl.LazyFrame,
    columns: Sequence[Column],
    found: dict[str, pl.DataType],
    casts: dict[str, pl.Expr],
) -> tuple[Column, dict[str, Any]] | None:
    """The first value present that does not cast: its column and its row."""
    # Text parsed as ids or times, and non-integer numbers as ids, can fail.
    checked = [
        c
        for c in columns
        if (found[c.name] == pl.String and c.kind != "str")
        or (c.kind == "int" and not found[c.name].is_integer())
    ]
    if not checked:
        return None
    failed = {
        c.name: _text(pl.col(c.name)).is_not_null() & casts[c.name].is_null()
        if found[c.name] == pl.String
        else pl.col(c.name).is_not_null() & casts[c.name].is_null()
        for c in checked
    }
    flags = [e.alias(f"_bad_{n}") for n, e in failed.items()]
    bad = (
        frame.with_columns(flags)
        .filter(pl.any_horizontal(list(failed.values())))
        .head(1)
        .collect()
    )
    if bad.height == 0:
        return None
    row = bad.row(0, named=True)
    return next(c for c in checked if row[f"_bad_{c.name}"]), row


def _example(row: dict[str, Any]) -> dict[str, Any]:
    """A row as it reads in a message: times in ISO format."""
    return {
        k: v.isoformat(sep=" ") if isinstance(v, datetime) else v
        for k, v in row.items()
    }


def check_unique(
    frame: pl.DataFrame, column: str, tables: DuckDBTables | FolderTables, table: str
) -> None:
    """Raise when a primary key repeats (nulls aside)."""
    counts = frame.filter(pl.col(column).is_not_null()).group_by(column).len()
    repeated = counts.filter(pl.col("len") > 1).sort(column).head(1)
    if repeated.height == 0:
        return
    key = repeated.item(0, column)
    rows = frame.filter(pl.col(column) == key).sort(ROW)
    example = _example({k: v for k, v in rows.row(1, named=True).items() if k != ROW})
    raise SchemaError(
        f"{tables.locate(table, rows.item(1, ROW))}, column {column!r}: duplicate "
        f"primary key {key} ({repeated.item(0, 'len')} rows). Example row: "
        f"{example}. Keep one row per {column} (deduplicate the table)."
    )


# --------------------------------------------------------------------------- person


def static_features(
    patient_ids: np.ndarray,
    first_visit: np.ndarray,
    persons: pl.DataFrame,
    concepts: pl.DataFrame | None,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]], dict[str, float]]:
    """Gender, race (category indices) and age of each patient, their categories,
    and the number of ages capped and unknown (no birth year, or a first visit
    before the birth date)."""
    rows = (
        pl.DataFrame({"person_id": patient_ids, "first": first_visit})
        .with_columns(pl.col("person_id").cast(pl.Int64))
        .join(persons, on="person_id", how="left")
        .sort("person_id")
    )
    names = (
        {}
        if concepts is None
        else dict(concepts.select("concept_id", "concept_name").iter_rows())
    )
    static, categorical = {}, {}
    for feature, known in (("gender", _GENDERS), ("race", {})):
        ids = rows[f"{feature}_concept_id"].fill_null(0)
        labels = {
            i: known.get(i) or names.get(i) or str(i)
            for i in ids.unique().to_list()
            if i != 0
        }
        categories = tuple(sorted(set(labels.values())))
        index = {i: categories.index(label) for i, label in labels.items()}
        static[feature] = ids.replace_strict(
            index, default=-1, return_dtype=pl.Int32
        ).to_numpy()
        categorical[feature] = categories
    years = rows.select(_completed_years()).to_series()
    unknown = years.is_null() | (years < 0)
    counts = {
        "age_cap": AGE_CAP,
        "ages_capped": int((years >= AGE_CAP).sum()),
        "ages_unknown": int(unknown.sum()),
    }
    # A first visit before the birth date contradicts it: the age is unknown.
    age = years.clip(upper_bound=AGE_CAP).cast(pl.Float32).set(unknown, None)
    static["age"] = age.fill_null(np.nan).to_numpy()
    return static, categorical, counts


def _completed_years() -> pl.Expr:
    """Whole years from birth to the first visit: the birth date is
    ``birth_datetime``, else ``year_of_birth`` with ``month_of_birth`` (1 July when
    unknown) and ``day_of_birth`` (the 15th when unknown); null when unknown."""
    exact, first = pl.col("birth_datetime"), pl.col("first")
    month, day = pl.col("month_of_birth"), pl.col("day_of_birth")

    def month_day(time: pl.Expr) -> pl.Expr:
        return time.dt.month().cast(pl.Int32) * 100 + time.dt.day().cast(pl.Int32)

    year = pl.when(pl.col("year_of_birth") > 0).then(pl.col("year_of_birth"))
    stated = pl.when(month.is_between(1, 12)).then(
        month * 100 + pl.when(day.is_between(1, 31)).then(day).otherwise(15)
    )
    born_year = pl.coalesce(exact.dt.year().cast(pl.Int64), year)
    born_day = pl.coalesce(month_day(exact), stated, 701)
    return first.dt.year().cast(pl.Int64) - born_year - (month_day(first) < born_day)
