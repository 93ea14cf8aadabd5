"""LSTM+MedGAN, a GAN baseline of the paper: MedGAN (Choi et al. 2017) for one
visit's multi-hot vector, made sequential by an LSTM over the previous visits.

Reproduced (METHOD.md, Baselines): an autoencoder over visit multi-hot vectors (all
modalities, one unit per code) is pretrained; the generator works in its code space
(residual layers with batch normalisation) from noise and a condition, and the
decoder maps its output to one probability per code; the discriminator sees each
visit beside the minibatch mean (minibatch averaging, against mode collapse) and
the condition. The condition of visit t is a dense layer over an LSTM summary of
visits 1..t-1 and the baseline features. Decided here (the PromptEHR paper gives no
more than "LSTM for temporal patterns, MedGAN for the visit"):

* **The LSTM is trained before the GAN**, in the pretraining stage, as a dependency
  model: its condition layer predicts the next visit's codes (binary cross-entropy),
  while the autoencoder learns to reconstruct visits and an end-of-patient head
  (on the state after each visit) learns when patients stop. It is frozen during
  the GAN stage, so that neither player can move the condition the other reads.
* **Training** runs on the shared Trainer, one player per optimizer step
  (:mod:`ehrgen.models.baselines.gan_common`): pretraining, then one discriminator
  step and one generator step in turn. The decoder is fine-tuned with the
  generator, as in MedGAN. The generator also reads the condition at each residual
  layer, so that it cannot wash out through the layers.
* **Sampling** draws each code on its own (Bernoulli) from the decoder's
  probabilities (MedGAN rounds them; a draw keeps the model's spread and matches
  its score), visit by visit from the model's own earlier visits, and stops with
  the end-of-patient probability or at ``max_visits``. Baseline features and visit
  times come from the training population in aggregate.
* **Scores**: a GAN has no likelihood; the Monte Carlo set score of
  ``gan_common`` (``docs/evaluation.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ehrgen._config import check, check_positive_ints
from ehrgen.models.baselines.gan_common import GANConfig, GANNetwork
from ehrgen.models.baselines.gan_generator import GANGenerator

__all__ = ["LSTMMedGAN", "LSTMMedGANConfig"]

MODEL_NAME = "lstm-medgan"


@dataclass(frozen=True, kw_only=True)
class LSTMMedGANConfig(GANConfig):
    """Sizes of LSTM+MedGAN; the defaults are MedGAN's (code 128, noise 128, two
    128-wide generator layers, discriminator 256-128-1) with the LSTM of the
    paper's LSTM+MLP (3 x 128).

    Example:
        >>> LSTMMedGANConfig().code, LSTMMedGANConfig.tiny().lstm_hidden
        (128, 16)
    """

    lstm_hidden: int = 128
    lstm_layers: int = 3
    # Width of the condition (the dependency model's penultimate layer).
    condition: int = 128
    # The autoencoder's code size, which is also the generator's width.
    code: int = 128
    generator_layers: int = 2
    discriminator: tuple[int, ...] = (256, 128)

    def __post_init__(self) -> None:
        self._check_gan()
        check_positive_ints(
            self, "lstm_hidden", "lstm_layers", "condition", "code", "generator_layers"
        )
        widths = tuple(self.discriminator)
        ok = bool(widths) and all(isinstance(w, int) and w > 0 for w in widths)
        expected = "a non-empty list of positive ints"
        check(ok, type(self).__name__, "discriminator", expected, self.discriminator)
        object.__setattr__(self, "discriminator", widths)

    @classmethod
    def tiny(cls, **changes: Any) -> LSTMMedGANConfig:
        """For tests and docs: trains in seconds (tens of thousands of parameters
        on the demo cohort's 135 codes, most in layers as wide as the vocabulary)."""
        sizes = dict(lstm_hidden=16, lstm_layers=1, condition=16, code=16, noise=8,
                     generator_layers=2, discriminator=(32, 16))  # fmt: skip
        return cls(**sizes).replace(**changes)

    @classmethod
    def small(cls, **changes: Any) -> LSTMMedGANConfig:
        """For a CPU: half MedGAN's widths, one LSTM layer."""
        sizes = dict(lstm_hidden=64, lstm_layers=1, condition=64, code=64, noise=64,
                     discriminator=(128, 64))  # fmt: skip
        return cls(**sizes).replace(**changes)


class _Residual(nn.Module):
    """MedGAN's generator layer, reading the condition too: h + relu(BN(W[h, c]))."""

    def __init__(self, width: int, condition: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width + condition, width)
        self.norm = nn.BatchNorm1d(width)

    def forward(self, h, condition):
        return h + torch.relu(self.norm(self.linear(torch.cat([h, condition], 1))))


class _Discriminator(nn.Module):
    """An MLP over [visit, minibatch mean of the visits, condition] -> one logit."""

    def __init__(self, n_codes: int, condition: int, widths) -> None:
        super().__init__()
        layers, width = [], 2 * n_codes + condition
        for out in widths:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x, condition):
        mean = x.mean(0, keepdim=True).expand_as(x)  # minibatch averaging
        return self.mlp(torch.cat([x, mean, condition], 1)).squeeze(1)


