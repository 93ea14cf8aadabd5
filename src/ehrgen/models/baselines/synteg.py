"""SynTEG (Zhang et al., JAMIA 2021), a GAN baseline of the paper: a dependency
model over the visits, then a conditional Wasserstein GAN for the next visit.

Reproduced (METHOD.md, Baselines):

* **Stage one, the dependency model.** The codes of a visit are embedded and read by
  a small transformer whose first position (a learned visit token) gives the visit
  vector; the gap since the previous visit (``log1p`` of days) is embedded and
  appended, with the baseline features; an LSTM across visits predicts the next
  visit's codes and its end code (sigmoid, binary cross-entropy); its penultimate
  layer (``condition`` wide) is the condition vector.
* **Stage two, a conditional WGAN-GP**: the generator maps noise and the condition
  to one probability per code plus the end code, the condition scaling each hidden
  layer (``h * (1 + W c)``); the critic reads the visit and the condition; gradient
  penalty weight 10, ``critic_steps`` critic steps per generator step.
* **Sampling** draws each code on its own (Bernoulli) from the generator's output;
  a drawn end code makes the visit the patient's last.

Sizes: where the paper's appendix gives none, those of the published PyTorch port
used in HALO's baselines (embedding 112, 2 transformer layers, 4 heads, LSTM
3 x 512, condition 256, noise 128); the generator (2 x 256) and critic (256, 256)
widths are ours. Decided here:

* **The generator is residual on the dependency model** (``dependency_base``): its
  logits are the frozen dependency model's next-visit logits plus its own output
  (zero bias at the start), so it starts at the conditional code rates and the
  adversarial game adds what they miss (co-occurrence, spread). Trained from
  scratch in a few hundred steps, the WGAN learnt little of its condition on the
  demo cohort (its lpl barely beat a generator fed zeros: pooled code NLL 3.25
  against 3.27, seed 0); residual, 3.09 against 3.27 (docs/models.md has the
  figures). ``dependency_base=False`` gives the paper's generator.
* **The critic sees drawn visits**: each generated visit is drawn code by code
  (Bernoulli), with the probabilities' gradient passed straight through, so that
  the critic compares binary visits with binary visits and cannot win on values
  between 0 and 1; and it reads the condition against the visit through a
  projection term (Miyato & Koyama 2018) besides its MLP.
* **Training** runs on the shared Trainer, one player per optimizer step
  (:mod:`ehrgen.models.baselines.gan_common`): the dependency model first (the
  first ``pretrain_fraction`` of the steps), then frozen while the WGAN trains. One
  AdamW for all (its default betas, not WGAN-GP's usual (0.5, 0.9)).
* **Visit times are not modelled**: the original's neural point process is left
  out. Generation feeds the mean training gap to the dependency model, and visit
  times come from the training population's gaps, as for every baseline.
* **Scores**: a GAN has no likelihood; the Monte Carlo set score of
  ``gan_common`` (``docs/evaluation.md``), over the codes only (the end code is
  not a code of any modality).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ehrgen._config import check, check_positive_ints
from ehrgen.models.baselines.gan_common import GANConfig, GANNetwork
from ehrgen.models.baselines.gan_generator import GANGenerator

__all__ = ["SynTEG", "SynTEGConfig"]

MODEL_NAME = "synteg"
GRADIENT_PENALTY = 10.0


@dataclass(frozen=True, kw_only=True)
class SynTEGConfig(GANConfig):
    """Sizes of SynTEG; the defaults are the published port's (module docstring).

    Example:
        >>> SynTEGConfig().embedding, SynTEGConfig.tiny().lstm_hidden
        (112, 16)
    """

    embedding: int = 112
    transformer_layers: int = 2
    heads: int = 4
    # Width of the gap embedding appended to the visit vector.
    gap: int = 16
    lstm_hidden: int = 512
    lstm_layers: int = 3
    condition: int = 256
    generator: int = 256
    generator_layers: int = 2
    critic: tuple[int, ...] = (256, 256)
    critic_steps: int = 5
    # The generator's logits are the (frozen) dependency model's next-visit logits
    # plus its own output (ours; see the module docstring). False: its output alone.
    dependency_base: bool = True
    # In the transformer and between LSTM layers.
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self._check_gan()
        check_positive_ints(
            self, "embedding", "transformer_layers", "heads", "gap", "lstm_hidden",
            "lstm_layers", "condition", "generator", "generator_layers",
        )  # fmt: skip
        name = type(self).__name__
        check(self.embedding % self.heads == 0, name, "heads",
              f"a divisor of embedding ({self.embedding})", self.heads)  # fmt: skip
        check(0 <= self.dropout < 1, name, "dropout", "in [0, 1)", self.dropout)
        widths = tuple(self.critic)
        ok = bool(widths) and all(isinstance(w, int) and w > 0 for w in widths)
        check(ok, name, "critic", "a non-empty list of positive ints", self.critic)
        object.__setattr__(self, "critic", widths)

    @classmethod
    def tiny(cls, **changes: Any) -> SynTEGConfig:
        """For tests and docs: trains in seconds (tens of thousands of parameters
        on the demo cohort's 135 codes, most in layers as wide as the vocabulary)."""
        sizes = dict(embedding=8, transformer_layers=1, heads=2, gap=4, lstm_hidden=16,
                     lstm_layers=1, condition=16, noise=8, generator=32,
                     critic=(32, 32), dropout=0.0)  # fmt: skip
        return cls(**sizes).replace(**changes)

    @classmethod
    def small(cls, **changes: Any) -> SynTEGConfig:
        """For a CPU: a narrower transformer, one 128-unit LSTM layer."""
        sizes = dict(embedding=64, gap=8, lstm_hidden=128, lstm_layers=1,
                     condition=128, noise=64, generator=128,
                     critic=(128, 128))  # fmt: skip
        return cls(**sizes).replace(**changes)


class _Generator(nn.Module):
    """Noise and condition -> (n_out) logits; the condition scales each layer."""

    def __init__(self, config: SynTEGConfig, n_out: int) -> None:
        super().__init__()
        width = config.generator
        self.input = nn.Linear(config.noise + config.condition, width)
        self.layers = nn.ModuleList(
            nn.Linear(width, width) for _ in range(config.generator_layers)
        )
        self.norms = nn.ModuleList(
            nn.LayerNorm(width) for _ in range(config.generator_layers)
        )
        self.scales = nn.ModuleList(
            nn.Linear(config.condition, width) for _ in range(config.generator_layers)
        )
        self.output = nn.Linear(width, n_out)

    def forward(self, noise, condition):
        h = torch.relu(self.input(torch.cat([noise, condition], 1)))  # (N, width)
        for layer, norm, scale in zip(self.layers, self.norms, self.scales):
            h = torch.relu(norm(layer(h))) * (1 + scale(condition))
        return self.output(h)


class _Critic(nn.Module):
    """[visit, condition] -> one score (no normalisation: the penalty needs none),
    plus a projection term ``x . P c`` that reads each code against the condition
    directly (Miyato & Koyama 2018)."""

    def __init__(self, n_out: int, condition: int, widths) -> None:
        super().__init__()
        layers, width = [], n_out + condition
        for out in widths:
            layers += [nn.Linear(width, out), nn.LeakyReLU(0.2)]
            width = out
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))
        self.projection = nn.Linear(condition, n_out, bias=False)
        nn.init.zeros_(self.projection.weight)  # no gradient penalty at the start

    def forward(self, x, condition):
        score = self.mlp(torch.cat([x, condition], 1)).squeeze(1)
        return score + (x * self.projection(condition)).sum(1)


