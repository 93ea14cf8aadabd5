"""MIMIC-III reader benchmark: rows per second and peak memory on synthetic tables.

Writes fabricated tables in the exact MIMIC-III v1.4 schema (every column, rows grouped
by patient as in the real files), sized by their number of LABEVENTS rows, with the
real dataset's proportions (per 27.9M lab rows: 46.5k patients, 59k admissions, 651k
diagnoses, 240k procedures, 4.16M prescriptions; and, our assumption, a fifth of lab
rows without HADM_ID, half of those inside an admission; each ITEMID's rows share one
VALUEUOM, as most of MIMIC's do). Each size is written by one
subprocess and read by ``read_mimic3`` in another, fresh one: ``ru_maxrss`` is a peak
over the whole life of a process, and on Linux a child even starts from the resident
size of the parent it was forked from, so the parent here only imports and launches.
``--lab-repeats R`` writes each lab row R times (10 minutes apart): R times the rows
for the same cohort. Prints figures; asserts nothing. Usage::

    python bench/readers_bench.py [--lab-rows 1000000 10000000] [--gzip]
        [--lab-repeats 1] [--seed 0] [--tables DIR]

``--tables DIR`` keeps the tables of each size in a folder of ``DIR`` and reads them
again on the next run instead of writing them (for one size's figures, repeated).
Peak memory is also given above the imports, per lab row, and as a multiple of the
finished cohort's arrays (offsets, times, codes, static features and lab values).
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

# Real MIMIC-III v1.4 sizes, per LABEVENTS row.
PER_LAB_ROW = {
    "patients": 46_520 / 27_854_055,
    "diagnoses": 651_047 / 27_854_055,
    "procedures": 240_095 / 27_854_055,
    "prescriptions": 4_156_450 / 27_854_055,
}
ADMISSIONS_PER_PATIENT = 58_976 / 46_520
ORPHAN_LABS = 0.2
# VALUEUOM of an ITEMID: UNITS[ITEMID % len(UNITS)]; derived, not drawn, so that the
# random draws (and every other column) stay those of tables written without units.
UNITS = np.array(["mg/dL", "mEq/L", "mmol/L", "IU/L", "%", "K/uL", "g/dL", "sec"])
EPOCH = np.datetime64("2100-01-01T00:00:00", "s")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- tables


def _times(seconds: np.ndarray) -> pl.Series:
    """MIMIC timestamps (``2101-10-20 19:08:00``), ``seconds`` after 2100-01-01."""

    moments = EPOCH + np.asarray(seconds).astype("timedelta64[s]")
    return pl.Series(moments.astype("datetime64[ms]")).dt.strftime("%Y-%m-%d %H:%M:%S")


def _zipf_choice(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """Draws from ``pool`` with a long-tailed (Zipf-like) frequency, as codes have."""

    weights = 1.0 / np.arange(1, len(pool) + 1)
    return pool[rng.choice(len(pool), size=n, p=weights / weights.sum())]


def write_tables(
    root: Path, lab_rows: int, seed: int, repeats: int = 1
) -> dict[str, int]:
    """Write the tables; return their row counts. With ``repeats`` > 1 the tables
    are those of ``lab_rows / repeats`` lab rows, each lab row written ``repeats``
    times 10 minutes apart: more rows, the same cohort."""
    lab_rows = max(1, lab_rows // repeats)

    rng = np.random.default_rng(seed)
    n_patients = max(10, round(lab_rows * PER_LAB_ROW["patients"]))
    subjects = np.arange(1, n_patients + 1) * 3
    visits_per = 1 + rng.poisson(ADMISSIONS_PER_PATIENT - 1, n_patients)
    adm_subject = np.repeat(subjects, visits_per)
    n_adm = len(adm_subject)
    hadm = 100_000 + rng.permutation(n_adm)
    first = rng.integers(0, 80 * 365 * 86400, n_patients)
    gaps = rng.integers(30 * 86400, 900 * 86400, n_adm)
    within = np.arange(n_adm) - np.repeat(
        np.cumsum(visits_per) - visits_per, visits_per
    )
    # Admissions of a patient follow one another, 1 to 30 months apart.
    cumulative = np.cumsum(np.where(within > 0, gaps, 0))
    base = np.repeat(cumulative[np.cumsum(visits_per) - visits_per], visits_per)
    start = np.repeat(first, visits_per) + cumulative - base
    end = start + rng.integers(86400, 20 * 86400, n_adm)
    counts = {"ADMISSIONS": n_adm, "PATIENTS": n_patients}
    pl.DataFrame(
        {
            "ROW_ID": np.arange(1, n_patients + 1),
            "SUBJECT_ID": subjects,
            "GENDER": rng.choice(["F", "M"], n_patients),
            "DOB": _times(first - rng.integers(18, 95, n_patients) * 365 * 86400),
            "DOD": None,
            "DOD_HOSP": None,
            "DOD_SSN": None,
            "EXPIRE_FLAG": 0,
        }
    ).write_csv(root / "PATIENTS.csv")
    ethnicity = ["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC OR LATINO", "ASIAN"]
    pl.DataFrame(
        {
            "ROW_ID": np.arange(1, n_adm + 1),
            "SUBJECT_ID": adm_subject,
            "HADM_ID": hadm,
            "ADMITTIME": _times(start),
            "DISCHTIME": _times(end),
            "DEATHTIME": None,
            "ADMISSION_TYPE": "EMERGENCY",
            "ADMISSION_LOCATION": "EMERGENCY ROOM ADMIT",
            "DISCHARGE_LOCATION": "HOME",
            "INSURANCE": rng.choice(["Medicare", "Private", "Medicaid"], n_adm),
            "LANGUAGE": "ENGL",
            "RELIGION": None,
            "MARITAL_STATUS": None,
            "ETHNICITY": rng.choice([*ethnicity, "UNKNOWN/NOT SPECIFIED"], n_adm),
            "EDREGTIME": None,
            "EDOUTTIME": None,
            "DIAGNOSIS": "SEPSIS",
            "HOSPITAL_EXPIRE_FLAG": 0,
            "HAS_CHARTEVENTS_DATA": 1,
        }
    ).write_csv(root / "ADMISSIONS.csv")
    adm = (hadm, adm_subject, start, end)
    counts |= _write_icd(root, "DIAGNOSES_ICD", adm, lab_rows, "diagnoses", 6984, rng)
    counts |= _write_icd(root, "PROCEDURES_ICD", adm, lab_rows, "procedures", 2009, rng)
    counts |= _write_prescriptions(root, adm, lab_rows, rng)
    counts |= _write_labs(root, adm, lab_rows, rng, repeats)
    return counts


def _per_admission(rng, n_adm: int, total: int) -> np.ndarray:
    """Row counts per admission that add up to about ``total``."""

    return rng.poisson(total / n_adm, n_adm)


def _write_icd(root, name, adm, lab_rows, kind, pool_size, rng) -> dict[str, int]:

    hadm, subject, _, _ = adm
    per = _per_admission(rng, len(hadm), round(lab_rows * PER_LAB_ROW[kind]))
    n = int(per.sum())
    width = 5 if kind == "diagnoses" else 4
    pool = np.array([f"{i:0{width}d}" for i in rng.permutation(10**width)[:pool_size]])
    seq = np.arange(n) - np.repeat(np.cumsum(per) - per, per) + 1
    pl.DataFrame(
        {
            "ROW_ID": np.arange(1, n + 1),
            "SUBJECT_ID": np.repeat(subject, per),
            "HADM_ID": np.repeat(hadm, per),
            "SEQ_NUM": seq,
            "ICD9_CODE": _zipf_choice(rng, pool, n),
        }
    ).write_csv(root / f"{name}.csv")
    return {name: n}


def _write_prescriptions(root, adm, lab_rows, rng) -> dict[str, int]:

    hadm, subject, start, _ = adm
    per = _per_admission(rng, len(hadm), round(lab_rows * PER_LAB_ROW["prescriptions"]))
    n = int(per.sum())
    names = np.array([f"Drug {i} Sodium" for i in range(4525)])
    begin = np.repeat(start, per) + rng.integers(0, 5 * 86400, n)
    pl.DataFrame(
        {
            "ROW_ID": np.arange(1, n + 1),
            "SUBJECT_ID": np.repeat(subject, per),
            "HADM_ID": np.repeat(hadm, per),
            "ICUSTAY_ID": None,
            "STARTDATE": _times(begin - begin % 86400),
            "ENDDATE": _times(begin - begin % 86400 + 86400),
            "DRUG_TYPE": "MAIN",
            "DRUG": _zipf_choice(rng, names, n),
            "DRUG_NAME_POE": None,
            "DRUG_NAME_GENERIC": None,
            "FORMULARY_DRUG_CD": None,
            "GSN": None,
            "NDC": rng.integers(10**9, 10**11, n).astype(str),
            "PROD_STRENGTH": "1 mg",
            "DOSE_VAL_RX": "1",
            "DOSE_UNIT_RX": "mg",
            "FORM_VAL_DISP": "1",
            "FORM_UNIT_DISP": "TAB",
            "ROUTE": "PO",
        }
    ).write_csv(root / "PRESCRIPTIONS.csv")
    return {"PRESCRIPTIONS": n}


def _write_labs(root, adm, lab_rows, rng, repeats) -> dict[str, int]:
    """LABEVENTS in chunks of about a million rows, so that writing stays light."""
    hadm, subject, start, end = adm
    per = _per_admission(rng, len(hadm), lab_rows)
    chunk = max(1, len(hadm) * 1_000_000 // max(lab_rows * repeats, 1))
    items = 50_800 + rng.permutation(1000)[:726]
    with (root / "LABEVENTS.csv").open("wb") as file:
        row = 1
        for a in range(0, len(hadm), chunk):
            s = slice(a, a + chunk)
            k = per[s]
            n = int(k.sum())
            t0, t1 = np.repeat(start[s], k), np.repeat(end[s], k)
            orphan = rng.random(n) < ORPHAN_LABS
            # Half the orphans fall inside their admission, half in the month before.
            outside = orphan & (rng.random(n) < 0.5)
            when = t0 + (rng.random(n) * (t1 - t0)).astype(np.int64)
            when = np.where(outside, t0 - rng.integers(3600, 30 * 86400, n), when)
            item = _zipf_choice(rng, items, n)
            copies = np.repeat(np.arange(n), repeats)
            when = when[copies] + np.tile(np.arange(repeats) * 600, n)
            n *= repeats
            frame = pl.DataFrame(
                {
                    "ROW_ID": np.arange(row, row + n),
                    "SUBJECT_ID": np.repeat(subject[s], k * repeats),
                    "HADM_ID": pl.Series(np.repeat(hadm[s], k * repeats)).set(
                        pl.Series(orphan[copies]), None
                    ),
                    "ITEMID": item[copies],
                    "CHARTTIME": _times(when),
                    "VALUE": "1.0",
                    "VALUENUM": 1.0,
                    "VALUEUOM": UNITS[item[copies] % len(UNITS)],
                    "FLAG": None,
                }
            )
            frame.write_csv(file, include_header=row == 1)
            row += n
    return {"LABEVENTS": row - 1}


def compress(root: Path) -> None:
    """Replace each table by its .csv.gz (level 1), as MIMIC is distributed."""
    for path in sorted(root.glob("*.csv")):
        with path.open("rb") as src, gzip.open(f"{path}.gz", "wb", 1) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        path.unlink()


# --------------------------------------------------------------------------- read


def read_worker(root: str) -> None:
    """Read the tables with read_mimic3 and print one JSON line of figures."""
    from ehrgen.data.formats.mimic3 import read_mimic3

    floor = peak_rss_mib()
    started = time.perf_counter()
    cohort = read_mimic3(root)
    seconds = time.perf_counter() - started
    arrays = [
        cohort.visit_offsets,
        cohort.visit_times,
        cohort.event_offsets,
        cohort.event_codes,
        *cohort.static.values(),
    ]
    values = 0 if cohort.event_values is None else cohort.event_values.nbytes
    dropped = cohort.metadata["dropped"]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": sum(v["rows"] for v in dropped.values() if isinstance(v, dict)),
                "lab_rows": dropped.get("LABEVENTS", {}).get("rows", 0),
                "patients": len(cohort),
                "visits": cohort.n_visits,
                "events": cohort.n_events,
                "codes": len(cohort.code_values),
                "codes_with_units": len(cohort.units()),
                # The finished cohort's arrays, lab values included.
                "cohort_mib": (sum(a.nbytes for a in arrays) + values) / 2**20,
                "values_mib": values / 2**20,
                "rss_after_imports_mib": floor,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--lab-rows", type=int, nargs="+", default=[1_000_000, 10_000_000]
    )
    parser.add_argument("--gzip", action="store_true", help="Write .csv.gz tables.")
    parser.add_argument(
        "--lab-repeats",
        type=int,
        default=1,
        help="Write each lab row this many times: more rows, the same cohort.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tables", help="Keep (and reuse) the tables under DIR.")
    parser.add_argument("--write", help=argparse.SUPPRESS)  # a subprocess's side
    parser.add_argument("--read", help=argparse.SUPPRESS)  # a subprocess's side
    args = parser.parse_args()
    if args.write:
        counts = write_tables(
            Path(args.write), args.lab_rows[0], args.seed, args.lab_repeats
        )
        if args.gzip:
            compress(Path(args.write))
        print(json.dumps(counts))
        return
    if args.read:
        read_worker(args.read)
        return
    for lab_rows in args.lab_rows:
        with tempfile.TemporaryDirectory() as tmp:
            name = f"{lab_rows}-x{args.lab_repeats}-s{args.seed}{'-gz' * args.gzip}"
            root = Path(args.tables) / name if args.tables else Path(tmp)
            options = ["--lab-rows", str(lab_rows), "--seed", str(args.seed)]
            options += ["--lab-repeats", str(args.lab_repeats)]
            if not any(root.glob("PATIENTS.csv*")):
                root.mkdir(parents=True, exist_ok=True)
                started = time.perf_counter()
                gz = ["--gzip"] * args.gzip
                counts = _run("--write", str(root), *options, *gz)
                print(
                    f"\n{lab_rows:,} lab rows: wrote {sum(counts.values()):,} rows in "
                    f"{time.perf_counter() - started:.1f} s: "
                    + ", ".join(f"{k} {v:,}" for k, v in counts.items())
                )
            size = sum(p.stat().st_size for p in root.iterdir()) / 2**20
            print(f"\n{lab_rows:,} lab rows: tables of {size:,.0f} MiB in {root}")
            _report(_run("--read", str(root)))


def _run(*args: str) -> dict:
    """Run this script in a fresh subprocess; its last line of output, as JSON."""
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(f: dict) -> None:
    arrays, peak = f["cohort_mib"], f["peak_rss_mib"]
    above = peak - f["rss_after_imports_mib"]
    print(
        f"read_mimic3: {f['seconds']:.1f} s, {f['rows'] / f['seconds']:,.0f} rows/s; "
        f"cohort {f['patients']:,} patients, {f['visits']:,} visits, "
        f"{f['events']:,} events, {f['codes']:,} codes ({f['codes_with_units']:,} "
        f"with a unit; {arrays:,.1f} MiB of arrays, "
        f"{f['values_mib']:,.1f} MiB of them lab values)"
    )
    print(
        f"peak RSS {peak:,.0f} MiB (after imports {f['rss_after_imports_mib']:,.0f} "
        f"MiB; {above:,.0f} MiB above, {above * 2**20 / max(f['lab_rows'], 1):,.1f} B "
        f"per lab row): {peak / arrays:,.1f}x the cohort's arrays, "
        f"{above / arrays:,.1f}x above imports"
    )


if __name__ == "__main__":
    main()