class _Network(GANNetwork):
    """The LSTM, its condition and next-visit layers, the end head, the autoencoder,
    the generator and the discriminator."""

    def __init__(self, config: LSTMMedGANConfig, tokenizer, schema) -> None:
        super().__init__(config, tokenizer, schema)
        c, n_codes, n_static = config, self.n_codes, self.n_static
        self.lstm = nn.LSTM(
            n_codes + n_static, c.lstm_hidden, c.lstm_layers, batch_first=True
        )
        self.initial = nn.Parameter(torch.zeros(c.lstm_hidden))
        self.condition_layer = nn.Linear(c.lstm_hidden + n_static, c.condition)
        self.next_visit = nn.Linear(c.condition, n_codes)
        self.end = nn.Linear(c.lstm_hidden, 1)
        self.encoder = nn.Linear(n_codes, c.code)
        self.decoder = nn.Linear(c.code, n_codes)
        self.generator_input = nn.Linear(c.noise + c.condition, c.code)
        self.residual = nn.ModuleList(
            _Residual(c.code, c.condition) for _ in range(c.generator_layers)
        )
        self.discriminator = _Discriminator(n_codes, c.condition, c.discriminator)

    @property
    def critic_modules(self) -> tuple[nn.Module, ...]:
        return (self.discriminator,)

    def visit_inputs(self, visits, gaps, static) -> torch.Tensor:
        """(B, T, C + S): each multi-hot visit and the baseline features (MedGAN
        reads no gaps)."""
        static = static.unsqueeze(1).expand(-1, visits.shape[1], -1)
        return torch.cat([visits, static], 2)

    def condition(self, states, static) -> torch.Tensor:
        return torch.relu(self.condition_layer(torch.cat([states, static], -1)))

    def dependency_logits(self, condition) -> torch.Tensor:
        return self.next_visit(condition)

    def end_logits(self, states_after) -> torch.Tensor:
        return self.end(states_after)

    def generator_logits(self, noise, condition) -> torch.Tensor:
        h = self.generator_input(torch.cat([noise, condition], 1))  # (N, code)
        for layer in self.residual:
            h = layer(h, condition)
        return self.decoder(torch.tanh(h))  # the autoencoder's code space is tanh

    def critic_loss(self, real, fake, condition, generator) -> torch.Tensor:
        real_logit = self.discriminator(real, condition)
        fake_logit = self.discriminator(fake, condition)
        ones, zeros = torch.ones_like(real_logit), torch.zeros_like(fake_logit)
        return F.binary_cross_entropy_with_logits(
            real_logit, ones
        ) + F.binary_cross_entropy_with_logits(fake_logit, zeros)

    def generator_loss(self, fake, condition) -> torch.Tensor:
        logit = self.discriminator(fake, condition)  # non-saturating loss
        return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))

    def extra_pretraining(self, visits, states, valid, lengths):
        """The autoencoder's reconstruction and the end-of-patient head (summed BCE
        and the number of entries)."""
        x = visits[valid]  # (N, C)
        recon = self.decoder(torch.tanh(self.encoder(x)))
        loss = F.binary_cross_entropy_with_logits(recon, x, reduction="sum")
        steps = torch.arange(visits.shape[1], device=visits.device)
        last = (steps == lengths.unsqueeze(1) - 1).float()
        end = self.end(states[:, 1:]).squeeze(-1)  # (B, T): after each visit
        loss = loss + F.binary_cross_entropy_with_logits(
            end[valid], last[valid], reduction="sum"
        )
        return loss, x.numel() + len(x)

    def output_biases(self, log_odds: torch.Tensor) -> None:
        self.decoder.bias.copy_(log_odds)
        self.next_visit.bias.copy_(log_odds)


class LSTMMedGAN(GANGenerator):
    """The LSTM+MedGAN baseline (see the module docstring).

    Args:
        config: the sizes (default :class:`LSTMMedGANConfig`, MedGAN's).

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> from ehrgen.training import TrainingConfig
        >>> cohort = demo_cohort(16, seed=0)
        >>> model = LSTMMedGAN(LSTMMedGANConfig.tiny()).fit(
        ...     cohort, training=TrainingConfig(epochs=2, batch_size=8)
        ... )
        >>> scores = model.score_longitudinal(cohort)
        >>> bool((scores.log_prob <= 0).all()), scores.mc_samples
        (True, 512)
        >>> len(model.generate(3, conditions={"gender": "F"}, seed=0))
        3
    """

    name = MODEL_NAME
    config_class = LSTMMedGANConfig
    network_class = _Network
    summary = (
        "LSTM+MedGAN: MedGAN's autoencoder, residual generator and minibatch-"
        "averaging discriminator for one visit, conditioned on an LSTM summary of "
        "the previous visits."
    )

    def _architecture(self) -> str:
        c = self.config
        return (
            f"LSTM {c.lstm_layers} x {c.lstm_hidden}, condition {c.condition}, "
            f"code {c.code}, noise {c.noise}, generator {c.generator_layers} x "
            f"{c.code}, discriminator {list(c.discriminator)}"
        )