class _Network(GANNetwork):
    """The dependency model (visit transformer, gap embedding, LSTM, condition and
    next-visit layers), the generator and the critic."""

    end_in_visit = True

    def __init__(self, config: SynTEGConfig, tokenizer, schema) -> None:
        super().__init__(config, tokenizer, schema)
        c = config
        self.code_embedding = nn.Embedding(
            self.n_codes + 1, c.embedding, padding_idx=self.n_codes
        )
        self.visit_token = nn.Parameter(torch.randn(c.embedding) * 0.02)
        layer = nn.TransformerEncoderLayer(
            c.embedding, c.heads, 2 * c.embedding, c.dropout, batch_first=True
        )
        self.transformer = nn.TransformerEncoder(
            layer, c.transformer_layers, enable_nested_tensor=False
        )
        self.gap_embedding = nn.Linear(1, c.gap)
        dropout = c.dropout if c.lstm_layers > 1 else 0.0
        self.lstm = nn.LSTM(
            c.embedding + c.gap + self.n_static, c.lstm_hidden, c.lstm_layers,
            batch_first=True, dropout=dropout,
        )  # fmt: skip
        self.initial = nn.Parameter(torch.zeros(c.lstm_hidden))
        self.condition_layer = nn.Linear(c.lstm_hidden + self.n_static, c.condition)
        self.next_visit = nn.Linear(c.condition, self.n_out)
        self.generator = _Generator(c, self.n_out)
        self.critic = _Critic(self.n_out, c.condition, c.critic)

    @property
    def critic_modules(self) -> tuple[nn.Module, ...]:
        return (self.critic,)

    def visit_vectors(self, visits: torch.Tensor) -> torch.Tensor:
        """(N, C) multi-hot visits -> (N, E): the transformer's first position."""
        counts = visits.sum(1).long()  # (N,)
        longest = int(counts.max()) if len(visits) else 0
        order = torch.sort(visits, dim=1, descending=True, stable=True).indices
        present = torch.arange(longest, device=visits.device) < counts.unsqueeze(1)
        codes = torch.where(present, order[:, :longest], self.n_codes)  # (N, L)
        first = self.visit_token.expand(len(visits), 1, -1)
        x = torch.cat([first, self.code_embedding(codes)], 1)  # (N, 1 + L, E)
        padding = torch.cat([torch.zeros_like(present[:, :1]), ~present], 1)
        return self.transformer(x, src_key_padding_mask=padding)[:, 0]

    def visit_inputs(self, visits, gaps, static) -> torch.Tensor:
        """(B, T, E + G + S): each visit's vector, its gap embedded, the baseline
        features."""
        batch, steps = visits.shape[:2]
        vectors = self.visit_vectors(visits.reshape(batch * steps, -1))
        vectors = vectors.reshape(batch, steps, -1)  # (B, T, E)
        return torch.cat([vectors, self.gap_embedding(gaps.unsqueeze(-1)),
                          static.unsqueeze(1).expand(-1, steps, -1)], 2)  # fmt: skip

    def condition(self, states, static) -> torch.Tensor:
        return torch.relu(self.condition_layer(torch.cat([states, static], -1)))

    def dependency_logits(self, condition) -> torch.Tensor:
        return self.next_visit(condition)

    def generator_logits(self, noise, condition) -> torch.Tensor:
        logits = self.generator(noise, condition)
        if self.config.dependency_base:
            logits = logits + self.next_visit(condition).detach()
        return logits

    def critic_loss(self, real, fake, condition, generator) -> torch.Tensor:
        """Wasserstein loss with gradient penalty at points between real and fake."""
        weight = torch.rand(len(real), 1, generator=generator).to(real.device)
        between = (weight * real + (1 - weight) * fake).requires_grad_(True)
        (gradient,) = torch.autograd.grad(
            self.critic(between, condition).sum(), between, create_graph=True
        )
        penalty = ((gradient.norm(2, dim=1) - 1) ** 2).mean()
        wasserstein = self.critic(fake, condition).mean()
        wasserstein = wasserstein - self.critic(real, condition).mean()
        return wasserstein + GRADIENT_PENALTY * penalty

    def critic_view(self, probs, generator) -> torch.Tensor:
        """The visit drawn code by code, as sampling draws it, with the
        probabilities' gradient (straight-through): the critic compares binary
        visits with binary visits, so it cannot win on values between 0 and 1."""
        drawn = torch.bernoulli(probs.detach().cpu(), generator=generator)
        return drawn.to(probs.device) + probs - probs.detach()

    def generator_loss(self, fake, condition) -> torch.Tensor:
        return -self.critic(fake, condition).mean()

    def output_biases(self, log_odds: torch.Tensor) -> None:
        self.next_visit.bias.copy_(log_odds)
        if self.config.dependency_base:  # the base carries the rates
            self.generator.output.bias.zero_()
        else:
            self.generator.output.bias.copy_(log_odds)


