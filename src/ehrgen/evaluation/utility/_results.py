"""What :func:`~ehrgen.evaluation.utility.utility` returns: one result per trained
setting, and the whole experiment's figures, curves and plot."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ehrgen._io import atomic_file
from ehrgen.evaluation._estimates import Estimate
from ehrgen.evaluation.rows import MetricRow

if TYPE_CHECKING:
    from ehrgen.evaluation.utility._utility import UtilityConfig

__all__ = ["FAMILIES", "SettingResult", "UtilityResult"]

#: the families of trained settings, in the order they run.
FAMILIES = ("real", "synthetic", "real+synthetic")


@dataclass(frozen=True)
class SettingResult:
    """One trained predictor (or baseline) and its figures on the test patients.

    ``family`` is one of :data:`FAMILIES` or ``"baseline"``; ``recall`` maps each k to
    recall@k; ``label_auc`` is None when the label task did not run.
    """

    family: str
    name: str
    n_real: int
    n_synthetic: int
    recall: Mapping[int, Estimate]
    label_auc: Estimate | None = None
    epochs_run: int = 0
    train_loss: float = math.nan
    seconds: float = 0.0

    @property
    def size(self) -> int:
        """The number of training patients."""
        return self.n_real + self.n_synthetic

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as None)."""
        return {
            "family": self.family,
            "name": self.name,
            "n_real": self.n_real,
            "n_synthetic": self.n_synthetic,
            "size": self.size,
            "recall": {f"recall@{k}": e.to_dict() for k, e in self.recall.items()},
            "label_auc": None if self.label_auc is None else self.label_auc.to_dict(),
            "epochs_run": self.epochs_run,
            "train_loss": _finite(self.train_loss),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class UtilityResult:
    """What :func:`utility` measures (see the module docstring for definitions)."""

    settings: tuple[SettingResult, ...]
    baselines: tuple[SettingResult, ...]
    ks: tuple[int, ...]
    target_modality: str
    label: str | None
    n_test_patients: int  # test patients with at least one example
    n_test_examples: int
    config: UtilityConfig
    notes: tuple[str, ...] = ()

    def setting(self, name: str) -> SettingResult:
        """The setting or baseline of this name, e.g. ``"real:5000"`` (KeyError)."""
        return {s.name: s for s in (*self.settings, *self.baselines)}[name]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "target_modality": self.target_modality,
            "ks": list(self.ks),
            "label": self.label,
            "n_test_patients": self.n_test_patients,
            "n_test_examples": self.n_test_examples,
            "settings": [s.to_dict() for s in self.settings],
            "baselines": [s.to_dict() for s in self.baselines],
            "curves": self.curves(),
            "config": self.config.to_dict(),
            "notes": list(self.notes),
        }

    def summary(self) -> list[MetricRow]:
        """recall@k of every setting and baseline, and the label's AUC where it ran,
        e.g. ``recall@10, synthetic 1600``.

        Example:
            >>> e = Estimate(0.5, 0.4, 0.6, "higher")
            >>> s = SettingResult("real", "real:100", 100, 0, {10: e})
            >>> r = UtilityResult((s,), (), (10,), "diagnosis", None, 5, 9, None)
            >>> [(row.metric, row.text()) for row in r.summary()]
            [('recall@10, real 100', '0.500 [0.400, 0.600]')]
        """
        rows = []
        for s in (*self.settings, *self.baselines):
            family, _, size = s.name.partition(":")
            trained_on = (
                f"{size} baseline" if family == "baseline" else (f"{family} {size}")
            )
            rows += [
                MetricRow.of("utility", f"recall@{k}, {trained_on}", e)
                for k, e in s.recall.items()
            ]
            if s.label_auc is not None:
                label = f"AUC of {self.label}, {trained_on}"
                rows.append(MetricRow.of("utility", label, s.label_auc))
        return rows

    def curves(self) -> dict[str, dict[str, list[float]]]:
        """Per family, its settings by training size: ``size``, ``n_real``,
        ``n_synthetic`` and, per k, ``recall@k`` with ``recall@k_low`` and
        ``recall@k_high`` (the interval); NaN as None."""
        out = {}
        for family in FAMILIES:
            rows = sorted((s for s in self.settings if s.family == family), key=_size)
            if not rows:
                continue
            curve: dict[str, list[Any]] = {
                "size": [s.size for s in rows],
                "n_real": [s.n_real for s in rows],
                "n_synthetic": [s.n_synthetic for s in rows],
            }
            for k in self.ks:
                curve[f"recall@{k}"] = [_finite(s.recall[k].value) for s in rows]
                curve[f"recall@{k}_low"] = [_finite(s.recall[k].ci_low) for s in rows]
                curve[f"recall@{k}_high"] = [_finite(s.recall[k].ci_high) for s in rows]
            out[family] = curve
        return out

    def plot(self, path: str | Path) -> Path:
        """Write a PNG of recall@k against training size, one panel per k, one line
        per family (bars: the intervals), baselines as horizontal lines."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        figure = Figure(figsize=(4.5 * len(self.ks), 4), dpi=100)
        FigureCanvasAgg(figure)
        curves = self.curves()
        sizes = [s for c in curves.values() for s in c["size"]]
        for i, k in enumerate(self.ks):
            axes = figure.add_subplot(1, len(self.ks), i + 1)
            for family, curve in curves.items():
                y = np.array(curve[f"recall@{k}"], dtype=float)
                low = np.array(curve[f"recall@{k}_low"], dtype=float)
                high = np.array(curve[f"recall@{k}_high"], dtype=float)
                label = family
                if family == "real+synthetic":
                    label += f" (real {curve['n_real'][0]})"
                error = np.nan_to_num(np.stack([y - low, high - y]).clip(0))
                axes.errorbar(
                    curve["size"], y, yerr=error, marker="o", capsize=3, label=label
                )
            for baseline, style in zip(self.baselines, ("--", ":")):
                axes.axhline(
                    baseline.recall[k].value,
                    linestyle=style,
                    color="grey",
                    label=f"baseline: {baseline.name.split(':')[-1]}",
                )
            if sizes and max(sizes) >= 10 * min(sizes):
                axes.set_xscale("log")
            axes.set(xlabel="training patients", ylabel=f"recall@{k}")
            axes.set_title(f"next-visit {self.target_modality}, recall@{k}", fontsize=9)
            axes.legend(fontsize=7)
        figure.tight_layout()
        with atomic_file(path, overwrite=True) as tmp:
            figure.savefig(tmp, format="png")
        return path


def _size(setting: SettingResult) -> int:
    return setting.size


def _finite(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None
