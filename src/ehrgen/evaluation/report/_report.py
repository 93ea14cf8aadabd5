"""The evaluation report: one self-contained HTML page and ``metrics.json``.

:func:`write_report` turns an :class:`~ehrgen.evaluation.suites.Evaluation` into
``report.html``: the summary table first (each figure with the direction that is
better), then fidelity (prevalence scatter plots against the diagonal, the codes that
differ most, with descriptions where the code system is known, distributions and
demographics), perplexity (the model's Table 2), privacy (every attack's figures and
ROC curves), utility, and the facts of the cohorts and the model. Plots are inline
PNGs; the page loads no script, style sheet or font from anywhere, so it opens
offline and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ehrgen._io import atomic_file, write_json
from ehrgen.evaluation.fidelity import VISIT_COUNT_FIGURES
from ehrgen.evaluation.privacy import MEMBERSHIP_ATTACKS
from ehrgen.evaluation.report import _plots
from ehrgen.evaluation.rows import MetricRow, pivot
from ehrgen.evaluation.suites import Evaluation

__all__ = ["render_report", "write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; } tr.group td { background: #fafafa; font-weight: 600; }
img { max-width: 100%; } nav a { margin-right: 1em; }
.note { color: #666; font-size: 0.9em; }
"""


def write_report(evaluation: Evaluation, out: str | Path) -> Path:
    """Write ``metrics.json`` and ``report.html`` into ``out``; return the page."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", _json_ready(evaluation.to_dict()))
    page = out / "report.html"
    with atomic_file(page, overwrite=True) as tmp:
        tmp.write_text(render_report(evaluation), encoding="utf-8")
    return page


def _json_ready(value: Any) -> Any:
    """NaN and infinities become null (JSON has neither)."""
    return json.loads(json.dumps(value, default=str).replace("NaN", "null"))


def render_report(evaluation: Evaluation) -> str:
    """The report page as one HTML string."""
    sections = [("summary", "Summary", _summary(evaluation))]
    if evaluation.fidelity:
        sections.append(("fidelity", "Fidelity", _fidelity(evaluation)))
    if evaluation.perplexity:
        sections.append(("perplexity", "Perplexity", _perplexity(evaluation)))
    if evaluation.privacy:
        sections.append(("privacy", "Privacy", _privacy(evaluation)))
    if evaluation.utility is not None:
        sections.append(("utility", "Utility", _utility(evaluation)))
    sections.append(("facts", "Cohorts and model", _facts(evaluation)))
    from ehrgen import __version__

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#{key}">{title}</a>' for key, title, _ in sections)
    body = "\n".join(
        f'<section id="{key}">\n<h2>{title}</h2>\n{content}\n</section>'
        for key, title, content in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>ehrgen evaluation report</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        "<h1>ehrgen evaluation report</h1>\n"
        f'<p class="note">ehrgen {html.escape(__version__)}, {when}. '
        f"{_sizes(evaluation)}</p>\n<nav>{nav}</nav>\n{body}\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------- building blocks


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    lines = []
    for row in rows:
        if len(row) == 1:  # a group heading
            lines.append(
                f'<tr class="group"><td colspan="{len(header)}">{_e(row[0])}</td></tr>'
            )
            continue
        cells = "".join(
            f'<td class="num">{_e(c)}</td>' if _numeric(c) else f"<td>{_e(c)}</td>"
            for c in row
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(lines) + "\n</table>"


def _numeric(cell: Any) -> bool:
    text = str(cell).split(" ")[0]
    try:
        float(text)
    except ValueError:
        return text == "n/a"
    return True


def _image(data: bytes | None, alt: str) -> str:
    if not data:
        return ""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{_e(alt)}">'


def _number(value: Any, digits: int = 3) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if number != number else f"{number:.{digits}f}"


def _sizes(evaluation: Evaluation) -> str:
    facts = evaluation.facts
    parts = [
        f"{facts['train']['patients']:,} training patients",
        f"{facts['holdout']['patients']:,} held-out patients",
    ]
    parts += [
        f"{c['patients']:,} synthetic ({mode.replace('_', ' ')})"
        for mode, c in facts["synthetic"].items()
    ]
    return _e(", ".join(parts) + ".")


def _modes(evaluation: Evaluation) -> list[str]:
    return [m.replace("_", " ") for m in evaluation.modes]


# ---------------------------------------------------------------- sections


def _summary(evaluation: Evaluation) -> str:
    note = (
        '<p class="note">Values with a 95% bootstrap interval in brackets. Per-mode '
        "columns are the synthetic cohorts; perplexity concerns the model, utility "
        "the first mode.</p>"
    )
    return (
        _guarantee(evaluation)
        + note
        + _metric_table(evaluation.summary(), evaluation.modes)
    )


def _guarantee(evaluation: Evaluation) -> str:
    """The model's DP statement, part by part, when it has one."""
    privacy = (evaluation.facts.get("model") or {}).get("privacy")
    if not privacy:
        return ""

    def number(value: Any) -> str:
        return "∞" if value is None or value == float("inf") else f"{value:.3g}"

    rows = [
        [
            part["name"],
            number(part["epsilon"]),
            f"{part['delta']:.2g}",
            part["mechanism"],
            ", ".join(f"{k} {number(v)}" for k, v in part["details"].items()),
        ]
        for part in privacy["parts"]
    ]
    return (
        f"<p><strong>Differentially private model</strong>: (ε = "
        f"{number(privacy['epsilon'])}, δ = {privacy['delta']:.2g}) per patient, "
        f"by basic composition of its parts (target ε "
        f"{number(privacy['target_epsilon'])}). The attacks below measure the "
        f"synthetic data; the guarantee bounds any attack on the model.</p>\n"
        + _table(["part", "ε", "δ", "mechanism", "settings"], rows)
    )


