"""When visits happen and what labs show, learned from a cohort and sampled for
synthetic patients given their codes.

Every generator writes codes; this model, trained beside it on the same cohort, adds
what the codes leave out:

* **the gap before each visit**, one of 14 quantile bins of the training gaps
  (:class:`~ehrgen.models.time_values.bins.QuantileBins`), given that visit's codes,
  the previous visit's codes, all earlier codes, the visit's index, the previous gap
  and the baseline features: a visit after an acute event can come sooner;
* **each lab's result**, one of 14 quantile bins of that lab's training
  results or "no value", given the same context (not the lab's earlier results:
  see :mod:`.network`): creatinine can be high in a patient with a kidney-disease
  code.

A bin becomes a number drawn inside it from the training distribution's shape; visit
dates follow from the first visit's date (drawn from the training population, as
before) and the gaps. Labs with fewer than ``min_values`` training results, and
cohorts without real times, get no model of their own: such labs carry no value, and
such cohorts keep placeholder times.

Why a separate model rather than time and value tokens inside each generator's
sequence: it gives every registered generator (PromptEHR, HALO and the baselines)
times and values through one tested path, leaves the sequence every generator reads
(and its code perplexity, lpl and mpl) unchanged, and costs PromptEHR no extra
tokens, which matters since PromptEHR's training cost is what holds it back. What it
gives up: a generator's later codes do not condition on the values and gaps sampled
for earlier visits (the reverse direction is kept).

Perplexities of the gap and value classes on held-out patients are the model's own
figures (:meth:`TimeValueModel.perplexity`); code perplexity stays the generator's.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ehrgen._early_stopping import BestWeights
from ehrgen.data import Cohort, CohortSchema
from ehrgen.models.time_values.bins import QuantileBins, bin_levels
from ehrgen.models.time_values.config import TimeValueConfig

__all__ = ["TimeValueConfig", "TimeValueModel", "fit_time_values"]

logger = logging.getLogger(__name__)

_DAY = 86400.0
_NO_GAP = -100  # the loss's ignore index
WEIGHTS_FILE = "time_values.safetensors"


@dataclass
class TimeValueModel:
    """A fitted time-and-value model (build one with :func:`fit_time_values`).

    Attributes:
        config: its settings.
        schema: the training cohort's schema (modalities, baseline features).
        codes: ``(modality, code)`` of the codes it reads; id ``i + 1`` is
            ``codes[i]``, 0 any other.
        gap_bins: the bins of the gap in days (None: no gap model).
        labs: ``(modality, code)`` of the labs with a value model.
        lab_bins: their bins, in the same order.
        lab_units: their units (None where the training cohort had none), given to
            the codes of generated cohorts.
        network: a ``torch.nn.ModuleDict`` of
            :class:`~ehrgen.models.time_values.network.TimeValueNet`: ``"gap"``
            and ``"lab"``, each present when the model learns it.
        facts: held-out perplexities and training sizes.
    """

    config: TimeValueConfig
    schema: CohortSchema
    codes: tuple[tuple[str, str], ...]
    gap_bins: QuantileBins | None
    labs: tuple[tuple[str, str], ...]
    lab_bins: tuple[QuantileBins, ...]
    network: Any
    facts: dict[str, Any] = field(default_factory=dict)
    lab_units: tuple[str | None, ...] = ()

    def __repr__(self) -> str:
        gaps = "gaps" if self.gap_bins is not None else "no gaps"
        return f"TimeValueModel({gaps}, {len(self.labs)} labs with values)"

    def held_out_summary(self) -> str:
        """The held-out perplexities in words ("" when none was measured)."""
        parts = []
        if "gap_perplexity" in self.facts:
            parts.append(
                f"gaps {self.facts['gap_perplexity']:.2f} of {self.n_classes} classes"
            )
        if "value_perplexity" in self.facts:
            parts.append(
                f"lab values {self.facts['value_perplexity']:.2f} of "
                f"{self.n_classes + 1}"
            )
        return f"held-out perplexity: {', '.join(parts)}" if parts else ""

    @property
    def gap_classes(self) -> int:
        """How many gap classes the network has (0 without a gap model)."""
        return 0 if self.gap_bins is None else self.n_classes

    @property
    def n_classes(self) -> int:
        """Bins per quantity (the value classes add one: "no value")."""
        return len(bin_levels(self.config.n_bins, self.config.tails)) + 1

    # ---- sampling

    def annotate(
        self, cohort: Cohort, rng: np.random.Generator, chunk_patients: int = 2048
    ) -> Cohort:
        """The cohort with visit gaps and lab values sampled from the model.

        Each patient keeps its first visit's time; later times follow from sampled
        gaps (when the model has a gap model and the cohort real times). Events of
        a lab with a value model get a sampled value or none; other events none.
        """
        import torch

        arrays = _Arrays(self, cohort)
        do_gaps = self.gap_bins is not None and not cohort.times_are_placeholders
        if not do_gaps and not self.labs:
            return cohort
        gap_days = np.zeros(cohort.n_visits)
        values = np.full(cohort.n_events, np.nan, dtype=np.float32)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        network = self.network.eval()
        with torch.no_grad():
            for start in range(0, len(cohort), chunk_patients):
                patients = np.arange(start, min(start + chunk_patients, len(cohort)))
                batch = arrays.batch(patients)
                self._sample_batch(batch, network, generator, rng, gap_days, values)
        times = cohort.visit_times
        if do_gaps:
            times = _times_from_gaps(cohort, gap_days)
        if not self.labs:
            return cohort.replace(visit_times=times, event_values=None)
        units = {lab: unit for lab, unit in zip(self.labs, self.lab_units) if unit}
        return cohort.replace(visit_times=times, event_values=values).with_units(units)

    def _sample_batch(self, batch, network, generator, rng, gap_days, values) -> None:
        """Sample one batch visit index by visit index: a visit's gap is read by the
        next visit's networks as its previous gap."""
        import torch

        n_classes = self.n_classes
        codes = torch.as_tensor(batch.codes)
        prefixes = {name: net.code_prefix(codes) for name, net in network.items()}
        previous_gap = np.full(len(batch.visits), self.gap_classes, dtype=np.int64)
        for t in range(int(batch.index.max()) + 1 if len(batch.index) else 0):
            rows = np.flatnonzero(batch.index == t)
            inputs = (
                torch.as_tensor(batch.ranges[rows]),
                torch.as_tensor(batch.index[rows]),
                torch.as_tensor(previous_gap[rows]),
                batch.categorical[rows],
                batch.numerical[rows],
            )
            if "gap" in network and t > 0:
                net = network["gap"]
                states = net.visit_states(prefixes["gap"], *inputs)
                chosen = _sample(net.gap_logits(states), generator)
                gap_days[batch.visits[rows]] = self.gap_bins.draw(
                    chosen, rng.random(len(rows))
                )
                # A patient's next visit (index t + 1, the next row) reads this gap.
                nxt = np.minimum(rows + 1, len(batch.visits) - 1)
                follows = (rows + 1 < len(batch.visits)) & (batch.index[nxt] == t + 1)
                previous_gap[nxt[follows]] = chosen[follows]
            if "lab" not in network:
                continue
            lab_rows = np.flatnonzero(np.isin(batch.lab_visit, rows))
            if not len(lab_rows):
                continue
            net = network["lab"]
            states = net.visit_states(prefixes["lab"], *inputs)
            local = np.searchsorted(rows, batch.lab_visit[lab_rows])
            labs = batch.lab[lab_rows]
            logits = net.value_logits(
                states[torch.as_tensor(local)], torch.as_tensor(labs)
            )
            chosen = _sample(logits, generator)
            measured = chosen < n_classes
            labs, chosen = labs[measured], chosen[measured]
            u, drawn = rng.random(len(labs)), np.empty(len(labs), np.float32)
            for lab in np.unique(labs).tolist():
                mine = labs == lab
                drawn[mine] = self.lab_bins[lab].draw(chosen[mine], u[mine])
            values[batch.lab_event[lab_rows][measured]] = drawn

    # ---- scoring

    def perplexity(self, cohort: Cohort) -> dict[str, float | int | None]:
        """Held-out figures on ``cohort``: perplexity of the gap classes and of the
        value classes (:attr:`n_classes` + 1 per lab: its bins and "no value"),
        with the number of gaps and lab events scored. A uniform guess scores
        :attr:`n_classes` (gaps) and :attr:`n_classes` + 1 (values); a figure
        with nothing to score is None."""
        import torch

        # Ties spread at random, as for training targets, at a fixed seed.
        arrays = _Arrays(self, cohort, np.random.default_rng(0))
        totals = {"gap": np.zeros(2), "lab": np.zeros(2)}
        network = self.network.eval()
        with torch.no_grad():
            for start in range(0, len(cohort), 2048):
                batch = arrays.batch(np.arange(start, min(start + 2048, len(cohort))))
                for name, net in network.items():
                    loss, count = _loss(net, name, batch)
                    totals[name] += [float(loss), count]
        return {
            "gap_perplexity": _exp(*totals["gap"]),
            "gaps_scored": int(totals["gap"][1]),
            "value_perplexity": _exp(*totals["lab"]),
            "lab_events_scored": int(totals["lab"][1]),
        }

    # ---- persistence

    def to_dict(self) -> dict[str, Any]:
        """Everything but the weights, JSON-ready."""
        return {
            "config": self.config.to_dict(),
            "codes": [list(c) for c in self.codes],
            "gap_bins": None if self.gap_bins is None else self.gap_bins.to_dict(),
            "labs": [list(c) for c in self.labs],
            "lab_bins": [b.to_dict() for b in self.lab_bins],
            "lab_units": list(self.lab_units),
            "facts": self.facts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], schema: CohortSchema) -> TimeValueModel:
        """The model of :meth:`to_dict`, with untrained weights (load them with
        :meth:`load_weights`)."""
        config = TimeValueConfig.from_dict(data["config"])
        gaps = data.get("gap_bins")
        model = cls(
            config,
            schema,
            tuple((str(m), str(c)) for m, c in data["codes"]),
            None if gaps is None else QuantileBins.from_dict(gaps),
            tuple((str(m), str(c)) for m, c in data["labs"]),
            tuple(QuantileBins.from_dict(b) for b in data["lab_bins"]),
            None,
            dict(data.get("facts") or {}),
            tuple(data.get("lab_units") or [None] * len(data["labs"])),
        )
        model.network = _network(model)
        return model

    def save_weights(self, folder: str | os.PathLike[str]) -> Path:
        """Write the weights as ``time_values.safetensors`` in ``folder``."""
        from safetensors.torch import save_model

        from ehrgen._io import atomic_file

        path = Path(folder) / WEIGHTS_FILE
        with atomic_file(path, overwrite=True) as tmp:
            save_model(self.network, str(tmp))
        return path

    def load_weights(self, folder: str | os.PathLike[str]) -> None:
        """Read the weights :meth:`save_weights` wrote."""
        from ehrgen.models.base import load_weights

        load_weights(self.network, Path(folder), WEIGHTS_FILE)
        self.network.eval()


