"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ehrgen.data import Cohort

REAL, SYNTHETIC = "#1f77b4", "#d62728"
MODE_COLOURS = ("#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


@contextmanager
def figure(n_plots: int = 1, width: float = 4.2, height: float = 3.6) -> Iterator:
    """A row of axes; the caller draws, :func:`png` renders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, n_plots, figsize=(width * n_plots, height), dpi=90, squeeze=False
    )
    try:
        yield fig, list(axes[0])
    finally:
        plt.close(fig)


def png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def prevalence_scatter(results: Mapping[str, Any], kind: str) -> bytes:
    """Real vs synthetic prevalence of each real code, one panel per mode, with the
    diagonal (perfect agreement)."""
    with figure(len(results)) as (fig, axes):
        for ax, (mode, result) in zip(axes, results.items()):
            points = result.prevalence_points(kind)
            modalities = sorted(set(points.modalities))
            for i, modality in enumerate(modalities):
                keep = np.array([m == modality for m in points.modalities])
                ax.scatter(
                    points.real[keep],
                    points.synthetic[keep],
                    s=10,
                    alpha=0.7,
                    label=modality,
                    color=f"C{i}",
                )
            top = max(points.real.max(initial=0), points.synthetic.max(initial=0))
            ax.plot([0, top], [0, top], "--", color="grey", linewidth=1)
            r2 = result.r2.get(kind, float("nan"))
            ax.set(
                xlabel=f"real {kind.replace('_', ' per ')} prevalence",
                ylabel="synthetic",
                title=f"{mode.replace('_', ' ')}: R² {r2:.3f}",
            )
            ax.legend(fontsize=7, loc="upper left")
        return png(fig)


def count_histograms(cohorts: Mapping[str, Cohort]) -> bytes:
    """Visits per patient and codes per visit, real vs each synthetic mode."""
    measures = {
        "visits per patient": lambda c: np.diff(c.visit_offsets),
        "codes per visit": lambda c: np.diff(c.event_offsets),
    }
    with figure(len(measures), width=4.6) as (fig, axes):
        for ax, (title, measure) in zip(axes, measures.items()):
            values = {name: measure(c) for name, c in cohorts.items()}
            cap = int(np.percentile(np.concatenate(list(values.values())), 99)) + 1
            bins = np.arange(0, cap + 2) - 0.5
            pooled = {name: np.minimum(v, cap) for name, v in values.items()}
            _step_histograms(ax, pooled, bins, linewidth=1.6)
            ax.set(xlabel=f"{title} ({cap}+ pooled)", ylabel="share", title=title)
            ax.legend(fontsize=7)
        return png(fig)


def demographics(cohorts: Mapping[str, Cohort]) -> bytes | None:
    """Each baseline feature, real vs synthetic: histograms or category shares."""
    first = next(iter(cohorts.values()))
    features = list(first.schema.features)
    if not features:
        return None
    with figure(len(features), width=3.6) as (fig, axes):
        for ax, name in zip(axes, features):
            categories = first.schema.categorical.get(name)
            for i, (label, cohort) in enumerate(cohorts.items()):
                colour = REAL if i == 0 else MODE_COLOURS[(i - 1) % 4]
                values = cohort.static[name]
                if categories is not None:
                    shares = np.bincount(
                        values[values >= 0], minlength=len(categories)
                    ) / max(len(values), 1)
                    width = 0.8 / len(cohorts)
                    ax.bar(
                        np.arange(len(categories)) + i * width,
                        shares,
                        width=width,
                        color=colour,
                        label=label.replace("_", " "),
                    )
                    ax.set_xticks(np.arange(len(categories)) + 0.4 - width / 2)
                    ax.set_xticklabels(categories, rotation=30, fontsize=7)
                else:
                    ax.hist(
                        values[~np.isnan(values)],
                        bins=20,
                        density=True,
                        histtype="step",
                        color=colour,
                        label=label.replace("_", " "),
                    )
            ax.set(title=name, ylabel="share")
            ax.legend(fontsize=7)
        return png(fig)


def gaps_and_values(cohorts: Mapping[str, Cohort], n_labs: int = 4) -> bytes | None:
    """Days between visits (log scale) and the values of the real cohort's most
    measured labs, real vs each synthetic mode; None when no cohort has real
    times or values."""
    panels: list[tuple[str, dict[str, np.ndarray]]] = []
    if not any(c.times_are_placeholders for c in cohorts.values()):
        gaps = {}
        for name, cohort in cohorts.items():
            days = cohort.visit_times.astype("datetime64[s]").astype(np.int64) / 86400
            later = np.diff(cohort.visit_patient) == 0
            gaps[name] = np.log10(np.maximum(np.diff(days)[later], 1e-3))
        panels.append(("days between visits (log10)", gaps))
    first = next(iter(cohorts.values()))
    if first.event_values is not None:
        measured = np.isfinite(first.event_values)
        codes, counts = np.unique(
            first.code_values[first.event_codes[measured]], return_counts=True
        )
        for lab in codes[np.argsort(-counts, kind="stable")][:n_labs].tolist():
            values = {}
            for name, cohort in cohorts.items():
                if cohort.event_values is None:
                    continue
                events = np.isin(
                    cohort.event_codes, np.flatnonzero(cohort.code_values == lab)
                )
                chosen = cohort.event_values[events]
                values[name] = chosen[np.isfinite(chosen)]
            panels.append((str(lab), values))
    if not panels:
        return None
    with figure(len(panels), width=3.4) as (fig, axes):
        for ax, (title, samples) in zip(axes, panels):
            pooled = np.concatenate([v for v in samples.values() if len(v)] or [[0]])
            low, high = np.percentile(pooled, [0.5, 99.5])
            bins = np.linspace(low, high if high > low else low + 1, 31)
            clipped = {n: np.clip(v, bins[0], bins[-1]) for n, v in samples.items()}
            _step_histograms(ax, clipped, bins, linewidth=1.4)
            ax.set(title=title, ylabel="density")
            ax.legend(fontsize=7)
        return png(fig)


def _step_histograms(
    ax: Any, samples: Mapping[str, np.ndarray], bins: np.ndarray, linewidth: float
) -> None:
    """One outline histogram per sample (density), the first in the real cohort's
    colour; an empty sample (a mode without this measure) is left out."""
    for i, (name, values) in enumerate(samples.items()):
        if not len(values):
            continue
        ax.hist(
            values,
            bins=bins,
            density=True,
            histtype="step",
            linewidth=linewidth,
            color=REAL if i == 0 else MODE_COLOURS[(i - 1) % 4],
            label=name.replace("_", " "),
        )


def curves(panels: Sequence[tuple[str, Sequence[Any]]]) -> bytes:
    """One panel per title, with its curves; ROC panels get the chance diagonal."""
    with figure(len(panels), width=3.6, height=3.6) as (fig, axes):
        for ax, (title, items) in zip(axes, panels):
            for curve in items:
                label = curve.name
                if np.isfinite(curve.auc):
                    label = f"{label}: AUC {curve.auc:.3f}"
                ax.plot(curve.x, curve.y, label=label)
            if items and items[0].x_label == "false-positive rate":
                ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
            ax.set(
                title=title,
                xlabel=items[0].x_label if items else "",
                ylabel=items[0].y_label if items else "",
            )
            ax.legend(fontsize=6, loc="lower right")
        return png(fig)
