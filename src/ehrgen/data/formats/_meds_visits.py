"""How a MEDS reader groups a subject's timed events into visits.

MEDS has no visit table. Datasets mark visits in one of three ways, and
:func:`~ehrgen.data.formats.meds.read_meds` takes each (``visit_by=``):

* ``"time"`` (default): one visit per distinct timestamp, as ehrgen writes them;
* ``"id"``: one visit per value of an admission-id column (``visit_id_column``);
* ``"admission"``: one visit per admission/discharge pair of codes (the MEDS
  example dataset's ``ADMISSION//CARDIAC`` ... ``DISCHARGE``, MEDS-Extract's
  ``HOSPITAL_ADMISSION//...`` ... ``HOSPITAL_DISCHARGE//...``), holding the events
  from the admission's time to its discharge's, both included (diagnoses are often
  stamped at discharge);
* ``"window:24h"``: a new visit starts at the first event more than the window after
  the current visit's first event (units ``s``, ``min``, ``h``, ``d``), for data with
  neither ids nor admissions.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from ehrgen.errors import ConfigError

from ._meds_columns import NO_VISIT, Rows

__all__ = ["VisitGrouping", "admission_visits", "parse_visit_by", "window_visits"]

DEFAULT_ADMISSION_PREFIXES = ("HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE")
_UNITS = {"s": "s", "min": "m", "h": "h", "d": "D"}


@dataclass(frozen=True)
class VisitGrouping:
    """A parsed ``visit_by``: ``kind`` with its window or admission prefixes."""

    kind: str  # "time" | "id" | "admission" | "window"
    window: np.timedelta64 | None = None
    admission_prefix: str = DEFAULT_ADMISSION_PREFIXES[0]
    discharge_prefix: str = DEFAULT_ADMISSION_PREFIXES[1]


def parse_visit_by(
    visit_by: str | None,
    visit_id_column: str | None,
    admission_prefixes: tuple[str, str] | None = None,
) -> VisitGrouping:
    """Check and parse the reader's visit options (errors name the CLI flags)."""
    text = (visit_by or ("id" if visit_id_column else "time")).strip()
    kind, _, argument = text.partition(":")
    if kind == "id" and not visit_id_column:
        raise ConfigError(
            "visit_by='id' needs the column that holds the visit id: pass "
            "visit_id_column= (--visit-id-column hadm_id)."
        )
    if visit_id_column and kind != "id":
        raise ConfigError(
            f"visit_id_column={visit_id_column!r} groups visits by id, but visit_by is "
            f"{text!r}: leave one of them out."
        )
    if admission_prefixes is not None and kind != "admission":
        raise ConfigError(
            "admission_prefixes (--admission-codes) is used only with "
            "visit_by='admission' (--visit-by admission)."
        )
    if kind in ("time", "id") and not argument:
        return VisitGrouping(kind)
    if kind == "admission" and not argument:
        start, end = admission_prefixes or DEFAULT_ADMISSION_PREFIXES
        if not start or not end or start == end:
            raise ConfigError(
                f"The admission and discharge prefixes must be two different, "
                f"non-empty prefixes (--admission-codes ADMISSION,DISCHARGE); got "
                f"{start!r} and {end!r}."
            )
        return VisitGrouping(kind, admission_prefix=start, discharge_prefix=end)
    if kind == "window":
        return VisitGrouping(kind, window=_duration(argument))
    raise ConfigError(
        f"visit_by (--visit-by) must be time, id, admission or window:DURATION "
        f"(window:24h); got {text!r}."
    )


def _duration(text: str) -> np.timedelta64:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|min|h|d)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(
            f"The visit window must be a positive duration with a unit s, min, h or d "
            f"(window:24h, window:2d); got {text!r}."
        )
    amount, unit = float(match.group(1)), _UNITS[match.group(2)]
    seconds = amount * np.timedelta64(1, unit) / np.timedelta64(1, "s")
    return np.timedelta64(round(seconds * 1_000_000), "us")


def window_visits(events: Rows, window: np.timedelta64) -> Rows:
    """``events`` with visit ids: per subject in time order, an event more than
    ``window`` after the one before it opens a new visit (so a stay with daily labs
    is one visit under ``window:36h``, however long it lasts)."""
    order = np.lexsort((events.time, events.subject))
    subject, time = events.subject[order], events.time[order]
    opens = np.ones(len(order), dtype=bool)
    opens[1:] = (subject[1:] != subject[:-1]) | (time[1:] - time[:-1] > window)
    ids = np.empty(len(order), dtype=np.int64)
    ids[order] = np.cumsum(opens) - 1
    return dataclasses.replace(events, visit=ids)


def admission_visits(
    events: Rows, prefixes: list[str], grouping: VisitGrouping
) -> tuple[Rows, np.ndarray]:
    """``events`` with visit ids from admission/discharge rows (a discharge has its
    stay's id; events in no stay have ``NO_VISIT``), and which rows are admissions
    or discharges.

    An event belongs to the subject's latest admission at or before its time, if that
    admission's discharge (the first discharge after it) is at or after the event; an
    admission with no discharge before the next admission lasts until it. An event at
    the time of one stay's discharge and the next one's admission goes to the next."""
    prefix = np.array(prefixes, dtype=object)[events.code]
    is_start = prefix == grouping.admission_prefix
    is_end = prefix == grouping.discharge_prefix
    if not is_start.any():
        raise ConfigError(
            f"No code has the admission prefix {grouping.admission_prefix!r}: no visit "
            f"can be formed. Name the dataset's admission and discharge prefixes with "
            f"admission_prefixes= (--admission-codes ADMISSION,DISCHARGE), or group "
            f"visits by id or by a time window (--visit-by)."
        )
    # At one time: discharges, then admissions, then the other events.
    rank = np.where(is_end, 0, np.where(is_start, 1, 2))
    order = np.lexsort((rank, events.time, events.subject))
    subject, time = events.subject[order], events.time[order]
    start, end = is_start[order], is_end[order]
    n = len(order)
    positions = np.arange(n)
    first_of_subject = np.maximum.accumulate(
        np.where(np.r_[True, subject[1:] != subject[:-1]], positions, 0)
    )
    last_start = np.maximum.accumulate(np.where(start, positions, -1))
    # The first discharge after each position (n when none), within the subject.
    after = np.r_[np.where(end, positions, n)[1:], n]
    next_end = np.minimum.accumulate(after[::-1])[::-1]
    after = np.r_[np.where(start, positions, n)[1:], n]
    next_start = np.minimum.accumulate(after[::-1])[::-1]
    closed = (next_end < n) & (next_end < next_start)
    closed &= subject[np.minimum(next_end, n - 1)] == subject
    never = np.datetime64(np.iinfo(np.int64).max, "us")
    end_time = np.where(closed, time[np.minimum(next_end, n - 1)], never)
    has_stay = last_start >= first_of_subject
    stay = np.where(has_stay, last_start, 0)
    inside = has_stay & (time <= end_time[stay])
    inside[end] &= next_end[stay[end]] == positions[end]  # the discharge of its stay
    visit_of_sorted = np.where(inside, stay, NO_VISIT)
    ids = np.empty(n, dtype=np.int64)
    ids[order] = visit_of_sorted
    return dataclasses.replace(events, visit=ids), is_start | is_end