def _metric_table(rows: Iterable[MetricRow], modes: Sequence[str]) -> str:
    """Rows of figures, one column per mode, grouped by suite, notes last."""
    lines: list[Sequence[Any]] = []
    suite = None
    pivoted = pivot(rows, modes)
    notes = any(row.note for row, _ in pivoted)
    for row, cells in pivoted:
        if row.suite != suite:
            suite = row.suite
            lines.append([suite])
        lines.append(
            [row.metric, row.direction, *cells, *([row.note] if notes else [])]
        )
    header = ["figure", "better", *(m.replace("_", " ") for m in modes)]
    return _table(header + (["note"] if notes else []), lines)


def _fidelity(evaluation: Evaluation) -> str:
    results = evaluation.fidelity
    assert results is not None
    kinds = list(next(iter(results.values())).r2)
    rows: list[Sequence[Any]] = [["overall"]]
    rows += [[k, *(_number(r.r2.get(k)) for r in results.values())] for k in kinds]
    rows.append(["long tail (codes at or below the 10th prevalence percentile)"])
    rows += [
        [k, *(_number(r.r2_long_tail.get(k)) for r in results.values())] for k in kinds
    ]
    first = next(iter(results.values()))
    for modality in first.r2_by_modality:
        rows.append([f"{modality} only"])
        rows += [
            [k, *(_number(r.r2_by_modality[modality].get(k)) for r in results.values())]
            for k in kinds
        ]
    parts = [
        "<h3>Prevalence R² (higher is better, 1 is perfect)</h3>",
        _table(["statistic", *_modes(evaluation)], rows),
        "<h3>Code prevalence, real vs synthetic</h3>",
        _image(_plots.prevalence_scatter(results, "patient_code"), "per patient"),
        _image(_plots.prevalence_scatter(results, "visit_code"), "per visit"),
        "<h3>Codes whose prevalence differs most (per patient)</h3>",
        _top_codes(evaluation),
        "<h3>Distributions</h3>",
        _image(
            _plots.count_histograms(_real_and_synthetic(evaluation)), "distributions"
        ),
        _distribution_table(evaluation),
        _gaps_and_values(evaluation),
        "<h3>Demographics</h3>",
        _image(_plots.demographics(_real_and_synthetic(evaluation)), "demographics"),
        "<h3>Can a classifier tell real from synthetic?</h3>",
        _table(
            ["figure", *_modes(evaluation)],
            [
                [k, *(_number(r.discriminator.get(k)) for r in results.values())]
                for k in ("accuracy", "auc")
            ],
        ),
        '<p class="note">Logistic regression on each patient\'s codes, 5-fold '
        "cross-validated; 0.5 means indistinguishable.</p>",
    ]
    notes = sorted({n for r in results.values() for n in r.notes})
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(p for p in parts if p)


