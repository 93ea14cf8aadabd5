"""Tests of the grammar of a visit, through the sampler and a stub decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ehrgen.data import DEFAULT_MODALITIES, Cohort, CohortSchema, Patient, Visit
from ehrgen.generation import Decoder, GenerationConfig, VisitSampler
from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.tokens.grammar import STRUCTURAL_ROW, VisitGrammar
from ehrgen.tokens.tokenizer import CodeTokenizer

SCHEMA = CohortSchema(modalities=DEFAULT_MODALITIES)


@pytest.fixture(scope="module")
def tok() -> CodeTokenizer:
    visits = (
        Visit({"diagnosis": [f"d{i}" for i in range(6)], "drug": ["r1", "r2", "r3"]}),
        Visit({"procedure": ["p1", "p2"], "lab": [f"l{i}" for i in range(4)]}),
    )
    return CodeTokenizer.fit(Cohort.from_patients([Patient("a", {}, visits)], SCHEMA))


class StubDecoder:
    """Random logits (seeded), three more columns than the vocabulary; records what
    it was given."""

    def __init__(self, width: int, seed: int = 0, bias: dict[int, float] | None = None):
        self.width, self.bias = width, bias or {}
        self.generator = torch.Generator().manual_seed(seed)
        self.prefixes: list[torch.Tensor] = []

    def start(self, sources, categorical, numerical, prefix, *, use_cache):
        self.prefixes.append(prefix)
        return {"rows": len(sources), "steps": 0}

    def next_logits(self, state, tokens):
        state["steps"] += 1
        logits = 3 * torch.randn(state["rows"], self.width, generator=self.generator)
        for token, value in self.bias.items():
            logits[:, token] += value
        return logits


def _sampler(tok, decoder, seed=0, **config) -> VisitSampler:
    config = GenerationConfig(**{"max_codes_per_modality": 4, **config})
    return VisitSampler(decoder, tok, config, torch.Generator().manual_seed(seed))


def _visits(tok, n=64, seed=0, bias=None, allow_end=False, forced=None, **config):
    decoder = StubDecoder(tok.vocab_size + 3, seed, bias)
    sampler = _sampler(tok, decoder, seed, **config)
    sources = [np.array([tok.bos_id, tok.eos_id])] * n
    empty = torch.zeros(n, 0)
    ends = np.full(n, allow_end)
    return sampler.visits(sources, empty, empty, ends, forced=forced)


def test_the_stub_is_a_decoder(tok):
    """Check that the stub satisfies the Decoder protocol, and an object without
    next_logits does not."""
    assert isinstance(StubDecoder(tok.vocab_size), Decoder)
    assert not isinstance(object(), Decoder)


@pytest.mark.parametrize("seed", range(4))
def test_sampled_visits_are_well_formed_and_round_trip(tok, seed):
    """Check that every sampled visit is one well-formed visit (distinct modalities,
    distinct codes of the open modality, at most max codes per block) and that
    decoding and re-encoding it gives the same blocks."""
    grammar = VisitGrammar(tok)
    visits = _visits(tok, seed=seed, max_codes_per_modality=3)
    orders = set()
    for ids in visits:
        assert ids is not None and grammar.is_visit(ids, max_codes=3)
        visit = tok.decode(ids).visits[0]
        again = tok.encode_visit(visit)
        assert sorted(again) == sorted(ids)
        assert grammar.is_visit(again)
        orders.add(tuple(i for i in ids if int(grammar.open_modality[i]) >= 0))
    assert any(list(o) != sorted(o) for o in orders)  # not only the schema's order


def test_max_codes_per_modality_holds_even_when_codes_are_favoured(tok):
    """Check that a strong bias towards codes never gives more than max codes."""
    bias = {i: 20.0 for i in range(*tok.code_ranges["diagnosis"])}
    grammar = VisitGrammar(tok)
    for ids in _visits(tok, bias=bias, max_codes_per_modality=2):
        assert grammar.is_visit(ids, max_codes=2)
        assert len(tok.decode(ids).visits[0].codes("diagnosis")) <= 2


def test_end_only_when_allowed(tok):
    """Check that <eos> never comes where not allowed, even when heavily favoured,
    and that it can come where allowed."""
    favoured = {tok.eos_id: 50.0}
    assert all(v is not None for v in _visits(tok, bias=favoured, allow_end=False))
    assert all(v is None for v in _visits(tok, bias=favoured, allow_end=True))


def test_end_bias_moves_the_end(tok):
    """Check that the end bias is added to the <eos> logit, per row."""
    decoder = StubDecoder(tok.vocab_size, 0)
    sampler = _sampler(tok, decoder)
    n = 40
    sources, empty = [np.array([tok.bos_id, tok.eos_id])] * n, torch.zeros(n, 0)
    bias = np.where(np.arange(n) < 20, 60.0, -60.0)
    out = sampler.visits(sources, empty, empty, np.ones(n, bool), end_bias=bias)
    assert [v is None for v in out] == [True] * 20 + [False] * 20


def test_forced_codes_appear_first_in_their_block(tok):
    """Check that forced codes are written, first in their block, and that their
    modality is written even when closing the visit is favoured."""
    lab = [tok.code_id("lab", c) for c in ("l2", "l0")]
    drug = [tok.code_id("drug", "r3")]
    forced = [{3: lab, 2: drug}] * 32
    bias = {tok.visit_close_id: 30.0}
    for ids in _visits(tok, n=32, bias=bias, forced=forced):
        visit = tok.decode(ids).visits[0]
        assert visit.codes("lab")[:2] == ("l2", "l0")
        assert visit.codes("drug")[0] == "r3"


def test_forced_codes_beyond_max_codes_still_close_the_visit(tok):
    """Check that more forced codes than max codes are all written, and the visit
    still ends with </v>."""
    diagnoses = [tok.code_id("diagnosis", f"d{i}") for i in range(5)]
    for ids in _visits(tok, n=8, forced=[{0: diagnoses}] * 8, max_codes_per_modality=1):
        assert ids[-1] == tok.visit_close_id
        assert tok.decode(ids).visits[0].codes("diagnosis")[:5] == tuple(
            f"d{i}" for i in range(5)
        )


def test_single_block_mode(tok):
    """Check that blocks() writes one block of the asked modality: at least one
    distinct code of it, at most max codes, after the prefix <k>."""
    decoder = StubDecoder(tok.vocab_size, 1)
    sampler = _sampler(tok, decoder, max_codes_per_modality=3)
    n, start, stop = 50, *tok.code_ranges["drug"]
    sources, empty = [np.array([tok.bos_id, tok.eos_id])] * n, torch.zeros(n, 0)
    rows = sampler.blocks(sources, empty, empty, 2)
    assert decoder.prefixes[-1].tolist() == [[tok.open_ids["drug"]]] * n
    for codes in rows:
        assert 1 <= len(codes) <= 3 and len(set(codes)) == len(codes)
        assert all(start <= c < stop for c in codes)
    assert len({tuple(c) for c in rows}) > 1


def test_a_modality_without_codes_is_never_opened():
    """Check that a tokenizer modality with no code never opens a block."""
    visit = Visit({"diagnosis": ["a", "b"]})
    tok = CodeTokenizer.fit(Cohort.from_patients([Patient("x", {}, (visit,))], SCHEMA))
    grammar = VisitGrammar(tok)
    for ids in _visits(tok, n=16):
        assert grammar.is_visit(ids)
        assert set(tok.decode(ids).visits[0].events) == {"diagnosis"}


def test_training_table_and_rows(tok):
    """Check the training mask table (row 0 the structural tokens, row m+1 m's codes
    and close token, padding columns never allowed) and that the rows of a patient
    sequence, blocks in any order, allow each next token."""
    grammar = VisitGrammar(tok)
    table = grammar.table(width=tok.vocab_size + 2)
    structural = {tok.visit_open_id, tok.visit_close_id, tok.eos_id}
    structural |= set(tok.open_ids.values())
    assert set(torch.nonzero(table[STRUCTURAL_ROW]).flatten().tolist()) == structural
    start, stop = tok.code_ranges["drug"]
    assert set(torch.nonzero(table[3]).flatten().tolist()) == {
        *range(start, stop),
        tok.close_ids["drug"],
    }
    assert not table[:, tok.vocab_size :].any()
    visit = tok.encode_visit(Visit({"lab": ["l1"], "diagnosis": ["d0"]}))
    swapped = [visit[0], *visit[4:7], *visit[1:4], visit[-1]]  # lab block first
    prefix = [tok.vocab_size + 1]  # a model's own token before <bos>
    ids = np.array([*prefix, tok.bos_id, *visit, *swapped, tok.eos_id])
    rows = grammar.rows(ids)
    assert table[rows[1:-1], ids[2:]].all()
    assert rows[len(prefix) + 1 + len(visit) + 1] == 4  # after the swapped <lab>
    assert not table[rows[2], tok.code_id("lab", "l1")]  # <v> is not a lab position


def test_is_visit_refuses_malformed_visits(tok):
    """Check that is_visit refuses repeated modalities and codes, empty blocks, codes
    of another modality, a missing </v>, and more codes than allowed."""
    grammar = VisitGrammar(tok)
    v, cv = tok.visit_open_id, tok.visit_close_id
    o, c = tok.open_ids["drug"], tok.close_ids["drug"]
    r1, r2 = tok.code_id("drug", "r1"), tok.code_id("drug", "r2")
    d0 = tok.code_id("diagnosis", "d0")
    assert grammar.is_visit([v, o, r1, r2, c, cv])
    assert not grammar.is_visit([v, o, r1, r2, c, cv], max_codes=1)
    for bad in (
        [v, o, r1, c, o, r2, c, cv],
        [v, o, r1, r1, c, cv],
        [v, o, c, cv],
        [v, o, d0, c, cv],
        [v, o, r1, c],
        [v, cv],
    ):
        assert not grammar.is_visit(bad), bad


def test_promptehr_label_modalities_are_the_grammar_rows():
    """Check that every PromptEHR training example's label modality selects the
    grammar's mask row for its decoder input (row m+1 in m's block, 0 elsewhere),
    and that the row allows the label, permuted targets and cloze slots included."""
    from ehrgen.models.promptehr import tasks
    from tests.tokens.samples import small_cohort

    cohort = small_cohort()
    data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
    grammar, table = VisitGrammar(data.tokenizer), VisitGrammar(data.tokenizer).table()
    config = tasks.TaskConfig(permute_target_rate=1.0, mask_rate=0.0)
    slots = tasks.validation_slots(data)
    assert (slots[:, 2] == tasks.CROSS_MODAL).any()
    for ex in tasks.ExampleDataset(data, slots, config, seed=1):
        rows = grammar.rows(ex.decoder_input)
        assert rows.tolist() == (ex.label_modality + 1).tolist()
        learnt = ex.labels != tasks.IGNORE_INDEX
        assert table[rows[learnt], ex.labels[learnt]].all()
