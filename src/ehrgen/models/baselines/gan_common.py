"""What the two GAN baselines (LSTM+MedGAN, SynTEG) share: the data, the training
schedule on the shared Trainer, the network's common parts, the Monte Carlo set
score and visit-by-visit sampling (the model class is in
:mod:`ehrgen.models.baselines.gan_generator`).

Both models are *conditional* GANs over one visit's multi-hot vector: a dependency
model (an LSTM over the previous visits, plus the baseline features) gives a
condition vector for visit t; a generator turns noise and the condition into one
probability per code; a discriminator (critic) tells real visits from generated ones
given the same condition. A subclass of :class:`GANNetwork` says how visits are read
(``states``), how the generator and the critic are built, and which losses they use.

**Training on the shared Trainer.** One optimizer step of the
:class:`~ehrgen.training.Trainer` updates *one player*: each batch carries a
``phase`` fixed by its place in the run (``(epoch, batch)``, so that a resumed run
sees the same schedule):

* ``pretrain`` (the first ``pretrain_fraction`` of the planned steps): the
  dependency model (next visit's codes, binary cross-entropy) and the model's own
  pretraining (MedGAN's autoencoder, its end-of-patient head);
* then ``critic_steps`` critic steps followed by one generator step, in turn.

A step's loss reaches only its player's parameters: the others run under
``torch.no_grad`` or with ``requires_grad`` off, so their gradients stay ``None``
and AdamW leaves them untouched (no momentum, no weight decay). Thus the Trainer
gives the GANs what it gives every model: epochs, ``max_steps``, the time budget,
seeds, progress, checkpoints and exact resume. Not multi-process (DDP) training:
parameters left without gradient in a step would need DDP's
``find_unused_parameters``, which the Trainer does not set. The price: one
AdamW (its betas, not the (0.5, 0.9) usual for WGAN-GP) with one learning rate and
schedule for every player; the dependency model is frozen once the GAN phase
starts. Validation scores the mean of the generator's output over
:data:`VALIDATION_SAMPLES` fixed noise draws with binary cross-entropy, the
quantity the Monte Carlo set score summarises (see ``docs/evaluation.md``); the
Trainer logs it but keeps the last weights and never stops a GAN early
(``select_by_validation = False``): the figure worsens while the autoencoder
pretrains and says little about the samples, so picking by it, or stopping on
it, would keep an untrained generator.

**Scores** (:meth:`GANNetwork.set_log_probs`): a GAN has no likelihood. Its set
score of a code is the generator's per-code probability averaged over K noise draws
for that context, normalised over the modality's codes. Longitudinal: the context is
the previous visits. Cross-modal: the generator, with its per-code Bernoulli
draws, is a mixture (over the noise) of independent Bernoulli visits; conditioning
that mixture on the visit's other modalities weighs each draw by the probability it
gives them (self-normalised importance weights), then averages. The K noise vectors
are a seeded, scrambled Sobol sequence mapped through the normal quantile function,
the same K for every context (common random numbers).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ehrgen._config import ConfigMixin, check
from ehrgen.data import Cohort, CohortSchema
from ehrgen.models.baselines.lstm_mlp import _code_offset, _Encoded, _log_odds
from ehrgen.tokens import CodeTokenizer

__all__ = ["GANConfig", "GANEncoded", "GANNetwork", "draw_visit", "gan_loaders"]


PRETRAIN, CRITIC, GENERATOR = 0, 1, 2
#: Noise draws of the validation loss (fixed, so validation is deterministic).
VALIDATION_SAMPLES = 64
_REDRAWS = 8
#: Floats held at once by the Monte Carlo score (visits x draws x codes).
_MC_FLOATS = 2**22


@dataclass(frozen=True, kw_only=True)
class GANConfig(ConfigMixin):
    """What both GAN configs hold beside their sizes."""

    noise: int = 128
    # The first fraction of the planned optimizer steps trains the dependency model
    # (and MedGAN's autoencoder); the GAN players train after it.
    pretrain_fraction: float = 0.3
    # Critic (discriminator) steps per generator step.
    critic_steps: int = 1
    # K, the noise draws averaged by the Monte Carlo set score.
    score_samples: int = 512
    # Ablation: the generator sees zeros instead of its condition (tests use it to
    # show that the condition carries information).
    ignore_condition: bool = False

    def _check_gan(self) -> None:
        name = type(self).__name__
        for field in ("noise", "critic_steps", "score_samples"):
            value = getattr(self, field)
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            check(ok, name, field, "a positive int", value)
        frac = self.pretrain_fraction
        check(0 <= frac < 1, name, "pretrain_fraction", "in [0, 1)", frac)


# ---------------------------------------------------------------------------- data


class GANEncoded:
    """A cohort as the GANs read it: the LSTM+MLP encoding (multi-hot visits,
    baseline features) plus each visit's gap since the previous one, as
    ``log1p(days)`` (0 for a first visit, or when times are placeholders)."""

    def __init__(self, cohort: Cohort, tokenizer: CodeTokenizer) -> None:
        self.base = _Encoded(cohort, tokenizer)
        self.cohort, self.n_codes = cohort, self.base.n_codes
        days = np.zeros(cohort.n_visits, np.float32)
        if cohort.n_visits and not cohort.times_are_placeholders:
            delta = np.diff(cohort.visit_times).astype("timedelta64[s]").astype(float)
            days[1:] = np.clip(delta / 86400.0, 0, None)
        days[cohort.visit_offsets[:-1][np.diff(cohort.visit_offsets) > 0]] = 0.0
        self.gaps = np.log1p(days).astype(np.float32)

    def batch(self, patients: np.ndarray, phase: int | None = None, seed: int = 0):
        """Tensors of these patients (see ``_Encoded.batch``), ``gaps`` (B, T) and,
        for training, the ``phase`` of the step and the ``seed`` of its noise."""
        out = self.base.batch(patients)
        lengths = out["lengths"].numpy()
        gaps = np.zeros(out["target"].shape, np.float32)  # (B, T)
        for row, (p, n) in enumerate(zip(patients, lengths)):
            start = self.cohort.visit_offsets[p]
            gaps[row, :n] = self.gaps[start : start + n]
        out.pop("target")
        out["gaps"] = torch.from_numpy(gaps)
        if phase is not None:
            out["phase"], out["seed"] = torch.tensor(phase), torch.tensor(seed)
        return out


def phase_of(step: int, pretrain_steps: int, critic_steps: int) -> int:
    """The player trained at optimizer step ``step`` (0-based)."""
    if step < pretrain_steps:
        return PRETRAIN
    gan_step = step - pretrain_steps
    return GENERATOR if gan_step % (critic_steps + 1) == critic_steps else CRITIC


def pretrain_steps(n_patients: int, training, config: GANConfig) -> int:
    """The optimizer steps that pretrain: from the planned epochs only, so that a
    run cut by ``max_steps`` or a time budget, and one resumed from its
    checkpoint, follow the same schedule."""
    per_epoch = math.ceil(n_patients / training.batch_size)
    return math.ceil(config.pretrain_fraction * training.epochs * per_epoch)


def gan_loaders(data: GANEncoded, val, tokenizer, training, config: GANConfig):
    """The Trainer's ``train_loader(epoch)`` and validation loader; each training
    batch carries the phase of its step (see the module docstring)."""
    from torch.utils.data import DataLoader

    n, size = len(data.cohort), training.batch_size
    per_epoch = math.ceil(n / size)
    pretrain = pretrain_steps(n, training, config)

    def train_loader(epoch: int) -> DataLoader:
        order = np.random.default_rng([training.seed, epoch]).permutation(n)
        chunks = [order[i : i + size] for i in range(0, n, size)]

        def collate(rows):
            (b,) = rows
            phase = phase_of(epoch * per_epoch + b, pretrain, config.critic_steps)
            # The step's noise comes from its own seed, not torch's global state
            # (which DataLoaders also draw from), so that a resumed run draws it too.
            seed = np.random.default_rng([training.seed, epoch, b]).integers(2**62)
            return data.batch(chunks[b], phase, int(seed))

        return DataLoader(list(range(len(chunks))), 1, collate_fn=collate)

    if val is None:
        return train_loader, None
    val_data = GANEncoded(val, tokenizer)
    rows = [np.arange(i, min(i + size, len(val))) for i in range(0, len(val), size)]
    return train_loader, DataLoader(
        rows, None, collate_fn=lambda chunk: val_data.batch(chunk)
    )


# ------------------------------------------------------------------------- network


@dataclass
class _Output:
    loss_sum: torch.Tensor
    n_tokens: torch.Tensor
    loss_denominator: torch.Tensor | None = None


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Ops recorded inside do not reach these modules' parameters."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class GANNetwork(nn.Module):
    """The parts both GANs share; a subclass builds ``self.generator_modules`` and
    ``self.critic_modules`` (lists of modules) and implements the hooks below.

    Columns: the ``n_codes`` codes in the tokenizer's order, then, when
    ``end_in_visit``, one end-of-patient column that the generator draws with the
    visit (SynTEG's end code); otherwise an end-of-patient head reads the state
    after each visit (``self.end``).
    """

    end_in_visit: bool = False
    #: The Trainer logs validation but keeps the last weights (module docstring).
    select_by_validation = False

    def __init__(
        self, config: GANConfig, tokenizer: CodeTokenizer, schema: CohortSchema
    ) -> None:
        super().__init__()
        offset = _code_offset(tokenizer)
        self.config = config
        self.slices = [
            (a - offset, b - offset) for a, b in tokenizer.code_ranges.values()
        ]
        self.n_codes = self.slices[-1][1]
        self.n_out = self.n_codes + int(self.end_in_visit)
        self.cardinalities = [len(c) for c in schema.categorical.values()]
        n_numerical = len(schema.numerical)
        self.n_static = sum(c + 1 for c in self.cardinalities) + 2 * n_numerical
        self.register_buffer("mean", torch.zeros(n_numerical))
        self.register_buffer("std", torch.ones(n_numerical))
        # The mean training log-gap, fed for generated visits (times come later).
        self.register_buffer("gap_fill", torch.zeros(()))

    @property
    def device(self) -> torch.device:
        return self.mean.device

    # ---- hooks

    def visit_inputs(self, visits, gaps, static) -> torch.Tensor:
        """(B, T, C) visits, (B, T) log-gaps, (B, S) static -> (B, T, I): what
        the LSTM (``self.lstm``, after ``self.initial``) reads for each visit."""
        raise NotImplementedError

    def condition(self, states, static) -> torch.Tensor:
        """(..., H) states -> (..., D) condition vectors (the dependency model's
        penultimate layer)."""
        raise NotImplementedError

    def dependency_logits(self, condition) -> torch.Tensor:
        """(..., D) -> (..., n_out) the dependency model's next-visit logits."""
        raise NotImplementedError

    def generator_logits(self, noise, condition) -> torch.Tensor:
        """(N, noise), (N, D) -> (N, n_out) logits of one generated visit."""
        raise NotImplementedError

    def critic_loss(self, real, fake, condition, generator) -> torch.Tensor:
        """The critic's loss; ``generator`` (CPU) for any draw it needs."""
        raise NotImplementedError

    def generator_loss(self, fake, condition) -> torch.Tensor:
        raise NotImplementedError

    def extra_pretraining(self, visits, states, valid, lengths):
        """Summed loss and entry count of the model's own pretraining (none here)."""
        return visits.new_zeros(()), 0

    def end_logits(self, states_after) -> torch.Tensor:
        raise NotImplementedError

    # ---- shared

    def static_features(self, categorical, numerical) -> torch.Tensor:
        """(B, n_categorical) indices, (B, n_numerical) raw values -> (B, S): one-hot
        with an "unknown" slot; z-scores with a missing flag."""
        parts = []
        for i, size in enumerate(self.cardinalities):
            value = categorical[:, i]
            value = torch.where((value >= 0) & (value < size), value, size)
            parts.append(F.one_hot(value, size + 1).float())
        if numerical.shape[1]:
            missing = torch.isnan(numerical)
            z = (torch.nan_to_num(numerical) - self.mean) / self.std
            parts += [z.masked_fill(missing, 0.0), missing.float()]
        return torch.cat(parts, 1) if parts else numerical.new_zeros(len(numerical), 0)

    def generated(self, noise, condition) -> torch.Tensor:
        """(N, n_out) probabilities of a generated visit."""
        if self.config.ignore_condition:
            condition = torch.zeros_like(condition)
        return torch.sigmoid(self.generator_logits(noise, condition))

    def _read(self, batch: Mapping[str, torch.Tensor]):
        visits, lengths = batch["visits"], batch["lengths"]
        static = self.static_features(batch["categorical"], batch["numerical"])
        states = self.states(visits, batch["gaps"], static)  # (B, T + 1, H)
        steps = torch.arange(visits.shape[1], device=visits.device)
        valid = steps < lengths.unsqueeze(1)  # (B, T)
        return visits, static, states, valid

    def _targets(self, visits, lengths) -> torch.Tensor:
        """(B, T, n_out): the codes, then the end column (1 on a last visit)."""
        if not self.end_in_visit:
            return visits
        steps = torch.arange(visits.shape[1], device=visits.device)
        last = (steps == lengths.unsqueeze(1) - 1).float().unsqueeze(-1)
        return torch.cat([visits, last], -1)

    def _conditions(self, states, static) -> torch.Tensor:
        """(B, T, D): the condition before each visit."""
        before = states[:, :-1]
        return self.condition(
            before, static.unsqueeze(1).expand(-1, before.shape[1], -1)
        )

    def forward(self, batch: Mapping[str, torch.Tensor]) -> _Output:
        """One step's loss: the phase's player, or (no phase) the validation BCE."""
        phase = int(batch["phase"]) if "phase" in batch else None
        with torch.set_grad_enabled(torch.is_grad_enabled() and phase == PRETRAIN):
            visits, static, states, valid = self._read(batch)
            condition = self._conditions(states, static)
        real = self._targets(visits, batch["lengths"])[valid]  # (N, n_out)
        if phase == PRETRAIN:
            logits = self.dependency_logits(condition[valid])
            loss = F.binary_cross_entropy_with_logits(logits, real, reduction="sum")
            extra, count = self.extra_pretraining(
                visits, states, valid, batch["lengths"]
            )
            return _Output(loss + extra, torch.tensor(real.numel() + count))
        condition = condition[valid]
        if phase is None:
            return self._validation(real, condition, states, valid, batch["lengths"])
        generator = torch.Generator().manual_seed(int(batch["seed"]))
        noise = torch.randn(len(real), self.config.noise, generator=generator)
        noise = noise.to(self.device)
        if phase == CRITIC:
            with torch.no_grad():
                fake = self.critic_view(self.generated(noise, condition), generator)
            loss = self.critic_loss(real, fake, condition, generator)
        else:
            with frozen(*self.critic_modules):
                fake = self.critic_view(self.generated(noise, condition), generator)
                loss = self.generator_loss(fake, condition)
        return _Output(loss, torch.tensor(len(real)), torch.ones(()))

    def critic_view(self, probs, generator) -> torch.Tensor:
        """What the critic sees of a generated visit: its probabilities (MedGAN)."""
        return probs

    def states(self, visits, gaps, static) -> torch.Tensor:
        """(B, T, C) visits -> (B, T + 1, H); state t summarises visits < t."""
        batch, steps = visits.shape[:2]
        initial = self.initial.expand(batch, 1, -1)
        if steps == 0:
            return initial
        out, _ = self.lstm(self.visit_inputs(visits, gaps, static))  # (B, T, H)
        return torch.cat([initial, out], 1)  # padding comes last: it leaks nowhere

    def _validation(self, real, condition, states, valid, lengths) -> _Output:
        probs = torch.cat(
            [p.mean(1) for _, p in self.mc_chunks(condition, VALIDATION_SAMPLES, 0)]
        )
        loss = F.binary_cross_entropy(
            probs.clamp(1e-6, 1 - 1e-6), real, reduction="sum"
        )
        count = real.numel()
        if not self.end_in_visit:
            steps = torch.arange(valid.shape[1], device=valid.device)
            last = (steps == lengths.unsqueeze(1) - 1).float()
            end = self.end_logits(states[:, 1:]).squeeze(-1)
            loss = loss + F.binary_cross_entropy_with_logits(
                end[valid], last[valid], reduction="sum"
            )
            count += int(valid.sum())
        return _Output(loss, torch.tensor(count))

    def mc_chunks(self, condition, samples: int, seed: int):
        """(N, D) conditions -> ``(rows, (n, K, n_out))`` chunks: the generator's
        probabilities for K noise draws, the same K for every condition: a
        scrambled Sobol sequence (seeded) mapped through the normal quantile
        function, whose averages converge faster than independent draws'. Chunks
        hold about :data:`_MC_FLOATS` floats, whatever the vocabulary."""
        engine = torch.quasirandom.SobolEngine(self.config.noise, True, seed)
        uniform = engine.draw(samples, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
        noise = torch.special.ndtri(uniform).float().to(self.device)
        chunk = max(1, _MC_FLOATS // (samples * self.n_out))
        for start in range(0, len(condition), chunk):
            part = condition[start : start + chunk]  # (n, D)
            n = len(part)
            flat = part.unsqueeze(1).expand(-1, samples, -1).reshape(n * samples, -1)
            probs = self.generated(noise.repeat(n, 1), flat)  # (n * K, n_out)
            yield slice(start, start + n), probs.reshape(n, samples, -1)

    @torch.no_grad()
    def set_log_probs(self, batch, task: str, samples: int, seed: int):
        """(valid visits, n_codes) Monte Carlo set log-probabilities, on the CPU
        (see the module docstring)."""
        visits, static, states, valid = self._read(batch)
        condition = self._conditions(states, static)[valid]
        observed = visits[valid]  # (N, C)
        mean = observed.new_empty(len(observed), self.n_codes)
        for rows, probs in self.mc_chunks(condition, samples, seed):
            probs = probs[..., : self.n_codes].clamp(1e-6, 1 - 1e-6)  # (n, K, C)
            if task == "longitudinal":
                mean[rows] = probs.mean(1)
            else:
                mean[rows] = self._given_the_rest(probs, observed[rows])
        scores = mean.log()
        for a, b in self.slices:
            if b > a:
                part = scores[:, a:b]
                scores[:, a:b] = part - torch.logsumexp(part, 1, keepdim=True)
        return scores.cpu()

    def _given_the_rest(self, probs, observed) -> torch.Tensor:
        """(n, K, C) probabilities, (n, C) visits -> (n, C): for each modality,
        the mean over draws weighed by the probability each gives the visit's
        other modalities (self-normalised importance weights)."""
        x = observed.unsqueeze(1)  # (n, 1, C)
        ll = x * probs.log() + (1 - x) * torch.log1p(-probs)  # (n, K, C)
        per_modality = torch.stack([ll[..., a:b].sum(-1) for a, b in self.slices], -1)
        total = per_modality.sum(-1)  # (n, K)
        mean = probs.new_empty(probs.shape[0], probs.shape[2])
        for k, (a, b) in enumerate(self.slices):
            weights = torch.softmax(total - per_modality[..., k], 1)  # (n, K)
            mean[:, a:b] = (weights.unsqueeze(-1) * probs[..., a:b]).sum(1)
        return mean

    @torch.no_grad()
    def calibrate(self, data: GANEncoded) -> None:
        """Store the standardisation and the mean gap; start the output biases at
        the training rates, so that training spends its steps on structure."""
        values = data.base.numerical.astype(np.float64)
        with warnings.catch_warnings():  # an all-missing feature gets mean 0, std 1
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nan_to_num(np.nanmean(values, 0))
            std = np.nan_to_num(np.nanstd(values, 0), nan=1.0)
        self.mean.copy_(torch.as_tensor(mean))
        self.std.copy_(torch.as_tensor(np.where(std > 0, std, 1.0)))
        later = np.ones(len(data.gaps), bool)
        later[
            data.cohort.visit_offsets[:-1][np.diff(data.cohort.visit_offsets) > 0]
        ] = 0
        if later.any():
            self.gap_fill.fill_(float(data.gaps[later].mean()))
        n_visits = max(data.cohort.n_visits, 1)
        columns = data.base.event_columns
        rate = np.bincount(columns[columns >= 0], minlength=data.n_codes) / n_visits
        if self.end_in_visit:
            rate = np.append(rate, len(data.cohort) / n_visits)
        self.output_biases(torch.as_tensor(_log_odds(rate), dtype=torch.float32))
        if not self.end_in_visit:
            self.end.bias.fill_(float(_log_odds(len(data.cohort) / n_visits)))

    def output_biases(self, log_odds: torch.Tensor) -> None:
        """Set the biases of the layers that give (n_out) logits."""
        raise NotImplementedError

    # ---- generation

    @torch.no_grad()
    def sample(self, categorical, numerical, generation, generator) -> list[np.ndarray]:
        """Each patient's visits as a (visits, n_codes) bool array, drawn visit by
        visit from the model's own earlier visits (the LSTM carries its state, so
        each step reads one visit). Draws happen on the CPU, so that a seed gives
        the same patients on any device."""
        device = self.device
        static = self.static_features(categorical.to(device), numerical.to(device))
        batch = len(static)
        drawn = []
        state, memory = self.initial.expand(batch, -1), None  # (B, H): no visit yet
        counts = torch.zeros(batch, dtype=torch.long)
        alive = torch.ones(batch, dtype=torch.bool)
        for t in range(generation.max_visits):
            if t:  # read the visit drawn last
                gap = torch.full((batch, 1), float(self.gap_fill), device=device)
                x = self.visit_inputs(drawn[-1].float().to(device).unsqueeze(1),
                                      gap if t > 1 else gap * 0, static)  # fmt: skip
                out, memory = self.lstm(x, memory)
                state = out[:, -1]
            if t and not self.end_in_visit:
                p_end = torch.sigmoid(self.end_logits(state).squeeze(-1)).cpu()
                alive &= ~torch.bernoulli(p_end, generator=generator).bool()
            if not alive.any():
                break
            noise = torch.randn(batch, self.config.noise, generator=generator)
            condition = self.condition(state, static)
            if self.config.ignore_condition:
                condition = torch.zeros_like(condition)
            logits = self.generator_logits(noise.to(device), condition).cpu()
            visit, end = draw_visit(
                logits, self.slices, self.n_codes, generation, generator
            )
            drawn.append(visit)
            counts += alive.long()
            if self.end_in_visit:
                alive &= ~end
        if not drawn:
            return [np.zeros((0, self.n_codes), bool) for _ in range(batch)]
        chosen = torch.stack(drawn, 1).numpy()  # (B, T, C)
        return [chosen[i, :c] for i, c in enumerate(counts.tolist())]


def draw_visit(logits, slices, n_codes, generation, generator):
    """(B, n_out) logits -> (B, n_codes) bool codes, each drawn on its own
    (Bernoulli); an empty visit is drawn again up to :data:`_REDRAWS` times, then
    gets its most likely code; at most ``max_codes_per_modality`` codes per modality
    (the most likely drawn). Also (B,) bool: the end code drawn (False without one).
    """
    probs = torch.sigmoid(logits / generation.temperature)
    if generation.greedy:
        drawn = probs > 0.5
    else:
        drawn = torch.bernoulli(probs, generator=generator).bool()
    chosen, end = drawn[:, :n_codes], drawn[:, n_codes:].any(1)
    codes = probs[:, :n_codes]
    for _ in range(0 if generation.greedy else _REDRAWS):
        empty = ~chosen.any(1)
        if not empty.any():
            break
        chosen[empty] = torch.bernoulli(codes[empty], generator=generator).bool()
    empty = torch.nonzero(~chosen.any(1)).flatten()
    chosen[empty, codes[empty].argmax(1)] = True
    cap = generation.max_codes_per_modality
    for a, b in slices:
        if b - a > cap:
            ranked = torch.where(chosen[:, a:b], codes[:, a:b], -1.0)
            top = torch.zeros_like(chosen[:, a:b])
            chosen[:, a:b] &= top.scatter_(1, ranked.topk(cap, 1).indices, True)
    return chosen, end