# --------------------------------------------------------------------------- fitting


def fit_time_values(
    train: Cohort,
    config: TimeValueConfig | None = None,
    val: Cohort | None = None,
) -> TimeValueModel | None:
    """Fit a :class:`TimeValueModel` on ``train``; None when there is nothing to
    learn (no real times or too few gaps, and no lab with enough values, or both
    turned off in ``config``).

    With ``val`` (or, without it, a tenth of the training patients held out when
    there are at least 50), each network keeps its epoch with the best held-out
    loss and stops after ``config.patience`` epochs without progress, and the
    held-out perplexities are recorded in ``facts``; with fewer patients and no
    ``val``, every epoch runs. A generator's ``fit`` passes its validation cohort
    and its training seed (which replaces ``config.seed``).
    """
    import torch

    config = config or TimeValueConfig()
    gap_bins = _gap_bins(train, config) if config.times else None
    labs, lab_bins = _labs(train, config) if config.values else ((), ())
    if gap_bins is None and not labs:
        return None
    units = train.units()
    model = TimeValueModel(
        config, train.schema, _vocabulary(train, config.max_codes), gap_bins,
        labs, tuple(lab_bins), None, lab_units=tuple(units.get(lab) for lab in labs),
    )  # fmt: skip
    rng = np.random.default_rng(config.seed)
    fit_on, held_out = train, val
    if held_out is None and len(train) >= 50:
        order = rng.permutation(len(train))
        cut = len(train) // 10
        held_out, fit_on = train.select(order[:cut]), train.select(order[cut:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model.network = _network(model, fit_on)
        arrays = _Arrays(model, fit_on, rng)
        checked = None
        if held_out is not None:
            checked = _Arrays(model, held_out, np.random.default_rng(0))
        epochs = {
            name: _train(net, name, config, arrays, checked, rng)
            for name, net in model.network.items()
        }
    facts: dict[str, Any] = {"train_patients": len(fit_on), "epochs": epochs}
    if held_out is not None:
        figures = model.perplexity(held_out)
        facts.update(
            held_out_patients=len(held_out),
            **{k: v for k, v in figures.items() if v is not None},
        )
    model.facts = facts
    return model


def _gap_bins(cohort: Cohort, config: TimeValueConfig) -> QuantileBins | None:
    if cohort.times_are_placeholders:
        return None
    gaps = _gaps_in_days(cohort)[1]
    if len(gaps) < config.min_values:
        return None
    return QuantileBins.fit(gaps, bin_levels(config.n_bins, config.tails))


def _gaps_in_days(cohort: Cohort) -> tuple[np.ndarray, np.ndarray]:
    """(visits that follow another of their patient, the gap before each in days)."""
    days = cohort.visit_times.astype("datetime64[us]").astype(np.int64) / (_DAY * 1e6)
    later = _visit_index(cohort) > 0
    gaps = np.diff(days, prepend=days[:1] if len(days) else days)
    return np.flatnonzero(later), gaps[later]


def _labs(cohort: Cohort, config: TimeValueConfig):
    if cohort.event_values is None:
        return (), ()
    finite = np.isfinite(cohort.event_values)
    counts = np.bincount(cohort.event_codes[finite], minlength=len(cohort.code_values))
    labs, bins = [], []
    modalities = cohort.schema.modalities
    for code in np.flatnonzero(counts >= config.min_values).tolist():
        chosen = finite & (cohort.event_codes == code)
        labs.append((modalities[cohort.code_modality[code]], cohort.code_values[code]))
        levels = bin_levels(config.n_bins, config.tails)
        bins.append(QuantileBins.fit(cohort.event_values[chosen], levels))
    return tuple(labs), tuple(bins)


def _vocabulary(cohort: Cohort, limit: int) -> tuple[tuple[str, str], ...]:
    counts = np.bincount(cohort.event_codes, minlength=len(cohort.code_values))
    ranked = np.argsort(-counts, kind="stable")[:limit]
    modalities = cohort.schema.modalities
    return tuple(
        (modalities[cohort.code_modality[c]], str(cohort.code_values[c]))
        for c in ranked.tolist()
        if counts[c] > 0
    )


def _network(model: TimeValueModel, train: Cohort | None = None) -> Any:
    """The ``ModuleDict`` of the model's networks (see :class:`TimeValueModel`),
    with the numerical features standardised on ``train`` when given."""
    import torch
    from torch import nn

    from ehrgen.models.time_values.network import TimeValueNet

    schema, config = model.schema, model.config
    tasks = {"gap": model.gap_bins is not None, "lab": bool(model.labs)}
    networks = nn.ModuleDict()
    for name in (name for name, wanted in tasks.items() if wanted):
        networks[name] = TimeValueNet(
            n_codes=len(model.codes),
            cardinalities=[len(c) for c in schema.categorical.values()],
            n_numerical=len(schema.numerical),
            n_gap_bins=model.gap_classes,
            n_value_codes=len(model.labs) if name == "lab" else 0,
            n_value_bins=model.n_classes,
            dim=config.dim,
            hidden=config.hidden,
            dropout=config.dropout,
        )
    if train is not None and schema.numerical:
        numbers = np.stack([train.static[n] for n in schema.numerical], 1)
        numbers = np.where(np.isfinite(numbers), numbers, np.nan)
        mean = torch.as_tensor(np.nanmean(numbers, 0), dtype=torch.float32)
        std = torch.as_tensor(np.nanstd(numbers, 0), dtype=torch.float32)
        for net in networks.values():
            net.static.set_standardisation(mean, std)
    return networks


def _train(network, task: str, config: TimeValueConfig, arrays, checked, rng) -> int:
    """Train one network on its task, keeping the epoch with the best held-out
    loss and stopping after ``config.patience`` epochs without progress; return
    the epochs run."""
    import torch

    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    n_patients = len(arrays.cohort)
    keeper = BestWeights(config.patience)
    if checked is not None:
        checked = checked.batch(np.arange(len(checked.cohort)))
        if not _loss(network, task, checked)[1]:
            checked = None  # nothing of this task held out: run every epoch
    epochs_run = 0
    for epochs_run in range(1, config.epochs + 1):  # noqa: B007 (returned)
        network.train()
        order = rng.permutation(n_patients)
        for start in range(0, n_patients, config.batch_patients):
            batch = arrays.batch(np.sort(order[start : start + config.batch_patients]))
            loss, count = _loss(network, task, batch)
            if not count:
                continue
            optimizer.zero_grad()
            (loss / count).backward()
            optimizer.step()
        if checked is None:
            continue
        network.eval()
        with torch.no_grad():
            loss, count = _loss(network, task, checked)
        if keeper.update(network, float(loss) / max(count, 1)):
            break
    keeper.restore(network)
    return epochs_run


def _loss(network, task: str, batch):
    """The summed cross-entropy (nats) of one task on a batch, and its count."""
    import torch
    import torch.nn.functional as F

    prefix = network.code_prefix(torch.as_tensor(batch.codes))
    if task == "gap":
        targets = torch.as_tensor(batch.gap_target)
        count = int((targets != _NO_GAP).sum())
        if not count:
            return prefix.new_zeros(()), 0
    elif not len(batch.lab):
        return prefix.new_zeros(()), 0
    states = network.visit_states(
        prefix,
        torch.as_tensor(batch.ranges),
        torch.as_tensor(batch.index),
        torch.as_tensor(batch.previous_gap),
        batch.categorical,
        batch.numerical,
    )
    if task == "gap":
        logits = network.gap_logits(states)
        loss = F.cross_entropy(logits, targets, ignore_index=_NO_GAP, reduction="sum")
        return loss, count
    logits = network.value_logits(
        states[torch.as_tensor(batch.lab_visit)], torch.as_tensor(batch.lab)
    )
    target = torch.as_tensor(batch.lab_target)
    return F.cross_entropy(logits, target, reduction="sum"), len(batch.lab)


# --------------------------------------------------------------------------- arrays


@dataclass
class _Batch:
    """Arrays of some patients, indexed locally (see :meth:`_Arrays.batch`)."""

    patients: np.ndarray  # (P,) cohort indices
    visits: np.ndarray  # (N,) cohort visit indices
    visit_patient: np.ndarray  # (N,) local patient of each visit
    codes: np.ndarray  # (E,) model code ids of the patients' events
    ranges: np.ndarray  # (N, 3, 2) own / previous / earlier visits' events
    index: np.ndarray  # (N,)
    previous_gap: np.ndarray  # (N,)
    gap_target: np.ndarray  # (N,)
    categorical: Any  # (N, ·) tensor
    numerical: Any  # (N, ·) tensor
    lab_event: np.ndarray  # (L,) cohort event index of each lab event
    lab_visit: np.ndarray  # (L,) local visit
    lab: np.ndarray  # (L,) value-model index
    lab_target: np.ndarray  # (L,) bin, or n_classes for "no value"


class _Arrays:
    """A cohort in the model's terms, computed once; batches are slices of it."""

    def __init__(
        self,
        model: TimeValueModel,
        cohort: Cohort,
        rng: np.random.Generator | None = None,
    ) -> None:
        """``rng`` spreads values tied at bin edges at random (training targets);
        without it they go to the middle bin."""
        n_bins = model.n_classes
        self.cohort = cohort
        modalities = cohort.schema.modalities
        keys = [
            (modalities[m], str(c))
            for m, c in zip(cohort.code_modality.tolist(), cohort.code_values.tolist())
        ]
        own = {code: i + 1 for i, code in enumerate(model.codes)}
        self.codes = np.array([own.get(k, 0) for k in keys], np.int64)[
            cohort.event_codes
        ]
        self.index = _visit_index(cohort)
        gap_target = np.full(cohort.n_visits, _NO_GAP, dtype=np.int64)
        if model.gap_bins is not None and not cohort.times_are_placeholders:
            later, gaps = _gaps_in_days(cohort)
            gap_target[later] = model.gap_bins.bin(gaps, rng)
        self.gap_target = gap_target
        # "No previous gap" is the class after the last one (0 without a gap model).
        self.previous_gap = np.full(cohort.n_visits, model.gap_classes, np.int64)
        later = np.flatnonzero(self.index > 0)
        known = gap_target[later - 1] != _NO_GAP
        self.previous_gap[later[known]] = gap_target[later - 1][known]
        # Lab events, in event order, with their class.
        lab_of_code = {code: i for i, code in enumerate(model.labs)}
        lab_table = np.array([lab_of_code.get(k, -1) for k in keys], np.int64)
        event_lab = lab_table[cohort.event_codes] if len(keys) else np.zeros(0, int)
        self.lab_event = np.flatnonzero(event_lab >= 0)
        self.lab = event_lab[self.lab_event]
        target = np.full(len(self.lab_event), n_bins, dtype=np.int64)
        if cohort.event_values is not None and len(self.lab_event):
            measured = cohort.event_values[self.lab_event]
            finite = np.isfinite(measured)
            for i, bins in enumerate(model.lab_bins):
                chosen = finite & (self.lab == i)
                target[chosen] = bins.bin(measured[chosen], rng)
        self.lab_target = target
        self.event_visit = cohort.event_visit
        event_patient = cohort.visit_patient[self.event_visit]
        self.lab_patient = event_patient[self.lab_event]
        self.lab_offsets = np.searchsorted(
            self.lab_patient, np.arange(len(cohort) + 1), side="left"
        )
        self.categorical = _columns(cohort, cohort.schema.categorical, np.int64)
        self.numerical = _columns(cohort, cohort.schema.numerical, np.float32)

    def batch(self, patients: np.ndarray) -> _Batch:
        import torch

        cohort = self.cohort
        vo, eo = cohort.visit_offsets, cohort.event_offsets
        visits = _concat_ranges(vo[patients], vo[patients + 1])
        counts = np.diff(vo)[patients]
        visit_patient = np.repeat(np.arange(len(patients)), counts)
        first_event = eo[vo[patients]]
        events = _concat_ranges(first_event, eo[vo[patients + 1]])
        sizes = eo[vo[patients + 1]] - first_event
        base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        shift = (base - first_event)[visit_patient]  # cohort event -> batch position
        own = np.stack([eo[visits] + shift, eo[visits + 1] + shift], 1)
        index = self.index[visits]
        previous = np.where(
            (index > 0)[:, None], np.roll(own, 1, axis=0), own[:, :1].repeat(2, 1)
        )
        earlier = np.stack([base[visit_patient], own[:, 0]], 1)
        ranges = np.stack([own, previous, earlier], 1)
        labs = _concat_ranges(
            self.lab_offsets[patients], self.lab_offsets[patients + 1]
        )
        lab_event = self.lab_event[labs]
        # The local visit of each lab event: its visit's rank among the batch visits.
        lab_visit = np.searchsorted(visits, self.event_visit[lab_event])
        rows = visit_patient
        return _Batch(
            patients=patients,
            visits=visits,
            visit_patient=visit_patient,
            codes=self.codes[events],
            ranges=ranges,
            index=index,
            previous_gap=self.previous_gap[visits],
            gap_target=self.gap_target[visits],
            categorical=torch.as_tensor(self.categorical[patients][rows]).long(),
            numerical=torch.as_tensor(self.numerical[patients][rows]).float(),
            lab_event=lab_event,
            lab_visit=lab_visit,
            lab=self.lab[labs],
            lab_target=self.lab_target[labs],
        )


# --------------------------------------------------------------------------- helpers


def _columns(cohort: Cohort, names, dtype) -> np.ndarray:
    """(P, len(names)) the baseline features ``names`` side by side."""
    out = np.zeros((len(cohort), len(names)), dtype=dtype)
    for j, name in enumerate(names):
        out[:, j] = cohort.static[name]
    return out


def _visit_index(cohort: Cohort) -> np.ndarray:
    """(V,) each visit's index within its patient."""
    starts = np.repeat(cohort.visit_offsets[:-1], np.diff(cohort.visit_offsets))
    return np.arange(cohort.n_visits) - starts


def _concat_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    sizes = (hi - lo).astype(np.int64)
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return np.arange(int(sizes.sum()), dtype=np.int64) + starts


def _sample(logits, generator) -> np.ndarray:
    import torch

    probabilities = torch.softmax(logits.float(), -1)
    return torch.multinomial(probabilities, 1, generator=generator)[:, 0].numpy()


def _times_from_gaps(cohort: Cohort, gap_days: np.ndarray) -> np.ndarray:
    """Visit times: each patient's first time (to the microsecond), then the
    cumulative gaps (at least a second each, so times strictly increase)."""
    starts = np.repeat(cohort.visit_offsets[:-1], np.diff(cohort.visit_offsets))
    later = np.arange(cohort.n_visits) > starts
    micros = np.where(later, np.maximum(np.round(gap_days * _DAY * 1e6), 1e6), 0)
    elapsed = np.cumsum(micros.astype(np.int64))
    elapsed -= elapsed[starts] if len(elapsed) else elapsed
    first = cohort.visit_times.astype("datetime64[us]")[starts]
    return first + elapsed.astype("timedelta64[us]")


def _exp(total: float, count: float) -> float | None:
    """exp(mean loss); None when nothing was scored (JSON has no NaN)."""
    return float(math.exp(total / count)) if count else None
