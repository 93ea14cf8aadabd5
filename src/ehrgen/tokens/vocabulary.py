"""A vocabulary from a file, not from patients: a public code list (a terminology,
a MEDS ``codes.parquet``, another model's ``tokenizer.json``) that a model can use
in place of the codes of its training cohort. Differentially private training then
spends no budget on its vocabulary.

Accepted files:

* ``tokenizer.json`` (written by :meth:`CodeTokenizer.save`);
* a Parquet or CSV table with columns ``modality`` and ``code``;
* a MEDS ``codes.parquet`` (or any table with a ``code`` column alone): each code
  ``PREFIX//VALUE`` goes to the modality its prefix names (the MEDS reader's
  mapping, or the modality's own name in capitals); other codes are skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ehrgen.errors import SchemaError
from ehrgen.tokens.tokenizer import CodeTokenizer

__all__ = ["read_vocabulary"]

logger = logging.getLogger(__name__)

_SEPARATOR = "//"


def read_vocabulary(
    path: str | os.PathLike[str],
    modalities: Sequence[str],
    prefix_to_modality: Mapping[str, str] | None = None,
) -> CodeTokenizer:
    """The tokenizer of the codes a file lists, for ``modalities`` (see the module
    docstring). Errors name the file, and the row or column at fault."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: no such vocabulary file.")
    if path.suffix == ".json":
        tokenizer = CodeTokenizer.load(path)
        if tuple(tokenizer.modalities) != tuple(modalities):
            raise SchemaError(
                f"{path}: its modalities are {list(tokenizer.modalities)}; the cohort "
                f"has {list(modalities)}."
            )
        return tokenizer
    table = _read_table(path)
    columns = set(table.column_names)
    if "code" not in columns:
        raise SchemaError(
            f"{path}: no 'code' column (columns: {sorted(columns)}); give a table "
            f"with 'modality' and 'code', or a MEDS codes.parquet."
        )
    codes = table.column("code").to_pylist()
    if "modality" in columns:
        pairs = list(zip(table.column("modality").to_pylist(), codes))
    else:
        prefixes = _prefixes(modalities, prefix_to_modality)
        pairs = [(_modality_of(code, prefixes), code) for code in codes]
        pairs = [(m, c.split(_SEPARATOR, 1)[1]) for m, c in pairs if m is not None]
    by_modality: dict[str, list[str]] = {m: [] for m in modalities}
    seen: set[tuple[str, str]] = set()
    skipped = 0
    for row, (modality, code) in enumerate(pairs):
        if not isinstance(code, str) or not code:
            raise SchemaError(f"{path}, row {row}, field 'code': empty or not text.")
        if modality not in by_modality:
            skipped += 1
            continue
        if (modality, code) not in seen:
            seen.add((modality, code))
            by_modality[modality].append(code)
    if skipped or len(pairs) < len(codes):
        logger.info(
            "%s: %d codes of other modalities skipped.",
            path,
            skipped + len(codes) - len(pairs),
        )
    empty = [m for m, c in by_modality.items() if not c]
    if len(empty) == len(by_modality):
        raise SchemaError(
            f"{path}: no code of the cohort's modalities {list(modalities)}."
        )
    return CodeTokenizer(modalities, by_modality)


def _read_table(path: Path):
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if path.suffix in (".csv", ".tsv"):
            import pyarrow as pa
            import pyarrow.csv as pcsv

            parse = pcsv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ",")
            # Codes such as "0389" stay text, never numbers.
            text = {"code": pa.string(), "modality": pa.string()}
            convert = pcsv.ConvertOptions(column_types=text)
            return pcsv.read_csv(path, parse_options=parse, convert_options=convert)
    except (OSError, ValueError) as error:  # pyarrow's errors subclass these
        raise SchemaError(f"{path}: unreadable vocabulary file ({error}).") from None
    raise SchemaError(
        f"{path}: a vocabulary file is .json (tokenizer), .parquet, .csv or .tsv."
    )


def _prefixes(
    modalities: Sequence[str], prefix_to_modality: Mapping[str, str] | None
) -> dict[str, str]:
    from ehrgen.data.formats.meds import DEFAULT_PREFIX_TO_MODALITY

    mapping = {m.upper(): m for m in modalities}
    mapping.update(prefix_to_modality or DEFAULT_PREFIX_TO_MODALITY)
    return mapping


def _modality_of(code: object, prefixes: Mapping[str, str]) -> str | None:
    if not isinstance(code, str) or _SEPARATOR not in code:
        return None
    return prefixes.get(code.split(_SEPARATOR, 1)[0])
