"""PromptEHR's code scores for lpl and mpl, under the chain and set protocols.

* longitudinal, *chain*: visit t is teacher-forced in full after visits 1..t-1; each
  true code is scored at its position, under the softmax restricted to its modality's
  codes (so a code also sees the earlier blocks and codes of its own visit);
* longitudinal, *set*: the decoder is given ``<bos> <v> <m>`` after visits 1..t-1; the
  distribution of that first code of modality m, restricted to m's codes, scores every
  true code of m;
* cross-modal: the encoder reads visits 1..t-1 and visit t with modality k replaced by
  the cloze slot ``<k> <mask> </k>`` (the training prompt); the decoder is given
  ``<bos> <k>`` and then, for *chain*, k's true codes with teacher forcing; *set* uses
  the first position's distribution.

Codes outside the model's vocabulary cannot be scored: they are left out and counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ehrgen.data import Cohort
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.models.base import PROTOCOLS, CodeScores
from ehrgen.models.promptehr import tasks as task_lib

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
    data = task_lib.TokenizedCohort.from_cohort(cohort, ctx.tokenizer)
    config = task_lib.TaskConfig(
        max_source_length=ctx.max_source_length, max_target_length=ctx.max_source_length
    )
    items = _items(data, task, protocol)
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


def _items(data: task_lib.TokenizedCohort, task: str, protocol: str) -> list[tuple]:
    """(patient, t, modality or -1) targets; -1 means the whole visit (chain)."""
    first_t = 1 if task == "longitudinal" else 0
    items = []
    for p in range(len(data)):
        offset = int(data.visit_offsets[p])
        for t in range(first_t, int(data.visit_counts[p])):
            present = [m for m, _ in data.visit_blocks(offset + t)]
            if task == "longitudinal" and protocol == "chain":
                items.append((p, t, -1))
            else:
                items += [(p, t, m) for m in present]
    return items


def _example(data, item, task, protocol, config) -> task_lib.Example:
    p, t, m = item
    rng = np.random.default_rng(0)  # unused: no corruption
    if task == "cross_modal":
        return task_lib.cross_modal_example(data, p, t, m, rng, config, corrupt=False)
    example = task_lib.longitudinal_example(data, p, t, rng, config, corrupt=False)
    if protocol == "set":  # <bos> <v> <m>: the first code of m after the history
        tok = data.tokenizer
        prefix = np.array([tok.bos_id, tok.visit_open_id, data.open_ids[m]])
        return task_lib.Example(
            example.source,
            prefix,
            np.full(3, task_lib.IGNORE_INDEX),
            np.array([-1, -1, m]),
            example.categorical,
            example.numerical,
            patient=p,
            t=t,
            task="longitudinal",
        )
    return example


@torch.no_grad()
def _score_batch(ctx, data, batch, examples, protocol) -> list[tuple]:
    net, tok = ctx.model, ctx.tokenizer
    tensors = task_lib.collate(examples, tok.pad_id)
    states, mask = net.encode(
        tensors["input_ids"],
        tensors["attention_mask"],
        tensors["categorical"],
        tensors["numerical"],
    )
    hidden, _ = net.decode(
        tensors["decoder_input_ids"],
        tensors["decoder_attention_mask"],
        states,
        mask,
        tensors["categorical"],
        tensors["numerical"],
    )
    logits = hidden.float() @ net.bart.shared.weight.float().T + net.final_logits_bias
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


def _out_of_vocabulary(data: task_lib.TokenizedCohort, task: str) -> int:
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
