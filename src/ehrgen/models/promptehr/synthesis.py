"""PromptEHR's generation modes, on top of the visit sampler.

* :func:`generate`: patients from scratch. Baseline features come from the conditions,
  the rest from the training population in aggregate; visit t is decoded from visits
  1..t-1 and the prompts; the model ends each patient (``<eos>``), capped by
  ``max_visits``. Nothing is copied from a real patient.
* :func:`continue_patients`: ``n_visits`` more visits for each real patient
  (longitudinal imputation).
* :func:`impute_modality`: one modality of one visit, from the history and the rest of
  the visit (cross-modal imputation, the cloze prompt of training).
* :func:`complete_visits`: a visit's given codes are kept and the rest of the visit is
  decoded around them.
* :func:`generate_from_seeds`: the reference implementation's way: each real patient's
  baseline features and first visit as the prompt. It copies real data by design and
  leaks far more than generation from scratch: do not release its output as is.

New patients get ids in the reserved synthetic range
(:data:`ehrgen.models.trained.SYNTHETIC_ID_BASE` up), which no real patient may hold;
imputation keeps the ids of the patients it completes (they are the user's own).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.generation import GenerationConfig, VisitSampler
from ehrgen.models.population import Population
from ehrgen.models.promptehr.streaming import stream_patients
from ehrgen.models.trained import (
    synthetic_ids,
    synthetic_metadata,
    with_times_and_values,
)
from ehrgen.tokens.grammar import VisitGrammar
from ehrgen.tokens.tokenizer import CodeTokenizer

__all__ = [
    "calibrate_end",
    "complete_visits",
    "continue_patients",
    "generate_from_seeds",
    "impute_modality",
    "patients_per_call",
    "sample_patients",
]

Progress = Callable[[int], None]

# Batches of patients handed to the streaming decoder at once: it refills a slot as
# soon as its patient ends, so a batch stays full until the last few patients.
STREAMED_BATCHES = 8


@dataclass
class Context:
    """What the modes need from a fitted PromptEHR."""

    model: Any  # PromptBart
    tokenizer: CodeTokenizer
    population: Population
    max_source_length: int
    # Added to the <eos> logit by the number of visits so far (the last entry for
    # more); None: the model's own end-of-patient probabilities.
    end_bias: np.ndarray | None = None
    # The model of visit gaps and lab values (None: population gaps, no values).
    time_values: Any = None

    def end_biases(self, lengths: Sequence[int]) -> np.ndarray:
        """(rows,) the calibration bias of rows with these numbers of visits."""
        assert self.end_bias is not None
        index = np.minimum(np.asarray(lengths, dtype=np.int64), len(self.end_bias) - 1)
        return self.end_bias[index]

    @property
    def schema(self):
        return self.population.schema


# --------------------------------------------------------------------------- scratch


def check_visit_fits(ctx: Context, generation: GenerationConfig) -> None:
    """The longest visit the grammar allows must fit the decoder's positions after
    the prompts and ``<bos>``."""
    net = ctx.model
    room = net.config.max_position_embeddings - net.n_prompts - 1
    per_modality = generation.max_codes_per_modality
    longest = VisitGrammar(ctx.tokenizer).max_visit_length(per_modality)
    if longest > room:
        most = (room - 2) // len(ctx.tokenizer.modalities) - 2
        raise ConfigError(
            f"A visit of up to {per_modality} codes per modality takes {longest} "
            f"tokens; this model's decoder has room for {room} (max_position_"
            f"embeddings {net.config.max_position_embeddings}). Set "
            f"GenerationConfig.max_codes_per_modality to {most} or less."
        )


def _streams(ctx: Context, generation: GenerationConfig) -> bool:
    return generation.use_cache and ctx.model.objective == "one-pass"


def patients_per_call(ctx: Context, generation: GenerationConfig) -> int:
    """How many patients to decode in one call: one batch, or several for the
    streaming decoder, whose batch stays full while patients are waiting (handed
    one batch at a time, it would run the last steps of every batch nearly empty)."""
    streamed = STREAMED_BATCHES if _streams(ctx, generation) else 1
    return generation.batch_size * streamed


def sample_patients(
    ctx: Context,
    statics: Sequence[Mapping[str, Any]],
    generation: GenerationConfig,
    generator: torch.Generator,
) -> list[list[Visit]]:
    """The visits of a batch of new patients with these baseline features, from
    scratch, the model deciding how many (see the module docstring)."""
    histories: list[list[list[int]]] = [[] for _ in statics]
    _extend(
        ctx,
        histories,
        statics,
        generation,
        generator,
        generation.max_visits,
        must_continue=0,
    )
    return [[_decode_visit(ctx, tokens) for tokens in h] for h in histories]


def _extend(
    ctx: Context,
    histories: list[list[list[int]]],
    statics: Sequence[Mapping[str, Any]],
    generation: GenerationConfig,
    generator: torch.Generator,
    max_new: int,
    must_continue: int,
) -> None:
    """Append up to ``max_new`` visits to each history; a patient may end (``<eos>``)
    once it has a visit and ``must_continue`` new visits."""
    check_visit_fits(ctx, generation)
    categorical, numerical = _features(ctx, statics)
    if _streams(ctx, generation):
        # Histories encoded once, visits appended to the cache as they close.
        histories[:] = stream_patients(
            ctx, categorical, numerical, generation, generator, histories,
            min_new=must_continue, max_new=max_new,
        )  # fmt: skip
        return
    sampler = VisitSampler(ctx.model, ctx.tokenizer, generation, generator)
    active = list(range(len(histories)))
    for step in range(max_new):
        if not active:
            break
        sources = [_history_source(ctx, histories[i]) for i in active]
        allow_end = np.array(
            [step >= must_continue and len(histories[i]) > 0 for i in active]
        )
        bias = None
        if generation.calibrated_length and ctx.end_bias is not None:
            bias = ctx.end_biases([len(histories[i]) for i in active])
        out = sampler.visits(
            sources, categorical[active], numerical[active], allow_end, end_bias=bias
        )
        still = []
        for i, tokens in zip(active, out):
            if tokens is not None:
                histories[i].append(tokens)
                still.append(i)
        active = still


# --------------------------------------------------------------------------- length


def calibrate_end(
    ctx: Context,
    visit_counts: np.ndarray,
    generation: GenerationConfig,
    n_samples: int,
    rounds: int,
    seed: int,
) -> np.ndarray:
    """Per number of visits so far, a bias on the ``<eos>`` logit that makes the
    visits per generated patient follow ``visit_counts`` (the training cohort's).

    Each round generates ``n_samples`` patients with the current biases and moves
    each position's bias by the logit difference between the real and the generated
    hazard, P(T = t | T >= t), both smoothed by half a patient. Positions that fewer
    than 20 real or generated patients reach keep the bias of the last position that
    is estimated.
    """
    cap = generation.max_visits
    real = np.minimum(np.asarray(visit_counts, dtype=np.int64), cap)
    bias = np.zeros(cap + 1)
    ctx.end_bias = bias
    for round_ in range(rounds):
        fake = _sampled_visit_counts(ctx, n_samples, generation, seed + round_)
        last = 0.0
        for t in range(1, cap):
            reach_real, reach_fake = (real >= t).sum(), (fake >= t).sum()
            if min(reach_real, reach_fake) < 20:
                bias[t:] = np.where(bias[t:] == 0, last, bias[t:])
                break
            h_real = ((real == t).sum() + 0.5) / (reach_real + 1)
            h_fake = ((fake == t).sum() + 0.5) / (reach_fake + 1)
            bias[t] = np.clip(bias[t] + _logit(h_real) - _logit(h_fake), -6, 6)
            last = bias[t]
        ctx.end_bias = bias
    return bias


def _sampled_visit_counts(
    ctx: Context, n: int, generation: GenerationConfig, seed: int
) -> np.ndarray:
    """(n,) visits per patient of ``n`` patients sampled from scratch."""
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    statics = ctx.population.sample_static([{}] * n, rng)
    counts: list[int] = []
    size = patients_per_call(ctx, generation)
    for start in range(0, n, size):
        chunk = statics[start : start + size]
        counts += [len(v) for v in sample_patients(ctx, chunk, generation, generator)]
    return np.asarray(counts)


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


# --------------------------------------------------------------------------- partial


def continue_patients(
    ctx: Context,
    cohort: Cohort,
    n_visits: int,
    generation: GenerationConfig,
    seed: int,
    progress: Progress | None = None,
) -> Cohort:
    """Each patient with ``n_visits`` more visits decoded after its own."""
    if not isinstance(n_visits, int) or n_visits < 1:
        raise ConfigError(
            f"The 'n_visits' parameter must be an int >= 1. Got {n_visits!r}."
        )
    _check_cohort(ctx, cohort)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    patients = list(cohort)
    out = []
    size = patients_per_call(ctx, generation)
    for start in range(0, len(patients), size):
        chunk = patients[start : start + size]
        histories = [_encoded(ctx, p.visits) for p in chunk]
        before = [len(h) for h in histories]
        _extend(
            ctx,
            histories,
            [p.static for p in chunk],
            generation,
            generator,
            n_visits,
            must_continue=n_visits,
        )
        for patient, history, n in zip(chunk, histories, before):
            new = [_decode_visit(ctx, tokens) for tokens in history[n:]]
            out.append(
                _with_visits(
                    patient,
                    list(patient.visits) + new,
                    ctx,
                    rng,
                    cohort.times_are_placeholders,
                )
            )
        if progress:
            progress(len(chunk))
    continued = Cohort.from_patients(
        out, cohort.schema, metadata=_metadata(cohort, "continue")
    ).with_units(cohort.units())
    if ctx.time_values is None or cohort.times_are_placeholders:
        return continued
    return _new_visits_timed(ctx, continued, np.diff(cohort.visit_offsets), rng)


def _new_visits_timed(
    ctx: Context, cohort: Cohort, n_real: np.ndarray, rng: np.random.Generator
) -> Cohort:
    """Continued patients whose new visits (after the first ``n_real`` of each) get
    gaps and lab values from the model of gaps and values; real visits keep their
    own times and values."""
    sampled = ctx.time_values.annotate(cohort, rng)
    starts = np.repeat(cohort.visit_offsets[:-1], np.diff(cohort.visit_offsets))
    new = np.arange(cohort.n_visits) - starts >= np.repeat(
        n_real, np.diff(cohort.visit_offsets)
    )
    gaps = np.zeros(cohort.n_visits, dtype="timedelta64[us]")
    gaps[1:] = np.diff(sampled.visit_times)
    elapsed = np.cumsum(np.where(new, gaps, np.timedelta64(0, "us")))
    elapsed = elapsed - elapsed[starts]  # real visits come first: 0 up to the last
    last_real = cohort.visit_offsets[:-1] + np.asarray(n_real) - 1
    anchor = np.repeat(cohort.visit_times[last_real], np.diff(cohort.visit_offsets))
    times = np.where(new, anchor + elapsed, cohort.visit_times)
    if sampled.event_values is None:
        return cohort.replace(visit_times=times)
    values = (
        np.full(cohort.n_events, np.nan, np.float32)
        if cohort.event_values is None
        else cohort.event_values.copy()
    )
    in_new = new[cohort.event_visit]
    values[in_new] = sampled.event_values[in_new]
    return cohort.replace(
        visit_times=times, event_values=values, code_units=sampled.code_units
    )


def impute_modality(
    ctx: Context,
    cohort: Cohort,
    visit_index: int,
    modality: str,
    generation: GenerationConfig,
    seed: int,
    progress: Progress | None = None,
) -> Cohort:
    """Replace ``modality`` in visit ``visit_index`` (negative counts from the end) of
    every patient that has that visit; nothing else changes."""
    check_visit_fits(ctx, generation)
    names = ctx.tokenizer.modalities
    if modality not in names:
        raise ConfigError(
            f"Unknown modality {modality!r}; the model's are {list(names)}."
        )
    k = names.index(modality)
    sampler = VisitSampler(
        ctx.model, ctx.tokenizer, generation, torch.Generator().manual_seed(seed)
    )

    def new_visits(batch: list[tuple[Patient, int]]) -> list[Visit]:
        sources = [
            _history_source(
                ctx, _encoded(ctx, p.visits[:t]), _cloze(ctx, p.visits[t], k)
            )
            for p, t in batch
        ]
        categorical, numerical = _features(ctx, [p.static for p, _ in batch])
        codes = sampler.blocks(sources, categorical, numerical, k)
        return [
            Visit(
                {**p.visits[t].events, modality: tuple(_code_values(ctx, k, ids))},
                p.visits[t].time,
                # The other modalities' results stay; the new codes get theirs
                # from the model of gaps and values (_rewrite_visits).
                {m: v for m, v in p.visits[t].values.items() if m != modality},
            )
            for (p, t), ids in zip(batch, codes)
        ]

    return _rewrite_visits(
        ctx, cohort, visit_index, generation, progress, "impute", new_visits, seed,
        replaced=modality,
    )  # fmt: skip


def complete_visits(
    ctx: Context,
    cohort: Cohort,
    visit_index: int,
    generation: GenerationConfig,
    seed: int,
    progress: Progress | None = None,
) -> Cohort:
    """Keep the codes of visit ``visit_index`` and decode the rest of it around them."""
    check_visit_fits(ctx, generation)
    tok, names = ctx.tokenizer, ctx.tokenizer.modalities
    sampler = VisitSampler(
        ctx.model, tok, generation, torch.Generator().manual_seed(seed)
    )

    def forced_codes(visit: Visit) -> dict[int, list[int]]:
        known = {m: [tok.code_id(m, c) for c in visit.codes(m)] for m in names}
        return {
            k: [i for i in known[m] if i != tok.unk_id]
            for k, m in enumerate(names)
            if visit.codes(m)
        }

    def new_visits(batch: list[tuple[Patient, int]]) -> list[Visit]:
        sources = [_history_source(ctx, _encoded(ctx, p.visits[:t])) for p, t in batch]
        categorical, numerical = _features(ctx, [p.static for p, _ in batch])
        forced = [forced_codes(p.visits[t]) for p, t in batch]
        out = sampler.visits(
            sources, categorical, numerical, np.zeros(len(batch), bool), forced
        )
        visits = []
        for (p, t), tokens in zip(batch, out):
            given, sampled = p.visits[t], _decode_visit(ctx, tokens or [])
            # Given codes first (out-of-vocabulary ones too), then the new ones.
            events = {m: given.codes(m) + sampled.codes(m) for m in names}
            visits.append(Visit(events, given.time, given.values))
        return visits

    return _rewrite_visits(
        ctx, cohort, visit_index, generation, progress, "complete", new_visits, seed
    )


def _rewrite_visits(
    ctx: Context,
    cohort: Cohort,
    visit_index: int,
    generation: GenerationConfig,
    progress: Progress | None,
    mode: str,
    new_visits: Callable[[list[tuple[Patient, int]]], list[Visit]],
    seed: int,
    replaced: str | None = None,
) -> Cohort:
    """Replace visit ``visit_index`` of every patient that has it, batch by batch;
    the codes it decodes (all of modality ``replaced``, if given) get results from
    the model of gaps and values."""
    _check_cohort(ctx, cohort)
    patients = list(cohort)
    targets = [i for i, p in enumerate(patients) if _has_visit(p, visit_index)]
    given = {}  # patient -> (rewritten visit, its given codes)
    for start in range(0, len(targets), generation.batch_size):
        rows = targets[start : start + generation.batch_size]
        batch = [(patients[i], _index(patients[i], visit_index)) for i in rows]
        for i, (patient, t), visit in zip(rows, batch, new_visits(batch)):
            kept = patient.visits[t].events
            given[i] = (t, {m: c for m, c in kept.items() if m != replaced})
            patients[i] = _replace_visit(patient, t, visit)
        if progress:
            progress(len(rows))
    rewritten = Cohort.from_patients(
        patients, cohort.schema, metadata=_metadata(cohort, mode)
    ).with_units(cohort.units())
    if ctx.time_values is None:
        return rewritten
    return _new_codes_measured(ctx, rewritten, given, np.random.default_rng(seed))


def _new_codes_measured(
    ctx: Context, cohort: Cohort, given: dict, rng: np.random.Generator
) -> Cohort:
    """The rewritten visits' new lab codes get values from the model of gaps and
    values; every other event keeps its own value (or none)."""
    sampled = ctx.time_values.annotate(cohort, rng)
    if sampled.event_values is None:
        return cohort
    values = (
        np.full(cohort.n_events, np.nan, np.float32)
        if cohort.event_values is None
        else cohort.event_values.copy()
    )
    modalities = cohort.schema.modalities
    for p, (t, events) in given.items():
        visit = cohort.visit_offsets[p] + t
        for e in range(cohort.event_offsets[visit], cohort.event_offsets[visit + 1]):
            code = cohort.event_codes[e]
            modality = modalities[cohort.code_modality[code]]
            if cohort.code_values[code] not in events.get(modality, ()):
                values[e] = sampled.event_values[e]
    return cohort.replace(event_values=values, code_units=sampled.code_units)


def _encoded(ctx: Context, visits: Sequence[Visit]) -> list[list[int]]:
    return [ctx.tokenizer.encode_visit(v) for v in visits]


def generate_from_seeds(
    ctx: Context,
    cohort: Cohort,
    n_per_seed: int,
    generation: GenerationConfig,
    seed: int,
    progress: Progress | None = None,
) -> Cohort:
    """``n_per_seed`` patients per real patient, each starting from that patient's
    baseline features and first visit (see the module docstring: this leaks)."""
    if not isinstance(n_per_seed, int) or n_per_seed < 1:
        raise ConfigError(
            f"The 'n_per_seed' parameter must be an int >= 1. Got {n_per_seed!r}."
        )
    _check_cohort(ctx, cohort)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    seeds = [p for p in cohort for _ in range(n_per_seed)]
    statics, visits = [], []
    size = patients_per_call(ctx, generation)
    for start in range(0, len(seeds), size):
        chunk = seeds[start : start + size]
        histories = [[ctx.tokenizer.encode_visit(p.visits[0])] for p in chunk]
        _extend(
            ctx,
            histories,
            [p.static for p in chunk],
            generation,
            generator,
            generation.max_visits - 1,
            must_continue=0,
        )
        statics += [dict(p.static) for p in chunk]
        visits += histories
        if progress:
            progress(len(chunk))
    synthetic = _cohort(ctx, synthetic_ids(len(seeds)), statics, visits, rng)
    synthetic.metadata["leaks_seed_patients"] = True
    return synthetic


# --------------------------------------------------------------------------- helpers


def _features(ctx: Context, statics: Sequence[Mapping[str, Any]]):
    """(B, n_cat) category indices (cardinality = unknown) and (B, n_num) values."""
    schema = ctx.schema
    categorical = torch.tensor(
        [
            [
                list(cats).index(s[name]) if s.get(name) in cats else len(cats)
                for name, cats in schema.categorical.items()
            ]
            for s in statics
        ],
        dtype=torch.long,
    ).reshape(len(statics), len(schema.categorical))
    numerical = torch.tensor(
        [
            [
                float(s[name]) if s.get(name) is not None else float("nan")
                for name in schema.numerical
            ]
            for s in statics
        ],
        dtype=torch.float32,
    ).reshape(len(statics), len(schema.numerical))
    return categorical, numerical


def _history_source(
    ctx: Context, history: Sequence[Sequence[int]], partial: Sequence[int] | None = None
) -> np.ndarray:
    """``<bos>`` + the newest visits that fit (+ a partial visit) + ``<eos>``."""
    tok, budget = ctx.tokenizer, ctx.max_source_length - 2
    pieces: list[Sequence[int]] = []
    newest_first = ([partial] if partial is not None else []) + list(reversed(history))
    for piece in newest_first:
        if len(piece) > budget:
            if not pieces:  # the newest piece alone is too long: keep its start
                pieces.append([*list(piece[: budget - 1]), tok.visit_close_id])
            break
        pieces.append(piece)
        budget -= len(piece)
    body = [t for piece in reversed(pieces) for t in piece]
    return np.array([tok.bos_id, *body, tok.eos_id], dtype=np.int64)


def _cloze(ctx: Context, visit: Visit, k: int) -> list[int]:
    """Visit tokens with modality k's codes replaced by ``<k> <mask> </k>``."""
    tok = ctx.tokenizer
    ids = [tok.visit_open_id]
    for index, m in enumerate(tok.modalities):
        if index == k:
            ids += [tok.open_ids[m], tok.mask_id, tok.close_ids[m]]
        elif visit.codes(m):
            ids += [
                tok.open_ids[m],
                *(tok.code_id(m, c) for c in visit.codes(m)),
                tok.close_ids[m],
            ]
    return [*ids, tok.visit_close_id]


def _decode_visit(ctx: Context, tokens: Sequence[int]) -> Visit:
    patient = ctx.tokenizer.decode(tokens)
    return patient.visits[0] if patient.visits else Visit({})


def _code_values(ctx: Context, k: int, ids: Sequence[int]) -> list[str]:
    m = ctx.tokenizer.modalities[k]
    start = ctx.tokenizer.code_ranges[m][0]
    return [ctx.tokenizer.codes[m][i - start] for i in ids]


def _cohort(ctx, ids, statics, visits, rng) -> Cohort:
    times = ctx.population.sample_times([len(v) for v in visits], rng)
    patients = []
    for p, (pid, static, history) in enumerate(zip(ids, statics, visits)):
        decoded = [_decode_visit(ctx, tokens) for tokens in history]
        if times is not None:
            decoded = [Visit(v.events, t) for v, t in zip(decoded, times[p])]
        patients.append(Patient(pid, static, tuple(decoded)))
    metadata = synthetic_metadata(len(ids), "PromptEHR")
    cohort = Cohort.from_patients(patients, ctx.schema, metadata=metadata)
    return with_times_and_values(cohort, ctx.time_values, rng)


def _with_visits(
    patient: Patient, visits: list[Visit], ctx, rng, placeholders
) -> Patient:
    """The patient with new visits appended, timed after its last real visit."""
    if placeholders or patient.visits[-1].time is None:
        return Patient(
            patient.patient_id, patient.static, tuple(Visit(v.events) for v in visits)
        )
    timed, last = list(visits[: len(patient.visits)]), patient.visits[-1].time
    for t in range(len(patient.visits), len(visits)):
        last = last + timedelta(seconds=round(max(ctx.population.gap(t, rng), 1.0)))
        timed.append(Visit(visits[t].events, last))
    return Patient(patient.patient_id, patient.static, tuple(timed))


def _replace_visit(patient: Patient, t: int, visit: Visit) -> Patient:
    visits = list(patient.visits)
    visits[t] = visit
    return Patient(patient.patient_id, patient.static, tuple(visits))


def _has_visit(patient: Patient, index: int) -> bool:
    return -len(patient.visits) <= index < len(patient.visits)


def _index(patient: Patient, index: int) -> int:
    return index % len(patient.visits)


def _check_cohort(ctx: Context, cohort: Cohort) -> None:
    if cohort.schema != ctx.schema:
        raise SchemaError(
            f"The cohort's schema {cohort.schema} differs from the model's "
            f"{ctx.schema}; use a cohort of the same modalities and baseline features."
        )
    if len(cohort) == 0:
        raise SchemaError("The cohort is empty: there is no patient to work from.")


def _metadata(cohort: Cohort, mode: str) -> dict[str, Any]:
    return {**cohort.metadata, "promptehr_mode": mode}
