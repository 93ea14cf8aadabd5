"""Handing freed memory back to the system, shared by the readers that work a part
of the input at a time (MEDS shard by shard, MIMIC block by block)."""

from __future__ import annotations

from typing import Any


def release_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; a
    no-op elsewhere): a shard's working set lives on the heap, and without this the
    memory it freed would still count while the next shard is read."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None  # malloc_trim, False where there is none