def _distribution_table(evaluation: Evaluation) -> str:
    results = evaluation.fidelity or {}
    modes = _modes(evaluation)
    header = ["measure", "real mean"]
    header += [f"{m} mean" for m in modes] + [f"{m} KS" for m in modes]
    first = next(iter(results.values()))
    rows = []
    note = evaluation.calibration_note
    for name, figures in first.distributions.items():
        label = f"{name} ({note})" if note and name in VISIT_COUNT_FIGURES else name
        row = [label, _number(figures["real_mean"], 2)]
        row += [
            _number(r.distributions.get(name, {}).get("synthetic_mean"), 2)
            for r in results.values()
        ]
        row += [
            _number(r.distributions.get(name, {}).get("ks")) for r in results.values()
        ]
        rows.append(row)
    return _table(header, rows)


def _gaps_and_values(evaluation: Evaluation) -> str:
    picture = _plots.gaps_and_values(_real_and_synthetic(evaluation))
    if picture is None:
        return ""
    return (
        "<h3>Visit gaps and lab values</h3>"
        + _image(picture, "visit gaps and lab values")
        + '<p class="note">Rows gap_days and value/ of the table above: overall, '
        "before the 2nd-4th visits, after the codes whose next gap differs most, "
        "and each lab at the code that shifts its values most.</p>"
    )


def _real_and_synthetic(evaluation: Evaluation) -> dict[str, Any]:
    cohorts = {"real (training)": evaluation.cohorts["train"]}
    cohorts.update((m, evaluation.cohorts[m]) for m in evaluation.modes)
    return cohorts


def _top_codes(evaluation: Evaluation, n: int = 15) -> str:
    results = evaluation.fidelity or {}
    mode, result = next(iter(results.items()))
    top = result.prevalence_points("patient_code").top(n)
    codes = [label.split(":", 1)[-1] for label, _, _ in top]
    descriptions = _describe(codes, evaluation)
    rows = [
        [label, descriptions.get(code, ""), _number(real), _number(synthetic)]
        for (label, real, synthetic), code in zip(top, codes)
    ]
    header = ["code", "description", "real", mode.replace("_", " ")]
    return _table(header, rows)


def _describe(codes: list[str], evaluation: Evaluation) -> dict[str, str]:
    extra = evaluation.cohorts["train"].metadata.get("code_descriptions") or {}
    try:
        from ehrgen.evaluation.report.descriptions import describe_codes
    except ImportError:  # pragma: no cover - the module ships with ehrgen
        return dict(extra)
    return describe_codes(codes, extra=extra)


def _perplexity(evaluation: Evaluation) -> str:
    results = evaluation.perplexity or {}
    names = list(results)
    modalities = list(next(iter(results.values())).modalities)
    rows = []
    for modality in modalities:
        cells = []
        for name in names:
            f = results[name].modalities[modality]
            cells.append(f"{f.median:.2f} ({f.ci_low:.2f}-{f.ci_high:.2f})")
        rows.append([modality, *cells])
    note = (
        '<p class="note">Median per-patient perplexity on the held-out patients, '
        "with a 95% bootstrap interval (lower is better); lpl: given the earlier "
        "visits, mpl: given those and the visit's other modalities "
        "(METHOD.md, Table 2).</p>"
    )
    table = _table(["modality", *names], rows)
    return note + table + _time_value_perplexity(evaluation)


def _time_value_perplexity(evaluation: Evaluation) -> str:
    figures = evaluation.facts.get("time_values_perplexity")
    if not figures:
        return ""
    rows = []
    for label, key, scored, classes in (
        ("gap before a visit", "gap_perplexity", "gaps_scored", figures["classes"]),
        ("lab value (or none)", "value_perplexity", "lab_events_scored",
         figures["classes"] + 1),
    ):  # fmt: skip
        if figures.get(scored):
            rows.append(
                [label, _number(figures[key], 2), classes, f"{figures[scored]:,}"]
            )
    if not rows:
        return ""
    return (
        "<h3>Visit gaps and lab values</h3>"
        '<p class="note">Perplexity of the classes the model of gaps and values '
        "chooses among (quantile bins), on the held-out patients given their "
        "codes; a uniform guess scores the number of classes.</p>"
        + _table(["quantity", "perplexity", "classes", "scored"], rows)
    )


