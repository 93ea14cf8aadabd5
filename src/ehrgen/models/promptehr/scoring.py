"""PromptEHR's code scores for lpl and mpl, under the chain and set protocols.

Every score is a log-probability under the softmax restricted to the code's modality.

* longitudinal: the encoder reads visits 1..t-1 (and the prompts read the baseline
  features); for modality m of visit t the decoder is given ``<bos> <v> <m>``. *chain*
  then feeds m's true codes in recorded order with teacher forcing, so code j is
  scored given the history and m's codes 1..j-1 only, never visit t's other
  modalities (the paper's lpl); *set* scores every code of m under the distribution
  after ``<m>``. Training permutes the blocks of target visits
  (``TaskConfig.permute_target_rate``), so ``<bos> <v> <m>`` is a prefix the model
  learnt for every m, not only for the schema's first modality.
* cross-modal: the encoder reads visits 1..t-1 and visit t with modality k replaced by
  the cloze slot ``<k> <mask> </k>`` (the training prompt); the decoder is given
  ``<bos> <k>`` and then, for *chain*, k's true codes with teacher forcing; *set* uses
  the first position's distribution.

The encoder runs once per distinct source in a batch (the modalities of one visit
share theirs under longitudinal scoring). Codes outside the model's vocabulary cannot
be scored: they are left out and counted; codes past the decoder's length
(``max_target_length``) are not scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ehrgen.data import Cohort
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.models.base import PROTOCOLS, CodeScores
from ehrgen.models.promptehr import tasks as task_lib
from ehrgen.tokens.encoded import TokenizedCohort

if TYPE_CHECKING:
    from ehrgen.models.promptehr.synthesis import Context

__all__ = ["score"]


def score(
    ctx: Context, cohort: Cohort, task: str, protocol: str, batch_size: int = 64
) -> CodeScores:
    """Score every true code of ``cohort`` (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"protocol must be one of {list(PROTOCOLS)}. Got {protocol!r}."
        )
    if cohort.schema != ctx.schema:
        raise SchemaError(
            f"The cohort's schema {cohort.schema} differs from the model's "
            f"{ctx.schema}; score a cohort of the same modalities and features."
        )
    data = TokenizedCohort.from_cohort(cohort, ctx.tokenizer)
    config = task_lib.TaskConfig(
        max_source_length=ctx.max_source_length, max_target_length=ctx.max_source_length
    )
    items = _items(data, task)
    rows: list[tuple[int, int, int, str, float]] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        examples = [_example(data, item, task, protocol, config) for item in batch]
        rows += _score_batch(ctx, data, batch, examples, protocol)
    unknown = _out_of_vocabulary(data, task)
    return CodeScores.from_rows(
        rows,
        ctx.tokenizer.modalities,
        protocol,
        task,
        model="promptehr",
        n_out_of_vocabulary=unknown,
    )


def _items(data: TokenizedCohort, task: str) -> list[tuple[int, int, int]]:
    """(patient, t, modality) of every block scored."""
    first_t = 1 if task == "longitudinal" else 0
    items = []
    for p in range(len(data)):
        offset = int(data.visit_offsets[p])
        for t in range(first_t, int(data.visit_counts[p])):
            items += [(p, t, m) for m, _ in data.visit_blocks(offset + t)]
    return items


def _example(data, item, task, protocol, config) -> task_lib.Example:
    p, t, m = item
    rng = np.random.default_rng(0)  # unused: no corruption
    if task == "cross_modal":
        return task_lib.cross_modal_example(data, p, t, m, rng, config, corrupt=False)
    history = task_lib.longitudinal_example(data, p, t, rng, config, corrupt=False)
    # <bos> <v> <m>, then (chain) m's codes but the last: position 2 + j predicts
    # code j + 1 of m, given the history and m's codes before it only.
    tok, ignore = data.tokenizer, task_lib.IGNORE_INDEX
    head = [tok.bos_id, tok.visit_open_id, data.open_ids[m]]
    decoder_input, labels = np.array(head), np.full(3, ignore)
    if protocol == "chain":
        codes = dict(data.visit_blocks(int(data.visit_offsets[p]) + t))[m]
        codes = codes[: max(config.max_target_length - 2, 1)]
        decoder_input = np.array([*head, *codes[:-1]])
        labels = np.array([ignore, ignore, *codes])
    return task_lib.Example(
        history.source,
        decoder_input,
        labels,
        np.array([-1, -1, *[m] * (len(labels) - 2)]),
        history.categorical,
        history.numerical,
        patient=p,
        t=t,
        task="longitudinal",
    )


@torch.no_grad()
def _score_batch(ctx, data, batch, examples, protocol) -> list[tuple]:
    net, tok = ctx.model, ctx.tokenizer
    tensors = task_lib.collate(examples, tok.pad_id)
    # One encoder pass per distinct source: (first example of each, example -> it).
    seen: dict[tuple[int, bytes], int] = {}
    where = [seen.setdefault((e.patient, e.source.tobytes()), b)
             for b, e in enumerate(examples)]  # fmt: skip
    first = torch.tensor(sorted(seen.values()))
    states, mask = net.encode(
        tensors["input_ids"][first],
        tensors["attention_mask"][first],
        tensors["categorical"][first],
        tensors["numerical"][first],
    )
    back = torch.searchsorted(first, torch.tensor(where))  # (B,) row of each source
    states, mask = states[back], mask[back]
    hidden, _ = net.decode(
        tensors["decoder_input_ids"],
        tensors["decoder_attention_mask"],
        states,
        mask,
        tensors["categorical"],
        tensors["numerical"],
    )
    logits = net.unrestricted_logits(hidden)  # (B, T, V)
    rows = []
    for b, (p, t, m) in enumerate(batch):
        targets = _targets(data, p, t, m, examples[b], protocol)
        for position, modality, token in targets:
            start, stop = tok.code_ranges[tok.modalities[modality]]
            restricted = torch.log_softmax(logits[b, position, start:stop], -1)
            code = tok.codes[tok.modalities[modality]][token - start]
            rows.append((p, t, modality, code, float(restricted[token - start])))
    return rows


def _targets(data, p, t, m, example, protocol) -> list[tuple[int, int, int]]:
    """(decoder position, modality, token) of each true in-vocabulary code."""
    tok = data.tokenizer
    if protocol == "chain":
        labels, modality = example.labels, example.label_modality
        return [
            (i, int(modality[i]), int(label))
            for i, label in enumerate(labels)
            if label >= 0 and tok.token_modality[label] >= 0
        ]
    # set: every true code of m, scored at the last decoder position
    visit = int(data.visit_offsets[p]) + t
    codes = dict(data.visit_blocks(visit))[m]
    last = len(example.decoder_input) - 1 if example.task == "longitudinal" else 1
    return [(last, m, int(c)) for c in codes if c != tok.unk_id]


def _out_of_vocabulary(data: TokenizedCohort, task: str) -> int:
    """True codes that are ``<unk>`` among the visits scored."""
    unknown = data.event_tokens == data.tokenizer.unk_id
    if task == "longitudinal":
        first_visit = np.zeros(len(data.event_offsets) - 1, dtype=bool)
        first_visit[data.visit_offsets[:-1]] = True
        event_visit = np.repeat(
            np.arange(len(first_visit)), np.diff(data.event_offsets)
        )
        unknown &= ~first_visit[event_visit]
    return int(unknown.sum())
