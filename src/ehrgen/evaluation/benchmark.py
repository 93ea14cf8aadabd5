"""The paper's Table 2 on any cohort: train each model under one budget, score the test
split, and write ``table2.md``, ``results.json`` and a bar chart.

Every model gets the same training cohort, validation cohort, training settings and
budget (epochs, or minutes); every figure states its protocol. Table 2 shows both
protocols where a model supports both.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ehrgen._io import atomic_file
from ehrgen.data import Cohort
from ehrgen.errors import ConfigError
from ehrgen.evaluation.perplexity import perplexity
from ehrgen.models.base import PROTOCOLS
from ehrgen.models.registry import MODELS, build_model

__all__ = ["run_benchmark", "table2_markdown"]

logger = logging.getLogger(__name__)


def run_benchmark(
    train: Cohort,
    val: Cohort | None,
    test: Cohort,
    models: Sequence[str],
    training: Any,
    preset: str = "small",
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit, score and tabulate each model; write the outputs when ``out_dir`` is set.

    Every model is built (so every name and the preset checked) before any trains.

    Returns:
        ``{"models": {name: {"training_seconds", "lpl": {protocol: ...},
        "mpl": {protocol: ...}}}, "budget": ..., "cohorts": ...}``.

    Raises:
        ConfigError: an unknown model name or preset.
    """
    if not models:
        raise ConfigError(
            f"The 'models' parameter of run_benchmark must name at least one model, "
            f"among {list(MODELS)}. Got none instead."
        )
    built = {name: build_model(name, preset) for name in models}
    results: dict[str, Any] = {
        "budget": training.to_dict(),
        "preset": preset,
        "cohorts": {
            "train": len(train),
            "val": len(val) if val else 0,
            "test": len(test),
        },
        "models": {},
    }
    for name, model in built.items():
        start = time.perf_counter()
        model.fit(train, val, training, progress=progress)
        seconds = time.perf_counter() - start
        entry: dict[str, Any] = {
            "training_seconds": round(seconds, 1),
            "lpl": {},
            "mpl": {},
        }
        for protocol in (p for p in PROTOCOLS if p in model.protocols):
            for metric, scorer in (
                ("lpl", model.score_longitudinal),
                ("mpl", model.score_cross_modal),
            ):
                result = perplexity(scorer(test, protocol))
                entry[metric][protocol] = result.to_dict()
        results["models"][name] = entry
        logger.info("%s: trained in %.0f s, scored.", name, seconds)
    if out_dir is not None:
        write_outputs(results, Path(out_dir), list(test.schema.modalities))
    return results


def table2_markdown(results: dict[str, Any], modalities: Sequence[str]) -> str:
    """The paper's layout: rows models (and protocols), columns lpl and mpl per
    modality, median [95% CI]; lower is better."""
    header = ["model", "protocol"]
    for m in modalities:
        header += [f"{m} lpl", f"{m} mpl"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, entry in results["models"].items():
        for protocol in PROTOCOLS:
            if protocol not in entry["lpl"]:
                continue
            samples = entry["lpl"][protocol].get("mc_samples")
            label = protocol if samples is None else f"{protocol}, MC K={samples}"
            cells = [name, label]
            for m in modalities:
                for metric in ("lpl", "mpl"):
                    figure = entry[metric][protocol]["modalities"][m]
                    cells.append(_cell(figure))
            lines.append("| " + " | ".join(cells) + " |")
    budget = results["budget"]
    note = (
        f"\nMedian per-patient perplexity on the test split, [bootstrap 95% CI]; lower "
        f"is better. Budget: {budget['epochs']} epochs"
        + (
            f" or {budget['time_budget_minutes']} minutes"
            if budget.get("time_budget_minutes")
            else ""
        )
        + f", batch {budget['batch_size']}, preset {results['preset']}; cohorts "
        f"{results['cohorts']}.\n"
    )
    return "\n".join(lines) + "\n" + note


def _cell(figure: dict[str, Any]) -> str:
    if figure["n_patients"] == 0:
        return "n/a"
    return f"{figure['median']:.1f} [{figure['ci_low']:.1f}, {figure['ci_high']:.1f}]"


def write_outputs(
    results: dict[str, Any], out_dir: Path, modalities: list[str]
) -> None:
    """``table2.md``, ``results.json`` and ``table2.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "table2.md", overwrite=True) as tmp:
        tmp.write_text(table2_markdown(results, modalities), encoding="utf-8")
    with atomic_file(out_dir / "results.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(results, indent=2), encoding="utf-8")
    _bar_chart(results, modalities, out_dir / "table2.png")


def _bar_chart(results: dict[str, Any], modalities: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results["models"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    width = 0.8 / max(len(names), 1)
    for ax, metric in zip(axes, ("lpl", "mpl")):
        x = np.arange(len(modalities))
        for i, name in enumerate(names):
            per_protocol = results["models"][name][metric]
            figures = per_protocol.get("set") or next(iter(per_protocol.values()))
            medians = [figures["modalities"][m]["median"] for m in modalities]
            lows = [figures["modalities"][m]["ci_low"] for m in modalities]
            highs = [figures["modalities"][m]["ci_high"] for m in modalities]
            err = [np.subtract(medians, lows), np.subtract(highs, medians)]
            ax.bar(x + i * width, medians, width, yerr=err, label=name, capsize=2)
        ax.set_xticks(x + width * (len(names) - 1) / 2, modalities)
        ax.set_title(f"{metric} (set protocol, median, 95% CI; lower is better)")
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