def _privacy(evaluation: Evaluation) -> str:
    results = evaluation.privacy or {}
    modes = list(results)
    first = results[modes[0]]
    rows: list[Sequence[Any]] = []
    for name, attack in first.attacks.items():
        rows.append([f"{name}: {attack.description}"])
        figures = [
            replace(row, metric=row.metric.split(".", 1)[1], mode=mode)
            for mode, result in results.items()
            for row in result.figures()
            if row.metric.startswith(f"{name}.")
        ]
        rows += [
            [row.metric, row.direction, *cells] for row, cells in pivot(figures, modes)
        ]
    parts = [
        '<p class="note">D1: the training patients (members); D2: held-out real '
        "patients (non-members). Membership AUCs near 0.5, advantages and NNAAR "
        "near 0 and copy rates no higher than D2's mean no detectable leak. The "
        "white-box attack needs only the model and D1 and D2: it ran once, and "
        "every mode shows the same result.</p>",
        _table(["figure", "better", *(m.replace("_", " ") for m in modes)], rows),
    ]
    for mode, result in results.items():
        panels = _curve_panels(result)
        if panels:
            parts.append(f"<h3>Curves ({_e(mode.replace('_', ' '))})</h3>")
            parts.append(_image(_plots.curves(panels), f"privacy curves, {mode}"))
    return "\n".join(parts)


def _curve_panels(result: Any) -> list[tuple[str, list[Any]]]:
    groups = {
        "membership": MEMBERSHIP_ATTACKS,
        "attribute inference": ("attribute_inference",),
        "closest training patient": ("copies",),
    }
    panels = []
    for title, names in groups.items():
        items = [
            c for n in names if n in result.attacks for c in result.attacks[n].curves
        ]
        if items:
            panels.append((title, items))
    return panels


def _utility(evaluation: Evaluation) -> str:
    result = evaluation.utility
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "utility.png"
        result.plot(path)
        image = _image(path.read_bytes(), "utility")
    main = evaluation.modes[0] if evaluation.modes else "synthetic"
    note = (
        '<p class="note">An LSTM predicting the next visit\'s diagnoses, trained on '
        "real, synthetic, or both, and tested on the held-out real patients "
        "(METHOD.md, Utility).</p>"
    )
    return note + image + _metric_table(result.summary(), [main])


def _facts(evaluation: Evaluation) -> str:
    facts = evaluation.facts
    cohorts = {"training": facts["train"], "held-out": facts["holdout"]}
    cohorts.update(
        (f"synthetic ({m.replace('_', ' ')})", c) for m, c in facts["synthetic"].items()
    )
    modalities = list(facts["train"]["codes_in_use"])
    rows = [
        [name, f"{c['patients']:,}", f"{c['visits']:,}", f"{c['events']:,}",
         *(f"{c['codes_in_use'].get(m, 0):,}" for m in modalities)]
        for name, c in cohorts.items()
    ]  # fmt: skip
    header = [
        "cohort",
        "patients",
        "visits",
        "events",
        *(f"{m} codes" for m in modalities),
    ]
    model = facts["model"]
    model_rows = [
        ["class", model["class"]],
        ["parameters", f"{model['parameters']:,}" if model["parameters"] else "n/a"],
        ["visits per patient", evaluation.calibration_note or "not calibrated"],
    ]
    model_rows += [[k, json.dumps(v)] for k, v in (model.get("training") or {}).items()]
    model_rows += [
        [f"config.{k}", json.dumps(v)] for k, v in (model.get("config") or {}).items()
    ]
    timing_rows = [[k, f"{v:.1f}"] for k, v in evaluation.timings.items()]
    return "\n".join(
        [
            _table(header, rows),
            "<h3>Model</h3>",
            _table(["fact", "value"], model_rows),
            "<h3>Evaluation time (seconds)</h3>",
            _table(["suite", "seconds"], timing_rows),
        ]
    )