class SynTEG(GANGenerator):
    """The SynTEG baseline (see the module docstring).

    Args:
        config: the sizes (default :class:`SynTEGConfig`, the published port's).

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> from ehrgen.training import TrainingConfig
        >>> cohort = demo_cohort(16, seed=0)
        >>> model = SynTEG(SynTEGConfig.tiny()).fit(
        ...     cohort, training=TrainingConfig(epochs=2, batch_size=8)
        ... )
        >>> scores = model.score_cross_modal(cohort, samples=64)
        >>> bool((scores.log_prob <= 0).all()), scores.mc_samples
        (True, 64)
        >>> len(model.generate(3, seed=0))
        3
    """

    name = MODEL_NAME
    config_class = SynTEGConfig
    network_class = _Network
    summary = (
        "SynTEG: a transformer-and-LSTM dependency model over visits, then a "
        "conditional WGAN-GP generating each next visit and its end code."
    )

    def _architecture(self) -> str:
        c = self.config
        return (
            f"visit transformer {c.transformer_layers} x {c.embedding} "
            f"({c.heads} heads), gap {c.gap}, LSTM {c.lstm_layers} x "
            f"{c.lstm_hidden}, condition {c.condition}, noise {c.noise}, generator "
            f"{c.generator_layers} x {c.generator}, critic {list(c.critic)}, "
            f"{c.critic_steps} critic steps per generator step"
        )
