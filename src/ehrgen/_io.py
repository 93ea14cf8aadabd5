"""Atomic writes: a crash never leaves a half-written file or folder looking complete.

Everything ehrgen writes goes to a temporary name in the destination's folder (so the
final rename stays on one file system) and is renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from ehrgen.errors import EhrgenError

__all__ = ["OutputExistsError", "atomic_directory", "atomic_file", "write_json"]


class OutputExistsError(EhrgenError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


def _check_free(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; pass overwrite=True (--overwrite on the command "
            f"line) to replace it, or choose another output path."
        )


def _temporary_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], overwrite: bool = False
) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` when the block succeeds.

    On an exception the temporary folder is removed and ``path`` is left as it was.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "cohort"
        >>> with atomic_directory(out) as tmp:
        ...     _ = (tmp / "a.txt").write_text("hello")
        >>> (out / "a.txt").read_text()
        'hello'
    """
    path = Path(path)
    _check_free(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _check_free(path, overwrite)
    if path.exists():
        # Move the old output aside first, so that some complete version always exists.
        old = _temporary_sibling(path)
        os.replace(path, old)
        os.replace(tmp, path)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], overwrite: bool = False
) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``path`` when the block succeeds."""
    path = Path(path)
    _check_free(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        _check_free(path, overwrite)
        if tmp.exists():
            # Flush before the rename, so a power cut cannot leave an empty file.
            with open(tmp, "rb+") as file:
                os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], data: object) -> None:
    """Write ``data`` as indented UTF-8 JSON, atomically, replacing ``path``."""
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
